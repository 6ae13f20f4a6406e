"""One viewer's video slots: which of its subscribed video topics each receive-only video
transceiver of its offer carries (``docs/protocol.md``, 4.9.3)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiortc import RTCPeerConnection

from edges.core.client_wire import Track
from edges.webrtc.video import VideoSlot, VideoSources, is_video

__all__ = ["ViewerVideo"]

log = logging.getLogger("switchboard.edge.video")


class ViewerVideo:
    """One peer's video slots, and which subscribed topic each one carries.

    The peer shows it every subscription that opens or closes: one of a video topic binds a free
    slot, and its ``subscribed`` reply is followed by a ``track`` message naming the slot's ``mid``;
    one that closes (``unsubscribed``, or an ``error`` that names the topic) frees the slot. Data
    frames of a topic that a slot carries are not sent on the data channels.
    """

    def __init__(self, sources: VideoSources, max_rate_of: Callable[[str], float | None]) -> None:
        self.sources = sources
        self.max_rate_of = max_rate_of
        self.free: list[tuple[str, VideoSlot]] = []
        """(mid, slot) not carrying a topic, in the offer's order."""
        self.by_channel: dict[int, tuple[str, str, VideoSlot]] = {}
        """channel -> (topic, mid, slot)."""

    def attach(self, pc: RTCPeerConnection) -> None:
        """Give every video transceiver of the offer a slot, sending VP8 only."""
        for transceiver in pc.getTransceivers():
            if transceiver.kind != "video" or transceiver.mid is None:
                continue
            vp8 = [codec for codec in transceiver._codecs if codec.mimeType.lower() == "video/vp8"]
            if not vp8:
                continue
            # aiortc lets an answerer choose codecs only through this list (the first one is sent).
            transceiver._codecs = vp8 + [c for c in transceiver._codecs if _repairs(c, vp8[0])]
            slot = VideoSlot()
            sender = pc.addTrack(slot)
            sender._send_keyframe = slot.request_keyframe  # type: ignore[method-assign]
            self.free.append((transceiver.mid, slot))

    def carries(self, channel: int) -> bool:
        return channel in self.by_channel

    def bind(self, channel: int, topic: str, content_type: str) -> Track | None:
        """Carry ``topic`` on a free slot if it is a video topic; returns the ``track`` message."""
        if not is_video(content_type) or not self.free or channel in self.by_channel:
            return None
        try:
            source = self.sources.acquire(topic, content_type, self.max_rate_of(topic))
        except ValueError as error:
            log.warning("video topic %s: %s", topic, error)
            return None
        mid, slot = self.free.pop(0)
        slot.bind(source)
        self.by_channel[channel] = (topic, mid, slot)
        return Track(topic=topic, channel=channel, mid=mid)

    def bindings(self) -> list[tuple[int, str, str]]:
        """(channel, topic, content type) of every slot that carries a topic."""
        return [
            (channel, topic, slot.source.content_type)
            for channel, (topic, _, slot) in self.by_channel.items()
            if slot.source is not None
        ]

    def unbind(self, topic: str) -> None:
        """Free the slot that carries ``topic``, if one does."""
        for channel, (bound, mid, slot) in list(self.by_channel.items()):
            if bound == topic:
                del self.by_channel[channel]
                slot.bind(None)
                self.free.append((mid, slot))
        self.sources.release_unused()

    def close(self) -> None:
        for _, _, slot in self.by_channel.values():
            slot.bind(None)
            slot.stop()
        for _, slot in self.free:
            slot.stop()
        self.by_channel.clear()
        self.free.clear()
        self.sources.release_unused()


def _repairs(codec: object, base: object) -> bool:
    """Whether ``codec`` is the RTX (retransmission) codec of ``base``."""
    parameters = getattr(codec, "parameters", {})
    mime = str(getattr(codec, "mimeType", "")).lower()
    return mime == "video/rtx" and parameters.get("apt") == getattr(base, "payloadType", None)
