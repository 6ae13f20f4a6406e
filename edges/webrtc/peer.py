"""One WebRTC client: an aiortc ``RTCPeerConnection`` carrying one :class:`ClientSession`.

The client opens three data channels, negotiated out of band with fixed ids
(``docs/protocol.md``, 4.9): ``control`` for the JSON messages both ways, ``reliable`` (ordered,
reliable) for the data frames of ``reliable`` topics, and ``lossy`` (unordered, no retransmission)
for those of ``best_effort`` and ``latest`` topics. :meth:`RtcPeer.write` sends the session's
pending output on them: control replies always, data frames only while the two data channels
buffer less than ``write_buffer_high`` bytes together (``bufferedAmount``). Past that, frames wait
in the session's queue under their topics' policies, exactly as behind a full WebSocket transport,
and writing resumes at the ``bufferedamountlow`` event.

The peer routes the session's typed output (:mod:`edges.core.output`): replies go on ``control``,
data and skipped frames on ``reliable`` or ``lossy`` by their lane's policy, and a subscription that
opens or closes binds or frees a video slot (:class:`~edges.webrtc.slots.ViewerVideo`), whose
``track`` message follows the ``subscribed`` reply.

A peer is a :class:`~router.core.clients.Connection`. It reports to its :class:`PeerHost` when the
connection is gone (ICE or DTLS failed, consent expired, the client closed it); the host then
forgets the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Final, NamedTuple, Protocol

from aiortc import RTCConfiguration, RTCDataChannel, RTCPeerConnection, RTCSessionDescription
from aiortc.exceptions import InvalidStateError

from edges.core.client_wire import CloseCode
from edges.core.drops import DropReason
from edges.core.output import Data, Reply, Skipped, SubscriptionClosed, SubscriptionOpened, reply
from edges.core.session import ClientSession
from edges.webrtc.slots import ViewerVideo
from router.logs import ThrottledLog

__all__ = ["CHANNELS", "CLOSE_FLUSH_TIMEOUT", "CONNECT_TIMEOUT", "Channels", "PeerHost", "RtcPeer"]

log = logging.getLogger("switchboard.edge.webrtc")

CONTROL_ID: Final = 0
RELIABLE_ID: Final = 1
LOSSY_ID: Final = 2
CHANNELS: Final = {"control": CONTROL_ID, "reliable": RELIABLE_ID, "lossy": LOSSY_ID}
"""The data channels a client opens, negotiated out of band, by label and id."""
CONNECT_TIMEOUT: Final = 15.0
"""Seconds a client has, after the answer, until its data channels open."""
CLOSE_FLUSH_TIMEOUT: Final = 1.0
"""Seconds a closing peer waits for its last control messages to leave before it hangs up."""
GONE_STATES: Final = frozenset({"failed", "closed"})


class Channels(NamedTuple):
    control: RTCDataChannel
    reliable: RTCDataChannel
    lossy: RTCDataChannel


class PeerHost(Protocol):
    """What a peer asks of the edge that runs it."""

    def text_received(self, peer: RtcPeer, text: str) -> None: ...

    def binary_received(self, peer: RtcPeer, data: bytes) -> None: ...

    def drained(self, peer: RtcPeer) -> None:
        """The data channels' buffers went low again and the session's output went out."""
        ...

    def peer_gone(self, peer: RtcPeer) -> None:
        """The connection is over (whoever ended it); the peer sends nothing more."""
        ...


class RtcPeer:
    """One peer connection, from the client's offer to the end of the connection."""

    def __init__(
        self,
        host: PeerHost,
        session: ClientSession,
        resource: str,
        configuration: RTCConfiguration | None = None,
        write_buffer_high: int = 256 * 1024,
        video: ViewerVideo | None = None,
    ) -> None:
        self.host = host
        self.session = session
        self.resource = resource
        """The id in the client's signaling URL (``/whep/<resource>``)."""
        self.write_buffer_high = write_buffer_high
        self.pc = RTCPeerConnection(configuration)
        self.channels: Channels | None = None
        self.gone = False
        self.oversize = 0
        self.bytes_written = 0
        """Bytes of the messages handed to the data channels: control text as UTF-8, data frames
        as they are (SCTP and DTLS framing aside)."""
        self.video = video
        """The peer's video slots; data frames of the topics they carry are not sent as data."""
        self._early: list[str] = []
        """Control messages to send first, once the control channel opens."""
        self._detached = False
        self._timer: asyncio.TimerHandle | None = None
        self._closing: asyncio.Task[None] | None = None
        self._control_flushed = asyncio.Event()
        self._oversize_log = ThrottledLog(log)
        self.pc.on("connectionstatechange", self._connection_state_changed)
        self.pc.on("iceconnectionstatechange", self._ice_state_changed)

    def __repr__(self) -> str:
        return f"<RtcPeer {self.session.client_id} {self.pc.connectionState}>"

    # ------------------------------------------------------------ signaling

    async def answer(self, offer_sdp: str) -> str:
        """Take the client's offer and return the answer, with every local candidate in it.

        Raises ``ValueError`` for an offer this edge cannot use.
        """
        offer = RTCSessionDescription(sdp=offer_sdp, type="offer")
        await self.pc.setRemoteDescription(offer)
        if self.pc.sctp is None:
            raise ValueError("the offer has no data channel (m=application)")
        self._open_channels()
        if self.video is not None:
            self.video.attach(self.pc)
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        self._timer = asyncio.get_running_loop().call_later(CONNECT_TIMEOUT, self._connect_timed_out)
        return self.pc.localDescription.sdp

    def _open_channels(self) -> None:
        pc = self.pc
        control = pc.createDataChannel("control", negotiated=True, id=CONTROL_ID)
        reliable = pc.createDataChannel("reliable", negotiated=True, id=RELIABLE_ID)
        lossy = pc.createDataChannel("lossy", negotiated=True, id=LOSSY_ID, ordered=False, maxRetransmits=0)
        low = self.write_buffer_high // 4
        for channel in (reliable, lossy):
            channel.bufferedAmountLowThreshold = low
            channel.on("bufferedamountlow", self._drained)
        control.on("open", self._opened)
        control.on("message", self._message)
        control.on("bufferedamountlow", self._control_flushed.set)
        self.channels = Channels(control, reliable, lossy)

    def _opened(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        log.debug("%s: data channels open", self.session.client_id)
        if self.channels is not None:
            for text in self._early:
                self._send(self.channels.control, text)
        self._early.clear()
        self.write()

    def adopt_video(self, bindings: list[tuple[int, str, str]]) -> None:
        """Carry on this peer the video topics another peer of the session carried (a restart)."""
        if self.video is None:
            return
        for channel, topic, content_type in bindings:
            track = self.video.bind(channel, topic, content_type)
            if track is not None:
                self._early.append(reply(track).text)

    def _connect_timed_out(self) -> None:
        self._timer = None
        log.info("%s: the data channels did not open in %.0f s", self.session.client_id, CONNECT_TIMEOUT)
        self.close()

    # ------------------------------------------------------------ input

    def _message(self, message: str | bytes) -> None:
        if self.gone:
            return
        if isinstance(message, str):
            self.host.text_received(self, message)
        else:
            self.host.binary_received(self, message)

    # ------------------------------------------------------------ output

    @property
    def is_open(self) -> bool:
        return self.channels is not None and self.channels.control.readyState == "open" and not self.gone

    def buffered(self) -> int:
        """Bytes the two data channels hold that SCTP has not taken yet."""
        channels = self.channels
        return channels.reliable.bufferedAmount + channels.lossy.bufferedAmount if channels else 0

    @property
    def buffered_amount(self) -> int:
        return self.buffered()

    @property
    def writable(self) -> bool:
        """Whether data frames go out now (the data channels buffer less than ``write_buffer_high``)."""
        return self.is_open and self.buffered() < self.write_buffer_high

    def write(self) -> None:
        """Send the session's control replies, and data frames while the channels have room."""
        channels = self.channels
        if channels is None or not self.is_open:
            return
        room = max(0, self.write_buffer_high - self.buffered())
        for item in self.session.data_to_send(room):
            match item:
                case Data(channel=channel):
                    self._send_frame(channels, channel, item.frame())
                case Reply(text=text):
                    self._send(channels.control, text)
                case Skipped(channel=channel, frame=frame):
                    self._send_frame(channels, channel, frame)
                case SubscriptionOpened(channel=channel, topic=topic, content_type=content_type):
                    track = self.video.bind(channel, topic, content_type) if self.video is not None else None
                    if track is not None:
                        self._send(channels.control, reply(track).text)
                case SubscriptionClosed(topic=topic):
                    if self.video is not None:
                        self.video.unbind(topic)

    def _send_frame(self, channels: Channels, channel: int, frame: bytes) -> None:
        """A frame of ``channel``: on ``reliable`` or ``lossy`` by its lane's policy, or not at all
        when a video slot carries the topic."""
        if self.video is not None and self.video.carries(channel):
            return
        lane = self.session.lane(channel)
        reliable = lane is not None and lane.kind == "reliable"
        self._send(channels.reliable if reliable else channels.lossy, frame)

    def _send(self, channel: RTCDataChannel, data: str | bytes) -> None:
        try:
            channel.send(data)
            self.bytes_written += len(data) if isinstance(data, bytes) else len(data.encode())
        except InvalidStateError:
            pass  # the connection is ending; the host hears of it
        except ValueError as error:
            self.oversize += 1
            self.session.dropped[DropReason.OVERSIZE] += 1
            self._oversize_log.warning(
                "oversize", "%s: %s", self.session.client_id, error, now=time.monotonic()
            )

    def _drained(self) -> None:
        if self.is_open and self.buffered() < self.write_buffer_high:
            self.write()
            self.host.drained(self)

    # ------------------------------------------------------------ the end

    def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Send what the session has pending (it ends with ``closing``, which carries ``code`` and
        ``reason``: a peer connection has no close code of its own), then hang up."""
        if self._closing is None and not self.gone:
            self.write()
            self._closing = asyncio.get_running_loop().create_task(self._flush_and_close())

    async def _flush_and_close(self) -> None:
        control = self.channels.control if self.channels is not None else None
        if control is not None and control.bufferedAmount and not self.gone:
            self._control_flushed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_FLUSH_TIMEOUT):
                    await self._control_flushed.wait()
        await self.pc.close()
        self._gone()

    def detach(self) -> None:
        """Hang up without telling the host: the session moves to another peer (an ICE restart)."""
        self._detached = True
        self.gone = True
        if self.video is not None:
            self.video.close()
        asyncio.get_running_loop().create_task(self.pc.close())

    def _connection_state_changed(self) -> None:
        state = self.pc.connectionState
        log.debug("%s: connection %s", self.session.client_id, state)
        if state in GONE_STATES:
            self._gone()

    def _ice_state_changed(self) -> None:
        log.debug("%s: ICE %s", self.session.client_id, self.pc.iceConnectionState)

    def _gone(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._detached:
            return
        if self.video is not None:
            self.video.close()
        if not self.gone:
            self.gone = True
            self.host.peer_gone(self)
        if self.pc.connectionState != "closed":
            asyncio.get_running_loop().create_task(self.pc.close())
