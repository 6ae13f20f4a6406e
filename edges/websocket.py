"""The WebSocket edge: the ``websockets`` library adapted to the I/O-free :class:`EdgeHub`.

Data frames are framed for WebSocket once per message by the hub (server frames are unmasked and
uncompressed, so the bytes are the same for every client) and written straight to each client's
transport, all of a client's pending frames in one write. A client whose transport buffer is over
its high-water mark gets nothing more until it drains; meanwhile its bounded queue in the session
drops the oldest frames, so a client that never reads costs a bounded amount of memory and no one
else's time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import signal
import sys
from collections.abc import Sequence
from http import HTTPStatus
from importlib import resources

import msgspec
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State as ProtocolState

from edges.hub import CloseClient, EdgeHub, ToRouter, UnwatchData, WatchData
from edges.link import DataBatch, RouterLink
from edges.session import ClientSession, EdgeLimits
from router.config import DEFAULT_CONTROL, DEFAULT_XPUB
from router.core.errors import ErrorCode
from router.logs import ThrottledLog
from router.wire import Error, RouterMessage, WireError, parse_data_head

log = logging.getLogger("switchboard.edge.websocket")

SUBPROTOCOL = "switchboard.v1"
DEFAULT_PORT = 7780
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JOIN_BELOW = 16 * 1024
"""Frames shorter than this are joined into one write; longer ones are written as a list, which
uvloop sends with one writev and no copy (a join would copy every byte once more per client)."""
STATIC_FILES = {
    "/": ("viewer.html", "text/html; charset=utf-8"),
    "/viewer.js": ("viewer.js", "text/javascript"),
}


class WebSocketEdgeConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Where the edge listens, where the router is, and the bounds it enforces."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    control: str = DEFAULT_CONTROL
    xpub: str = DEFAULT_XPUB
    limits: EdgeLimits = EdgeLimits()
    max_connections: int = 10_000
    allowed_origins: tuple[str, ...] | None = None
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    heartbeat_interval: float = 1.0
    write_buffer_high: int = 256 * 1024
    serve_viewer: bool = True


def binary_frame(data: bytes) -> bytes:
    """``data`` as one unmasked, final WebSocket binary frame (RFC 6455, section 5.2)."""
    size = len(data)
    if size < 126:
        return bytes((0x82, size)) + data
    if size < 1 << 16:
        return bytes((0x82, 126)) + size.to_bytes(2, "big") + data
    return bytes((0x82, 127)) + size.to_bytes(8, "big") + data


class WebSocketEdge:
    """One edge process: a WebSocket server, a router link, and the hub between them."""

    def __init__(self, config: WebSocketEdgeConfig) -> None:
        self.config = config
        self.hub = EdgeHub(config.limits, protocol="websocket", frame_encoder=binary_frame)
        self.link = RouterLink(
            protocol="websocket",
            control=config.control,
            xpub=config.xpub,
            heartbeat_interval=config.heartbeat_interval,
        )
        self.link.on_data = self._on_data
        self.link.on_message = self._on_router_message
        self.link.resync = self.hub.resync
        self.port = config.port
        self._connections: dict[str, ServerConnection] = {}
        self._resuming: set[str] = set()
        self._client_ids = itertools.count(1)
        self._stopped = asyncio.Event()
        self._bad_data = ThrottledLog(log)

    # ------------------------------------------------------------ running

    async def serve(self, ready: asyncio.Event | None = None) -> None:
        """Serve until :meth:`stop`; ``ready`` is set once the port is bound and the router has
        welcomed this edge."""
        config = self.config
        async with serve(
            self._handle,
            config.host,
            config.port,
            subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
            process_request=self._process_request,
            compression=None,
            max_size=2 * config.limits.max_message_bytes,
            origins=[*config.allowed_origins, None] if config.allowed_origins else None,  # type: ignore[list-item]
            ping_interval=config.ping_interval,
            ping_timeout=config.ping_timeout,
        ) as server:
            self.port = _bound_port(server)
            link = asyncio.create_task(self.link.run(), name="router-link")
            if ready is not None:
                await self._when_welcomed(link)
                ready.set()
            log.info("websocket edge %s on ws://%s:%d/", self.link.edge_id, config.host, self.port)
            stopped = asyncio.create_task(self._stopped.wait())
            try:
                await asyncio.wait([link, stopped], return_when=asyncio.FIRST_COMPLETED)
                if link.done():
                    link.result()
            finally:
                link.cancel()
                stopped.cancel()
                await asyncio.gather(link, stopped, return_exceptions=True)

    def stop(self) -> None:
        self._stopped.set()

    async def _when_welcomed(self, link: asyncio.Task[None]) -> None:
        welcomed = asyncio.create_task(self.link.welcomed.wait())
        await asyncio.wait([welcomed, link], return_when=asyncio.FIRST_COMPLETED)
        welcomed.cancel()

    # ------------------------------------------------------------ HTTP and handshake

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            if len(self._connections) >= self.config.max_connections:
                return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "too many connections\n")
            return None
        path = request.path.split("?", 1)[0]
        if not self.config.serve_viewer or path not in STATIC_FILES:
            return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")
        name, content_type = STATIC_FILES[path]
        body = resources.files("edges").joinpath("static", name).read_bytes()
        headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body)))])
        return Response(HTTPStatus.OK, "OK", headers, body)

    # ------------------------------------------------------------ clients

    async def _handle(self, connection: ServerConnection) -> None:
        if connection.subprotocol != SUBPROTOCOL:
            await connection.close(1002, f"use the {SUBPROTOCOL} subprotocol")
            return
        client_id = f"{self.link.edge_id}.{next(self._client_ids)}"
        remote = connection.remote_address
        self.hub.open_client(client_id, f"{remote[0]}:{remote[1]}" if remote else "")
        self._connections[client_id] = connection
        connection.transport.set_write_buffer_limits(high=self.config.write_buffer_high)
        try:
            async for message in connection:
                if isinstance(message, str):
                    self.hub.client_text(client_id, message)
                else:
                    self.hub.client_binary(client_id, message)
                self._carry_out()
        except ConnectionClosed:
            pass
        finally:
            self._connections.pop(client_id, None)
            self.hub.client_closed(client_id)
            self._carry_out()

    def _carry_out(self) -> None:
        """Do what the hub asks, then write every session that has output."""
        for action in self.hub.drain_actions():
            match action:
                case ToRouter(message):
                    self.link.send(message)
                case WatchData(topic):
                    self.link.watch(topic)
                case UnwatchData(topic):
                    self.link.unwatch(topic)
                case CloseClient(client_id, code, reason):
                    self._close(client_id, code, reason)
        for session in self.hub.sessions_with_output():
            self._write(session)

    def _close(self, client_id: str, code: int, reason: str) -> None:
        connection = self._connections.get(client_id)
        session = self.hub.session(client_id)
        if connection is None or session is None:
            return
        self._write(session, force=True)
        asyncio.get_running_loop().create_task(connection.close(code, reason))

    def _write(self, session: ClientSession, force: bool = False) -> None:
        """Write all of a session's pending output in one write, unless its client is behind."""
        connection = self._connections.get(session.client_id)
        if connection is None or connection.protocol.state is not ProtocolState.OPEN:
            return
        transport = connection.transport
        if not force and transport.get_write_buffer_size() >= self.config.write_buffer_high:
            self._resume_when_drained(session, connection)
            return
        chunks: list[bytes] = []
        for item in session.data_to_send():
            if isinstance(item, str):
                connection.protocol.send_text(item.encode())
                chunks += connection.protocol.data_to_send()
            else:
                chunks.append(item)
        if not chunks:
            return
        if len(chunks[-1]) < JOIN_BELOW:
            transport.write(b"".join(chunks))
        else:
            transport.writelines(chunks)

    def _resume_when_drained(self, session: ClientSession, connection: ServerConnection) -> None:
        if session.client_id in self._resuming:
            return
        self._resuming.add(session.client_id)

        async def resume() -> None:
            try:
                await connection.drain()
            finally:
                self._resuming.discard(session.client_id)
            self._write(session)

        asyncio.get_running_loop().create_task(resume())

    # ------------------------------------------------------------ router

    def _on_data(self, batch: DataBatch) -> None:
        deliver = self.hub.deliver
        for head, payload in batch:
            try:
                meta = parse_data_head(head)
            except WireError as error:
                self._bad_data.warning("bad_data", "bad data frame from the router: %s", error)
                continue
            deliver(meta.topic, meta.epoch, meta.offset, payload)
        self._carry_out()

    def _on_router_message(self, message: RouterMessage) -> None:
        if isinstance(message, Error) and message.code == ErrorCode.UNKNOWN_EDGE:
            return  # the link says hello again, and the hub's resync repeats what was lost
        self.hub.router_message(message)
        self._carry_out()


def _bound_port(server: Server) -> int:
    for sock in server.sockets:
        port: int = sock.getsockname()[1]
        return port
    raise RuntimeError("the server has no socket")


# ---------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="switchboard edge websocket", description=__doc__)
    defaults = WebSocketEdgeConfig()
    limits = defaults.limits
    parser.add_argument("--host", default=defaults.host)
    parser.add_argument("--port", type=int, default=defaults.port, help="0 picks a free port")
    parser.add_argument("--control", default=defaults.control, help="the router's control endpoint")
    parser.add_argument("--xpub", default=defaults.xpub, help="the router's XPUB endpoint")
    parser.add_argument("--max-connections", type=int, default=defaults.max_connections)
    parser.add_argument("--max-message-bytes", type=int, default=limits.max_message_bytes)
    parser.add_argument("--max-subscriptions", type=int, default=limits.max_subscriptions)
    parser.add_argument("--queue-messages", type=int, default=limits.queue_max_messages)
    parser.add_argument("--queue-bytes", type=int, default=limits.queue_max_bytes)
    parser.add_argument("--allowed-origin", action="append", help="allow this Origin (repeat; default: any)")
    parser.add_argument("--ping-interval", type=float, default=defaults.ping_interval)
    parser.add_argument("--ping-timeout", type=float, default=defaults.ping_timeout)
    parser.add_argument("--heartbeat-interval", type=float, default=defaults.heartbeat_interval)
    parser.add_argument("--announce", action="store_true", help="print the bound port as JSON on stdout")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return parser


def config_from_args(args: argparse.Namespace) -> WebSocketEdgeConfig:
    limits = EdgeLimits(
        max_message_bytes=args.max_message_bytes,
        max_subscriptions=args.max_subscriptions,
        queue_max_messages=args.queue_messages,
        queue_max_bytes=args.queue_bytes,
    )
    return WebSocketEdgeConfig(
        host=args.host,
        port=args.port,
        control=args.control,
        xpub=args.xpub,
        limits=limits,
        max_connections=args.max_connections,
        allowed_origins=tuple(args.allowed_origin) if args.allowed_origin else None,
        ping_interval=args.ping_interval,
        ping_timeout=args.ping_timeout,
        heartbeat_interval=args.heartbeat_interval,
    )


async def run(config: WebSocketEdgeConfig, announce: bool) -> None:
    edge = WebSocketEdge(config)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, edge.stop)
    ready = asyncio.Event()
    serving = asyncio.create_task(edge.serve(ready))
    waiting = asyncio.create_task(ready.wait())
    await asyncio.wait([serving, waiting], return_when=asyncio.FIRST_COMPLETED)
    if ready.is_set() and announce:
        print(json.dumps({"event": "ready", "port": edge.port, "edge_id": edge.link.edge_id}), flush=True)
    waiting.cancel()
    await serving


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format=LOG_FORMAT)
    try:
        config = config_from_args(args)
    except (ValueError, msgspec.ValidationError) as error:
        print(f"switchboard edge websocket: {error}", file=sys.stderr)
        return 2
    from router.cli import run_async

    with contextlib.suppress(KeyboardInterrupt):
        run_async(run(config, args.announce))
    return 0


if __name__ == "__main__":
    sys.exit(main())
