"""The WebRTC edge: peer connections (aiortc) adapted to the I/O-free :class:`EdgeHub`.

A client signals over HTTP (:mod:`edges.webrtc.signaling`): its offer's bearer token goes to the
router in ``connect``, exactly as a WebSocket client's ``connect`` would, and the answer comes back
once the router accepted it. Each client is then an :class:`~edges.webrtc.peer.RtcPeer` whose control
data channel speaks ``switchboard.v1`` through the shared session, and whose two data channels
carry the same data frames as the WebSocket edge, without WebSocket framing. Run several copies side
by side: each has its own edge id at the router and its own port.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import secrets
import sys
from collections.abc import Iterator, Sequence
from http import HTTPStatus
from typing import Final

from edges.core.client_wire import CloseCode, Connect, ErrorReply
from edges.core.hub import EdgeHub
from edges.core.output import Reply
from edges.core.session import ClientSession, State
from edges.metrics import BadProxyHeaders, EdgeMetrics, RefusedHandshakes
from edges.shell import EdgeShell, edge_main
from edges.viewer_page import ViewerPage
from edges.webrtc.config import WebRtcEdgeConfig, apply_ice_settings, config_from_args, parser
from edges.webrtc.peer import RtcPeer
from edges.webrtc.signaling import Answer, SignalingError, SignalingRoutes
from edges.webrtc.slots import ViewerVideo
from edges.webrtc.video import VideoSources
from router.core.errors import ErrorCode
from router.http_listener import HttpListener

__all__ = ["WebRtcEdge", "main"]

log = logging.getLogger("switchboard.edge.webrtc")

SHUTDOWN_TIMEOUT: Final = 3.0
REFUSALS: Final = {
    ErrorCode.UNAUTHORIZED.value: HTTPStatus.UNAUTHORIZED,
    ErrorCode.FORBIDDEN.value: HTTPStatus.FORBIDDEN,
    ErrorCode.BAD_REQUEST.value: HTTPStatus.BAD_REQUEST,
}
"""HTTP status of an offer whose ``connect`` the router refused, by error code (else 503)."""


class WebRtcEdge(EdgeShell[RtcPeer]):
    """One edge process: the signaling server, a router link, and the hub between them.

    It is the :class:`~edges.webrtc.peer.PeerHost` of every peer and the
    :class:`~edges.webrtc.signaling.SignalingHost` of the HTTP routes.
    """

    def __init__(self, config: WebRtcEdgeConfig) -> None:
        super().__init__(
            EdgeHub(config.limits, protocol="webrtc"),
            control=config.control,
            xpub=config.xpub,
            heartbeat_interval=config.heartbeat_interval,
            curve=config.curve,
            log=log,
            max_queued_control=config.max_queued_control,
        )
        self.config = config
        self.metrics = EdgeMetrics(self)
        metrics = self.metrics if config.serve_metrics else None
        viewer = ViewerPage(config.viewer_origins) if config.serve_viewer else None
        routes = SignalingRoutes(self, config.allowed_origins, viewer, metrics)
        self.http = HttpListener("signaling", routes.handle, config.http_limits(), config.proxies())
        self._bind_http()
        self.metrics.registry.register(RefusedHandshakes(self, self.http.refusals))
        self.metrics.registry.register(BadProxyHeaders(self, self.http.bad_proxy_headers))
        self._rtc_configuration = config.rtc_configuration()
        self.videos = VideoSources(config.video_max_fps, config.video_bitrate)
        self._data_feed = self.videos
        self._peers = self._transports
        """The current peer of each client, by client id (the shell's transports)."""
        self._resources: dict[str, str] = {}
        """Client ids by signaling resource."""
        self._registering: dict[str, asyncio.Future[bool]] = {}
        self._client_ids = itertools.count(1)
        self._all_gone = asyncio.Event()
        self._written_by_gone = 0
        """Bytes written by the peers no longer in :attr:`_peers` (gone, or replaced at a restart)."""

    @property
    def port(self) -> int:
        return self.http.port

    # ------------------------------------------------------------ what the metrics read (EdgeProbe)

    def client_sessions(self) -> Iterator[ClientSession]:
        return (peer.session for peer in self._peers.values())

    def bytes_written(self) -> int:
        return self._written_by_gone + sum(peer.bytes_written for peer in self._peers.values())

    # ------------------------------------------------------------ running

    async def serve(self, ready: asyncio.Event | None = None) -> None:
        """Serve until :meth:`stop`; ``ready`` is set once the port is bound and the router has
        welcomed this edge."""
        apply_ice_settings(self.config)
        await self.http.start()
        link = asyncio.create_task(self.run_links(), name="router-links")
        stopped = asyncio.create_task(self._stopped.wait())
        try:
            if ready is not None and await self._when_welcomed(link, stopped):
                ready.set()
            if not self._stopped.is_set():
                log.info("webrtc edge %s on http://%s:%d/", self.link.edge_id, self.config.host, self.port)
            await asyncio.wait([link, stopped], return_when=asyncio.FIRST_COMPLETED)
            if link.done():
                link.result()
        finally:
            await self.http.close()
            await self._close_all()
            self.videos.close()
            link.cancel()
            stopped.cancel()
            await asyncio.gather(link, stopped, return_exceptions=True)

    def _bind_http(self) -> None:
        """Bind the HTTP port; a port that cannot be bound stops the process with status 2 and
        one line naming the address."""
        host, port = self.config.host, self.config.port
        try:
            self.http.bind(host, port)
        except OSError as error:
            print(f"switchboard edge webrtc: --host {host} --port {port}: {error}", file=sys.stderr)
            raise SystemExit(2) from None

    async def _close_all(self) -> None:
        """Close every client with 1001 (after ``closing``) while the router link is still up, so
        each is unregistered there; wait a bounded time for their connections to end."""
        for client_id in list(self._peers):
            self.hub.close_client(client_id, CloseCode.GOING_AWAY, "edge shutting down")
        self._carry_out()
        if self._peers:
            self._all_gone.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SHUTDOWN_TIMEOUT):
                    await self._all_gone.wait()

    # ------------------------------------------------------------ signaling (SignalingHost)

    async def open_peer(self, offer: str, token: str | None, remote: str) -> Answer:
        if len(self._peers) + len(self._registering) >= self.config.max_connections:
            raise SignalingError(HTTPStatus.SERVICE_UNAVAILABLE, "too many connections")
        if not self.links.welcomed:
            raise SignalingError(
                HTTPStatus.SERVICE_UNAVAILABLE, _json_error("no router; try again later", "internal")
            )
        client_id = f"{self.link.edge_id}.{next(self._client_ids)}"
        session = self.hub.open_client(client_id, remote)
        await self._register(session, token)
        resource = secrets.token_urlsafe(18)
        peer = self._new_peer(session, resource)
        self._peers[client_id] = peer
        self._resources[resource] = client_id
        try:
            sdp = await peer.answer(offer)
        except Exception as error:
            self._forget_peer(peer)
            self.hub.client_closed(client_id, "unusable offer")
            self._carry_out()
            raise SignalingError(HTTPStatus.BAD_REQUEST, _json_error(f"unusable offer: {error}")) from None
        log.info("%s connected from %s", client_id, remote or "?")
        return Answer(resource, sdp)

    async def _register(self, session: ClientSession, token: str | None) -> None:
        """``connect`` with the offer's token; raises :class:`SignalingError` if the router refuses."""
        client_id = session.client_id
        accepted = self._registering[client_id] = asyncio.get_running_loop().create_future()
        self.hub.client_connect(client_id, Connect(token=token))
        self._carry_out()
        try:
            async with asyncio.timeout(self.config.register_timeout):
                ok = await accepted
        except TimeoutError:
            ok = False
        finally:
            del self._registering[client_id]
        if ok:
            return
        status, body = _refusal(session)
        self.hub.client_closed(client_id, "connect refused")
        self._carry_out()
        raise SignalingError(status, body)

    async def restart_peer(self, resource: str, offer: str) -> str | None:
        client_id = self._resources.get(resource)
        old = self._peers.get(client_id) if client_id is not None else None
        if old is None:
            return None
        peer = self._new_peer(old.session, resource)
        try:
            sdp = await peer.answer(offer)
        except Exception as error:
            peer.detach()
            raise SignalingError(HTTPStatus.BAD_REQUEST, _json_error(f"unusable offer: {error}")) from None
        if self._peers.get(old.session.client_id) is not old:
            peer.detach()
            return None
        if old.video is not None:
            peer.adopt_video(old.video.bindings())
        old.detach()
        self._written_by_gone += old.bytes_written
        self._peers[old.session.client_id] = peer
        log.info("%s restarted its connection", old.session.client_id)
        return sdp

    def _new_peer(self, session: ClientSession, resource: str) -> RtcPeer:
        video = ViewerVideo(self.videos, self._max_rate_of)
        config = self.config
        return RtcPeer(self, session, resource, self._rtc_configuration, config.write_buffer_high, video)

    def _max_rate_of(self, topic: str) -> float | None:
        policy = self.hub.policy_of(topic)
        return policy.max_rate if policy is not None else None

    def leave(self, resource: str) -> bool:
        client_id = self._resources.get(resource)
        if client_id is None:
            return False
        self.hub.close_client(client_id, CloseCode.NORMAL, "client left")
        self._carry_out()
        return True

    # ------------------------------------------------------------ peers (PeerHost)

    def text_received(self, peer: RtcPeer, text: str) -> None:
        if self._peers.get(peer.session.client_id) is peer:
            self._client_text(peer.session.client_id, text)

    def binary_received(self, peer: RtcPeer, data: bytes) -> None:
        if self._peers.get(peer.session.client_id) is peer:
            self.hub.client_binary(peer.session.client_id, data, asyncio.get_running_loop().time())
            self._carry_out()

    def peer_gone(self, peer: RtcPeer) -> None:
        if self._forget_peer(peer):
            log.info("%s gone", peer.session.client_id)
            self.hub.client_closed(peer.session.client_id, "peer gone")
            self._carry_out()

    def _forget_peer(self, peer: RtcPeer) -> bool:
        """Whether ``peer`` was its client's current peer (and is now forgotten)."""
        client_id = peer.session.client_id
        if self._peers.get(client_id) is not peer:
            return False
        del self._peers[client_id]
        self._written_by_gone += peer.bytes_written
        self._resources.pop(peer.resource, None)
        if not self._peers:
            self._all_gone.set()
        return True

    # ------------------------------------------------------------ the hub's output (EdgeShell)

    def _carry_out(self) -> None:
        """The shell's, then settle the offers waiting for the router to accept their client."""
        super()._carry_out()
        if self._registering:
            self._settle_registrations()

    def _close_transport(self, transport: RtcPeer, code: int, reason: str) -> None:
        transport.close(code, reason)

    def _settle_registrations(self) -> None:
        for client_id, accepted in self._registering.items():
            session = self.hub.session(client_id)
            if accepted.done() or session is None:
                continue
            if session.state is State.READY:
                accepted.set_result(True)
            elif not session.is_open:
                accepted.set_result(False)


def _refusal(session: ClientSession) -> tuple[HTTPStatus, str]:
    """The status and body for a client whose ``connect`` did not succeed: the session's ``error``
    reply when the router refused it, else 503 (the router did not answer in time)."""
    for item in session.data_to_send():
        if isinstance(item, Reply) and isinstance(item.message, ErrorReply):
            return REFUSALS.get(item.message.code, HTTPStatus.SERVICE_UNAVAILABLE), item.text
    return HTTPStatus.SERVICE_UNAVAILABLE, _json_error("the router did not answer", "internal")


def _json_error(message: str, code: str = "bad_request") -> str:
    return json.dumps({"op": "error", "id": None, "code": code, "message": message[:200]})


# ---------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    logging.getLogger("aioice").setLevel(logging.WARNING)
    return edge_main("webrtc", parser().parse_args(argv), config_from_args, WebRtcEdge)


if __name__ == "__main__":
    sys.exit(main())
