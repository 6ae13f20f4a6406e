"""The WebSocket edge: client connections adapted to the I/O-free :class:`EdgeHub`.

Each client is a :class:`~edges.websocket.connection.WebSocketConnection`, websockets' sans-I/O
protocol driven by the event loop's callbacks, with no coroutine or task of its own. Data frames
are framed for WebSocket once per message by the hub (server frames are unmasked and
uncompressed, so the bytes are the same for every client) and written straight to each client's
transport, all of a client's pending frames in one write. A client whose transport buffer is over
its high-water mark gets nothing more until it drains; meanwhile its bounded queue in the session
drops the oldest frames, so a client that never reads costs a bounded amount of memory and no one
else's time.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from http import HTTPStatus
from typing import Final

import msgspec
from websockets.datastructures import Headers
from websockets.frames import CloseCode as WebSocketCloseCode
from websockets.http11 import Request, Response
from websockets.server import ServerProtocol
from websockets.typing import Origin, Subprotocol

from edges.core.client_wire import SUBPROTOCOL, CloseCode
from edges.core.hub import EdgeHub
from edges.core.session import ClientSession, EdgeLimits
from edges.drop_log import DropBursts
from edges.link import MAX_QUEUED_CONTROL
from edges.metrics import BadProxyHeaders, EdgeMetrics, RefusedHandshakes
from edges.shell import (
    CannotServeError,
    EdgeShell,
    add_front_arguments,
    add_limit_arguments,
    edge_main,
    limits_from_args,
)
from edges.viewer_page import ViewerPage
from edges.websocket.connection import CLOSE_TIMEOUT, Keepalive, WebSocketConnection, WebSocketProtocol
from edges.websocket.framing import binary_frame_header
from router.config import DEFAULT_CONTROL, DEFAULT_XPUB
from router.curve import CurveClient, add_client_arguments, client_from_args
from router.forwarding import ProxyHeaders, TrustedProxies, resolve
from router.http_limits import address_key
from router.logfmt import add_log_arguments

log = logging.getLogger("switchboard.edge.websocket")
frame_log = logging.getLogger("switchboard.edge.websocket.frames")
"""The websockets protocol's own logger. At DEBUG it would log part of every client message, tokens
included, so it stays at INFO whatever ``--log-level`` says."""
frame_log.setLevel(logging.INFO)

SUBPROTOCOLS = (Subprotocol(SUBPROTOCOL),)
DEFAULT_PORT = 7780
DROP_CHECK_INTERVAL = 5.0
"""Seconds between two looks for clients that lost messages (``edges/drop_log.py``)."""
PLAIN_TEXT = "text/plain; charset=utf-8"
STATIC_FILES = {
    "/": ("viewer.html", "text/html; charset=utf-8"),
    "/viewer.js": ("viewer.js", "text/javascript"),
}


_HANDSHAKE_REFUSALS: Final[dict[int, str]] = {HTTPStatus.FORBIDDEN: "origin"}
"""Reasons of the handshakes the WebSocket library refuses, by HTTP status; others are
``bad_handshake``."""


class WebSocketEdgeConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Where the edge listens, where the router is, and the bounds it enforces."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    control: str = DEFAULT_CONTROL
    xpub: str = DEFAULT_XPUB
    limits: EdgeLimits = EdgeLimits()
    max_connections: int = 10_000
    max_connections_per_ip: int = 100
    """Client connections from one IP address at once; further handshakes get HTTP 429."""
    allowed_origins: tuple[str, ...] | None = None
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    heartbeat_interval: float = 1.0
    max_queued_control: int = MAX_QUEUED_CONTROL
    curve: CurveClient | None = None
    """This edge's Curve keys and the router's public key; ``None``: no Curve (docs/security.md)."""
    write_buffer_high: int = 64 * 1024
    """Bytes a client's transport buffers before the edge stops writing to it (and its queue fills)."""
    unsent_bytes: int = 16 * 1024
    """Bytes the kernel may hold for a client that are not on the wire yet (0: the kernel's default)."""
    serve_viewer: bool = True
    serve_metrics: bool = True
    """Answer ``GET /metrics`` on the client port (Prometheus text format)."""
    trusted_proxies: tuple[str, ...] = ()
    """Reverse proxies (addresses or networks) whose word on the client is taken."""
    proxy_headers: str = ProxyHeaders.X_FORWARDED.value
    proxy_protocol: bool = False
    """Every connection from a trusted proxy starts with a PROXY protocol header (v1 or v2)."""
    viewer_origins: tuple[str, ...] = ()
    """Other origins the viewer page may take ``ws`` or ``whep`` at."""

    def __post_init__(self) -> None:
        if min(self.ping_interval, self.ping_timeout) <= 0:
            raise ValueError("--ping-interval and --ping-timeout must be positive")
        if min(self.max_connections, self.max_connections_per_ip) < 1:
            raise ValueError("--max-connections and --max-connections-per-ip must be at least 1")
        if self.write_buffer_high < 1 or self.unsent_bytes < 0:
            raise ValueError("--write-buffer must be positive and --unsent-bytes not negative")
        if self.proxy_protocol and not self.trusted_proxies:
            raise ValueError("--proxy-protocol needs --trusted-proxy: the proxies that send the header")
        self.proxies()
        ViewerPage(self.viewer_origins)

    def proxies(self) -> TrustedProxies:
        """The reverse proxies in front of the edge. Raises ``ValueError``."""
        return TrustedProxies(self.trusted_proxies, self.proxy_headers)


class WebSocketEdge(EdgeShell[WebSocketConnection]):
    """One edge process: a WebSocket server, a router link, and the hub between them.

    It is the :class:`~edges.websocket.connection.ConnectionHost` of every client connection.
    """

    def __init__(self, config: WebSocketEdgeConfig) -> None:
        super().__init__(
            EdgeHub(config.limits, protocol="websocket", framing=binary_frame_header, batching=True),
            control=config.control,
            xpub=config.xpub,
            heartbeat_interval=config.heartbeat_interval,
            curve=config.curve,
            log=log,
            max_queued_control=config.max_queued_control,
        )
        self.config = config
        self.port = config.port
        self._origins: list[Origin | None] = [*map(Origin, config.allowed_origins or ()), None]
        """Besides its own origin (``WebSocketProtocol``): these, and clients that send no Origin."""
        self._connections: set[WebSocketConnection] = set()
        """Every TCP connection, in any state."""
        self._clients = self._transports
        """Connections with a client session, by client id (the shell's transports)."""
        self._keepalive = Keepalive(config.ping_interval, config.ping_timeout)
        self._client_ids = itertools.count(1)
        self._all_closed: asyncio.Event | None = None
        self.metrics = EdgeMetrics(self)
        self._per_ip: Counter[str] = Counter()
        """Connections with a client session, by the client's address (never 0): an IPv4 address,
        or an IPv6 address's /64 (``address_key``)."""
        self.refused_handshakes: Counter[str] = Counter()
        """WebSocket handshakes answered with an HTTP error instead, by reason (and connections
        aborted for their PROXY protocol header, ``proxy_protocol``)."""
        self.metrics.registry.register(RefusedHandshakes(self, self.refused_handshakes))
        self.proxies = config.proxies()
        self.proxy_protocol = config.proxy_protocol
        self.bad_proxy_headers: Counter[str] = Counter()
        """Handshakes whose forwarding header from a trusted proxy was unusable, by header."""
        self.metrics.registry.register(BadProxyHeaders(self, self.bad_proxy_headers))
        self.viewer = ViewerPage(config.viewer_origins)
        self._written_by_closed = 0
        self._drop_bursts = DropBursts(log, self.link.edge_id, DROP_CHECK_INTERVAL)

    # ------------------------------------------------------------ running

    async def serve(self, ready: asyncio.Event | None = None) -> None:
        """Serve until :meth:`stop`; ``ready`` is set once the port is bound and the router has
        welcomed this edge."""
        config = self.config
        loop = asyncio.get_running_loop()
        try:
            server = await loop.create_server(self._accept, config.host, config.port)
        except OSError as error:
            raise CannotServeError(f"--host {config.host} --port {config.port}: {error.strerror}") from None
        self.port = server.sockets[0].getsockname()[1]
        self._keepalive.start()
        link = asyncio.create_task(self.run_links(), name="router-links")
        stopped = asyncio.create_task(self._stopped.wait())
        drops = asyncio.create_task(self._watch_drops(), name="drop-bursts")
        try:
            if ready is not None and await self._when_welcomed(link, stopped):
                ready.set()
            if not self._stopped.is_set():
                log.info("websocket edge %s on ws://%s:%d/", self.link.edge_id, config.host, self.port)
            await asyncio.wait([link, stopped], return_when=asyncio.FIRST_COMPLETED)
            if link.done():
                link.result()
        finally:
            server.close()
            await self._close_all()
            self._keepalive.stop()
            for task in (link, stopped, drops):
                task.cancel()
            await asyncio.gather(link, stopped, drops, return_exceptions=True)

    async def _watch_drops(self) -> None:
        while True:
            await asyncio.sleep(DROP_CHECK_INTERVAL)
            self._drop_bursts.check(self.client_sessions())

    # ------------------------------------------------------------ what the metrics read (EdgeProbe)

    def client_sessions(self) -> Iterator[ClientSession]:
        return (session for c in self._clients.values() if (session := c.session) is not None)

    def bytes_written(self) -> int:
        return self._written_by_closed + sum(c.bytes_written for c in self._connections)

    async def _close_all(self) -> None:
        """Close every client with 1001 (after ``closing``), then wait for their connections to end;
        abort those still open after CLOSE_TIMEOUT. The router link is still up meanwhile, so
        every client is unregistered there."""
        for client_id in list(self._clients):
            self.hub.close_client(client_id, CloseCode.GOING_AWAY, "edge shutting down")
        self._carry_out()
        for connection in list(self._connections):
            if connection.session is None:
                connection.abort()
        if not await self._all_closed_in_time():
            for connection in list(self._connections):
                connection.abort()
            await self._all_closed_in_time()

    async def _all_closed_in_time(self) -> bool:
        """Whether every connection ended within CLOSE_TIMEOUT."""
        if not self._connections:
            return True
        self._all_closed = asyncio.Event()
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self._all_closed.wait()
        except TimeoutError:
            return False
        return True

    # ------------------------------------------------------------ connections (ConnectionHost)

    def _accept(self) -> WebSocketConnection:
        connection = WebSocketConnection(self)
        self._connections.add(connection)
        return connection

    def new_protocol(self) -> ServerProtocol:
        return WebSocketProtocol(
            origins=self._origins,
            subprotocols=SUBPROTOCOLS,
            max_size=2 * self.config.limits.max_message_bytes,
            logger=frame_log,
        )

    def respond(self, connection: WebSocketConnection, request: Request) -> Response | None:
        """The viewer's files, 404, or for a handshake: 503 past max_connections, 429 past
        max_connections_per_ip (counting the client a trusted proxy names), ``None`` to attempt it."""
        if request.headers.get("Upgrade", "").lower() == "websocket":
            forwarding = resolve(connection.client, request.headers.raw_items(), self.proxies)
            self.bad_proxy_headers.update(forwarding.malformed)
            connection.client = forwarding.client
            return self._refuse_handshake(address_key(connection.peer_host))
        path = request.path.split("?", 1)[0]
        if path == "/metrics" and self.config.serve_metrics:
            return _response(HTTPStatus.OK, self.metrics.content_type, self.metrics.render())
        if not self.config.serve_viewer or path not in STATIC_FILES:
            return _response(HTTPStatus.NOT_FOUND, PLAIN_TEXT, b"not found\n")
        name, content_type = STATIC_FILES[path]
        return _response(HTTPStatus.OK, content_type, self.viewer.body(name), self.viewer.headers)

    def handshake_refused(self, status: int) -> None:
        self.refused_handshakes[_HANDSHAKE_REFUSALS.get(status, "bad_handshake")] += 1

    def proxy_header_refused(self, connection: WebSocketConnection, reason: str) -> None:
        self.refused_handshakes["proxy_protocol"] += 1
        log.debug("aborted a connection from %s: %s", connection.peer.remote, reason)

    def _refuse_handshake(self, ip: str) -> Response | None:
        if len(self._clients) >= self.config.max_connections:
            self.refused_handshakes["max_connections"] += 1
            return _response(HTTPStatus.SERVICE_UNAVAILABLE, PLAIN_TEXT, b"too many connections\n")
        if self._per_ip[ip] >= self.config.max_connections_per_ip:
            self.refused_handshakes["max_connections_per_ip"] += 1
            return _response(HTTPStatus.TOO_MANY_REQUESTS, PLAIN_TEXT, b"too many from your address\n")
        return None

    def opened(self, connection: WebSocketConnection) -> ClientSession | None:
        """A handshake succeeded: the client's session, or ``None`` when it is closed at once (no
        subprotocol; no router right now, 1013 "try again later")."""
        if connection.subprotocol != SUBPROTOCOL:
            connection.close(WebSocketCloseCode.PROTOCOL_ERROR, f"use the {SUBPROTOCOL} subprotocol")
            return None
        if not self.links.welcomed:
            self.refused_handshakes["no_router"] += 1
            connection.close(WebSocketCloseCode.TRY_AGAIN_LATER, "no router; try again later")
            return None
        client_id = f"{self.link.edge_id}.{next(self._client_ids)}"
        now = asyncio.get_running_loop().time()
        session = self.hub.open_client(client_id, connection.remote, now)
        self._clients[client_id] = connection
        self._per_ip[address_key(connection.peer_host)] += 1
        connection.set_write_buffer_high(self.config.write_buffer_high)
        connection.limit_unsent(self.config.unsent_bytes)
        self._keepalive.add(connection)
        ids = {"client_id": client_id, "edge_id": self.link.edge_id, "remote": connection.remote}
        log.info("client %s connected from %s", client_id, connection.remote, extra=ids)
        self._wake_by(now + self.config.limits.connect_timeout)
        return session

    def text_received(self, session: ClientSession, text: str) -> None:
        self._client_text(session.client_id, text)

    def binary_received(self, session: ClientSession, data: bytes) -> None:
        self.hub.client_binary(session.client_id, data, asyncio.get_running_loop().time())
        self._carry_out()

    def closed(self, connection: WebSocketConnection) -> None:
        self._connections.discard(connection)
        self._written_by_closed += connection.bytes_written
        session = connection.session
        if session is not None:
            reason = self._log_disconnect(connection, session)
            self._keepalive.discard(connection)
            del self._clients[session.client_id]
            self._forget_ip(address_key(connection.peer_host))
            self.hub.client_closed(session.client_id, reason)
            self._carry_out()
        if self._all_closed is not None and not self._connections:
            self._all_closed.set()

    def _forget_ip(self, ip: str) -> None:
        self._per_ip[ip] -= 1
        if not self._per_ip[ip]:
            del self._per_ip[ip]

    def _log_disconnect(self, connection: WebSocketConnection, session: ClientSession) -> str:
        """Log why the client left; returns it in a few words, with the close code."""
        by, code, reason = connection.close_status
        reason = reason or f"closed by the {by}"
        ids = {
            "client_id": session.client_id,
            "edge_id": self.link.edge_id,
            "reason": reason,
            "code": int(code),
            "closed_by": by,
            "dropped": session.dropped.total(),
        }
        log.info("client %s disconnected (%s %d): %s", session.client_id, by, code, reason, extra=ids)
        return f"{reason} ({code})"

    # ------------------------------------------------------------ the hub's output (EdgeShell)

    def _close_transport(self, transport: WebSocketConnection, code: int, reason: str) -> None:
        transport.close(code, reason)


def _response(
    status: HTTPStatus, content_type: str, body: bytes, extra: Sequence[tuple[str, str]] = ()
) -> Response:
    """A complete HTTP response, with ``extra`` headers; the connection closes after it."""
    headers = Headers(
        [("Content-Type", content_type), ("Content-Length", str(len(body))), ("Connection", "close"), *extra]
    )
    return Response(status.value, status.phrase, headers, body)


# ---------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="switchboard edge websocket", description=__doc__)
    defaults = WebSocketEdgeConfig()
    parser.add_argument("--host", default=defaults.host)
    parser.add_argument("--port", type=int, default=defaults.port, help="0 picks a free port")
    parser.add_argument("--control", default=defaults.control, help="the router's control endpoint")
    parser.add_argument("--xpub", default=defaults.xpub, help="the router's XPUB endpoint")
    parser.add_argument("--max-connections", type=int, default=defaults.max_connections)
    parser.add_argument("--max-connections-per-ip", type=int, default=defaults.max_connections_per_ip)
    add_limit_arguments(parser)
    parser.add_argument(
        "--connect-timeout",
        type=float,
        default=defaults.limits.connect_timeout,
        help="seconds a new client has to send connect before it is closed (4005)",
    )
    parser.add_argument(
        "--allowed-origin",
        action="append",
        help="also allow pages of this Origin (repeat; the edge's own origin is always allowed)",
    )
    parser.add_argument("--ping-interval", type=float, default=defaults.ping_interval)
    parser.add_argument("--ping-timeout", type=float, default=defaults.ping_timeout)
    parser.add_argument("--heartbeat-interval", type=float, default=defaults.heartbeat_interval)
    parser.add_argument(
        "--max-queued-control",
        type=int,
        default=defaults.max_queued_control,
        help="control messages held while the router reads slower than the edge sends",
    )
    add_client_arguments(parser)
    parser.add_argument(
        "--write-buffer",
        type=int,
        default=defaults.write_buffer_high,
        help="bytes buffered per client before its queue takes over",
    )
    parser.add_argument(
        "--unsent-bytes",
        type=int,
        default=defaults.unsent_bytes,
        help="TCP_NOTSENT_LOWAT per client; 0 keeps the kernel's default",
    )
    parser.add_argument("--no-metrics", action="store_true", help="do not answer GET /metrics")
    add_front_arguments(parser)
    parser.add_argument(
        "--proxy-protocol",
        action="store_true",
        help="connections from a --trusted-proxy start with a PROXY protocol header (v1 or v2)",
    )
    parser.add_argument("--announce", action="store_true", help="print the bound port as JSON on stdout")
    add_log_arguments(parser)
    return parser


def config_from_args(args: argparse.Namespace) -> WebSocketEdgeConfig:
    return WebSocketEdgeConfig(
        host=args.host,
        port=args.port,
        control=args.control,
        xpub=args.xpub,
        limits=msgspec.structs.replace(limits_from_args(args), connect_timeout=args.connect_timeout),
        max_connections=args.max_connections,
        max_connections_per_ip=args.max_connections_per_ip,
        allowed_origins=tuple(args.allowed_origin) if args.allowed_origin else None,
        ping_interval=args.ping_interval,
        ping_timeout=args.ping_timeout,
        heartbeat_interval=args.heartbeat_interval,
        max_queued_control=args.max_queued_control,
        curve=client_from_args(args),
        write_buffer_high=args.write_buffer,
        unsent_bytes=args.unsent_bytes,
        serve_metrics=not args.no_metrics,
        trusted_proxies=tuple(args.trusted_proxy),
        proxy_headers=args.proxy_headers,
        proxy_protocol=args.proxy_protocol,
        viewer_origins=tuple(args.viewer_origin),
    )


def main(argv: Sequence[str] | None = None) -> int:
    return edge_main("websocket", _parser().parse_args(argv), config_from_args, WebSocketEdge)


if __name__ == "__main__":
    sys.exit(main())
