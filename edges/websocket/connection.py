"""One WebSocket client connection: websockets' sans-I/O ``ServerProtocol`` in an ``asyncio.Protocol``.

The connection feeds the bytes it receives to the protocol, writes what the protocol has to send,
and hands each complete message to its :class:`ConnectionHost` (the edge). It runs no coroutine
and no task: the event loop calls it, and the only timers it holds are deadlines for the opening
and closing handshakes. Keepalive pings come from :class:`Keepalive`, one loop timer for all
connections. Everything a connection keeps lives in ``__slots__``, so an idle client costs little.

Output is written in one of two ways. :meth:`WebSocketConnection.write` writes everything its
client session has pending in one write: control replies framed here as text messages, and data
frames whose head (WebSocket header and data header) the hub built once for every client, written
with the payload as it came from the router. Frames the protocol produces itself (pongs, close
frames) are written as they come. A connection is a :class:`~router.core.clients.Connection`.

When its host reads PROXY protocol headers, a connection's first bytes are held back until the
header is read (:meth:`WebSocketConnection._read_preface`); the client it names is then the
connection's :attr:`~WebSocketConnection.client`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Sequence
from typing import Final, Protocol, cast

from websockets.datastructures import Headers, MultipleValuesError
from websockets.frames import BINARY, CONT, PONG, TEXT, CloseCode, Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import OPEN
from websockets.server import ServerProtocol
from websockets.typing import BytesLike, Origin, Subprotocol

from edges.core.batches import batched
from edges.core.output import ClientOutput, Data, Payload, Reply, Skipped
from edges.core.session import ClientSession
from edges.websocket.framing import binary_frame_header
from router.forwarding import ClientAddress, TrustedProxies
from router.http_messages import same_origin
from router.proxy_protocol import ProxyProtocolError, looks_like_header, read_header

__all__ = [
    "CLOSE_TIMEOUT",
    "JOIN_BELOW",
    "OPEN_TIMEOUT",
    "ConnectionHost",
    "Keepalive",
    "WebSocketConnection",
    "WebSocketProtocol",
]

OPEN_TIMEOUT: Final = 10.0
"""Seconds a client has to complete the opening handshake."""
CLOSE_TIMEOUT: Final = 10.0
"""Seconds a client has to complete the closing handshake before the TCP connection is aborted."""
JOIN_BELOW: Final = 16 * 1024
"""Output whose parts average fewer bytes than this is joined into one write; otherwise it is written
as a list of parts, which uvloop sends with one writev and no copy (a join would copy every large
payload once per client, while many small parts cost more each than their copy)."""


class WebSocketProtocol(ServerProtocol):
    """``ServerProtocol`` that accepts a handshake offering none of its subprotocols, and a browser
    whose ``Origin`` is the server's own (its ``Host``) besides the ``origins`` it is given.

    A handshake without a subprotocol then succeeds with none, and the host decides what to do (the
    edge closes such a connection with 1002), rather than failing it with HTTP 400.
    """

    def process_origin(self, headers: Headers) -> Origin | None:
        try:
            origin, host = headers.get("Origin"), headers.get("Host", "")
        except MultipleValuesError:
            return super().process_origin(headers)
        if origin is not None and same_origin(origin, host):
            return Origin(origin)
        return super().process_origin(headers)

    def select_subprotocol(self, subprotocols: Sequence[Subprotocol]) -> Subprotocol | None:
        offered = set(subprotocols)
        for subprotocol in self.available_subprotocols or ():
            if subprotocol in offered:
                return subprotocol
        return None


class ConnectionHost(Protocol):
    """What a connection asks of the process that runs it."""

    proxies: TrustedProxies
    proxy_protocol: bool
    """Whether connections from :attr:`proxies` start with a PROXY protocol header."""

    def proxy_header_refused(self, connection: WebSocketConnection, reason: str) -> None:
        """The connection was aborted for its PROXY protocol header: a malformed or missing one from
        a trusted proxy, or one from any other peer."""
        ...

    def new_protocol(self) -> ServerProtocol:
        """A fresh sans-I/O protocol for a new TCP connection."""
        ...

    def respond(self, connection: WebSocketConnection, request: Request) -> Response | None:
        """An HTTP response to send instead of the WebSocket handshake, or ``None`` to attempt it."""
        ...

    def handshake_refused(self, status: int) -> None:
        """The WebSocket library refused a handshake with HTTP ``status`` (403: its ``Origin`` is
        not allowed; 400 or 426: not a valid WebSocket handshake)."""
        ...

    def opened(self, connection: WebSocketConnection) -> ClientSession | None:
        """The handshake succeeded. Returns the client's session, or ``None`` if the host closed
        the connection instead."""
        ...

    def text_received(self, session: ClientSession, text: str) -> None: ...

    def binary_received(self, session: ClientSession, data: bytes) -> None: ...

    def drained(self, session: ClientSession) -> None:
        """Writing resumed after the transport buffer drained, and the session's output went out."""
        ...

    def closed(self, connection: WebSocketConnection) -> None:
        """The TCP connection is gone; ``connection.session`` is still set if there was one."""
        ...


class WebSocketConnection(asyncio.Protocol):
    """One TCP connection, from the HTTP request to ``connection_lost``."""

    __slots__ = (
        "_client",
        "_fragments",
        "_host",
        "_paused",
        "_preface",
        "_protocol",
        "_timer",
        "_transport",
        "awaiting_pong",
        "bytes_written",
        "keepalive_slot",
        "pinged_at",
        "session",
    )

    def __init__(self, host: ConnectionHost) -> None:
        self._host = host
        self._protocol = host.new_protocol()
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._fragments: tuple[Opcode, bytearray] | None = None
        """The opcode and data so far of a message that arrives in fragments."""
        self._paused = False
        self._preface: bytearray | None = None
        """The first bytes while a PROXY protocol header is expected or looked for."""
        self._client: ClientAddress | None = None
        """The client as a trusted proxy named it; ``None``: the peer is the client."""
        self.session: ClientSession | None = None
        """The client's session once the handshake succeeded and the host accepted the client."""
        self.pinged_at = 0.0
        self.awaiting_pong = False
        self.keepalive_slot = 0
        self.bytes_written = 0
        """Bytes of replies and data frames given to the transport (handshake and pings aside)."""

    # ------------------------------------------------------------ asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._timer = asyncio.get_running_loop().call_later(OPEN_TIMEOUT, self._transport.abort)
        if self._host.proxy_protocol:
            self._preface = bytearray()

    def data_received(self, data: bytes) -> None:
        if self._preface is not None:
            data = self._read_preface(data)
            if not data:
                return
        protocol = self._protocol
        protocol.receive_data(data)
        events = protocol.events_received()
        self._send_protocol_data()
        for event in events:
            if isinstance(event, Frame):
                self._frame_received(event)
            elif isinstance(event, Request):
                self._handshake(event)

    def _read_preface(self, data: bytes) -> bytes:
        """Hold ``data`` back until the PROXY protocol header (from a trusted proxy, where it must
        come) or its absence (from any other peer, where it must not) is certain; returns the bytes
        that follow it, for the WebSocket protocol. Aborts the connection when the header is wrong."""
        assert self._preface is not None
        self._preface += data
        preface = bytes(self._preface)
        try:
            if self._host.proxies.trusts(self.peer.host):
                header = read_header(preface)
                if header is None:
                    return b""
                self._client = header.source
                preface = preface[header.size :]
            else:
                looks = looks_like_header(preface)
                if looks is None:
                    return b""
                if looks:
                    raise ProxyProtocolError("a PROXY header from a peer that is not a trusted proxy")
        except ProxyProtocolError as error:
            self._preface = None
            self._host.proxy_header_refused(self, str(error))
            if self._transport is not None:
                self._transport.abort()
            return b""
        self._preface = None
        return preface

    def eof_received(self) -> None:
        self._protocol.receive_eof()
        self._send_protocol_data()

    def connection_lost(self, exc: Exception | None) -> None:
        self._protocol.receive_eof()
        self._cancel_timer()
        self._host.closed(self)
        self.session = None
        self._fragments = None

    def set_write_buffer_high(self, high: int) -> None:
        """Writes stop above ``high`` buffered bytes and resume once a quarter of it is left."""
        if self._transport is not None:
            self._transport.set_write_buffer_limits(high=high)

    def limit_unsent(self, unsent: int) -> None:
        """Let the kernel hold about ``unsent`` bytes at most that are not on the wire yet
        (``TCP_NOTSENT_LOWAT``); 0 leaves the kernel's default. Frames then wait in the client's
        queue instead, where ``latest`` conflates them and priorities order them."""
        transport = self._transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is None or unsent <= 0 or not hasattr(socket, "TCP_NOTSENT_LOWAT"):
            return
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, unsent)

    @property
    def buffered_amount(self) -> int:
        """Bytes written and not yet taken by the kernel."""
        return self._transport.get_write_buffer_size() if self._transport is not None else 0

    @property
    def writable(self) -> bool:
        """Whether writes go out now (the transport buffer is under its high-water mark)."""
        return self._transport is not None and not self._paused

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self.write()
        if self.session is not None:
            self._host.drained(self.session)

    # ------------------------------------------------------------ handshake

    def _handshake(self, request: Request) -> None:
        protocol = self._protocol
        response = self._host.respond(self, request)
        if response is None:
            response = protocol.accept(request)
            if response.status_code != 101:
                self._host.handshake_refused(response.status_code)
        protocol.send_response(response)
        request.headers.clear()  # the protocol's parser keeps the request for the connection's life
        self._send_protocol_data()
        if protocol.state is not OPEN:
            return
        self._cancel_timer()
        self.session = self._host.opened(self)

    @property
    def subprotocol(self) -> Subprotocol | None:
        return self._protocol.subprotocol

    @property
    def close_status(self) -> tuple[str, int, str]:
        """Who closed first (``edge`` or ``client``), the close code and the reason; ``client``,
        1006 and ``connection lost`` when the connection ended without a closing handshake."""
        sent, received = self._protocol.close_sent, self._protocol.close_rcvd
        if sent is not None and (received is None or not self._protocol.close_rcvd_then_sent):
            return "edge", sent.code, sent.reason
        if received is not None:
            return "client", received.code, received.reason
        return "client", CloseCode.ABNORMAL_CLOSURE, "connection lost"

    @property
    def peer(self) -> ClientAddress:
        """The TCP peer's address (``""`` when unknown): the client, or a proxy in front of it."""
        peer = self._transport.get_extra_info("peername") if self._transport else None
        return ClientAddress(str(peer[0]), int(peer[1])) if peer else ClientAddress("")

    @property
    def client(self) -> ClientAddress:
        """The client's address: the one a trusted proxy named, else the peer's."""
        return self._client if self._client is not None else self.peer

    @client.setter
    def client(self, client: ClientAddress) -> None:
        self._client = client

    @property
    def peer_host(self) -> str:
        """The client's IP address, or ``""``."""
        return self.client.host

    @property
    def remote(self) -> str:
        """``host:port`` of the client (``host`` when a proxy named it without its port), or ``""``."""
        return self.client.remote

    # ------------------------------------------------------------ input

    def _frame_received(self, frame: Frame) -> None:
        """Assemble data frames into messages for the host; note pongs for :class:`Keepalive`."""
        opcode = frame.opcode
        if opcode is PONG:
            self.awaiting_pong = False
            return
        if self.session is None or opcode not in (TEXT, BINARY, CONT):
            return
        if self._fragments is None:
            if frame.fin:
                self._message_received(opcode, frame.data)
            else:
                self._fragments = (opcode, bytearray(frame.data))
            return
        self._fragments[1].extend(frame.data)
        if frame.fin:
            opcode, data = self._fragments
            self._fragments = None
            self._message_received(opcode, data)

    def _message_received(self, opcode: Opcode, data: BytesLike) -> None:
        session = self.session
        assert session is not None
        if opcode is BINARY:
            self._host.binary_received(session, bytes(data))
            return
        try:
            text = str(data, "utf-8")
        except UnicodeDecodeError as error:
            self.fail(CloseCode.INVALID_DATA, f"{error.reason} at position {error.start}")
            return
        self._host.text_received(session, text)

    # ------------------------------------------------------------ output

    def write(self, force: bool = False) -> None:
        """Write all of the session's pending output in one write, unless the client is behind
        (its transport buffer went over the high-water mark and has not drained yet).

        ``force`` writes even then: before a close, the last replies must go out.
        """
        session, transport, protocol = self.session, self._transport, self._protocol
        if session is None or transport is None or (self._paused and not force):
            return
        if protocol.state is not OPEN:
            return
        items = session.data_to_send()
        if session.batches:
            chunks, size = self._batches(items, session.limits.batch_max_bytes)
        else:
            chunks, size = self._frames(items)
        if not chunks:
            return
        self.bytes_written += size
        if size < JOIN_BELOW * len(chunks):
            transport.write(b"".join(chunks))
        else:
            transport.writelines(chunks)

    def _frames(self, items: list[ClientOutput]) -> tuple[list[Payload], int]:
        """Each frame as one binary message (they carry their WebSocket framing already)."""
        chunks: list[Payload] = []
        size = 0
        for item in items:
            if type(item) is Data:
                if item.payload:
                    chunks += (item.head, item.payload)
                else:
                    chunks.append(item.head)
                size += item.size
            elif type(item) is Reply:
                size += self._text(item, chunks)
            elif type(item) is Skipped:
                chunks.append(item.frame)
                size += len(item.frame)
        return chunks, size

    def _batches(self, items: list[ClientOutput], most: int) -> tuple[list[Payload], int]:
        """The frames in batches (``docs/protocol.md``, 4.4.5), each one binary message."""
        chunks: list[Payload] = []
        size = 0
        for item in batched(items, most, binary_frame_header):
            if isinstance(item, Reply):
                size += self._text(item, chunks)
            else:
                parts, batch_size = item
                chunks += parts
                size += batch_size
        return chunks, size

    def _text(self, reply: Reply, chunks: list[Payload]) -> int:
        """Append ``reply`` as a text message to ``chunks``; its size."""
        self._protocol.send_text(reply.text.encode())
        size = 0
        for data in self._protocol.data_to_send():
            chunks.append(data)
            size += len(data)
        return size

    def close(self, code: int, reason: str) -> None:
        """Write what the session has pending, then start the closing handshake."""
        self.write(force=True)
        if self._protocol.state is OPEN:
            self._protocol.send_close(code, reason)
            self._send_protocol_data()

    def fail(self, code: int, reason: str) -> None:
        """Fail the WebSocket connection: a close frame, then the TCP connection is closed as soon
        as its buffer is written (or aborted after CLOSE_TIMEOUT)."""
        self._protocol.fail(code, reason)
        self._send_protocol_data()
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def ping(self, now: float) -> None:
        """Send a keepalive ping; :attr:`awaiting_pong` stays set until any pong arrives."""
        if self._protocol.state is OPEN:
            self._protocol.send_ping(b"")
            self._send_protocol_data()
            self.pinged_at = now
            self.awaiting_pong = True

    def _send_protocol_data(self) -> None:
        """Write what the protocol produced; end the TCP connection when it says so, and from the
        moment a close is under way, abort it if the client does not finish within CLOSE_TIMEOUT."""
        transport = self._transport
        if transport is None:
            return
        for data in self._protocol.data_to_send():
            if data:
                transport.write(data)
            elif transport.can_write_eof():
                transport.write_eof()
            else:
                transport.close()
        if self._timer is None and self._protocol.close_expected():
            self._timer = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, transport.abort)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class Keepalive:
    """Pings every open connection each ``interval`` seconds and fails those that do not answer
    within ``timeout``, with one loop timer for all of them.

    Connections are spread over :attr:`SLICES` slices; each tick visits one slice, so every
    connection is visited once per ``min(interval, timeout)`` and the pings of many connections
    do not all go out at once.
    """

    SLICES: Final = 16

    def __init__(self, interval: float, timeout: float) -> None:
        if min(interval, timeout) <= 0:
            raise ValueError("the ping interval and timeout must be positive")
        self.interval = interval
        self.timeout = timeout
        self._tick_seconds = min(interval, timeout) / self.SLICES
        self._slack = self._tick_seconds / 2
        """A visit this much early, from timer jitter, still counts as on time."""
        self._slices: list[set[WebSocketConnection]] = [set() for _ in range(self.SLICES)]
        self._next_slot = 0
        self._visit = 0
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self._tick_seconds, self._tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def add(self, connection: WebSocketConnection) -> None:
        """Watch a connection that just opened; its first ping goes out about ``interval`` later."""
        connection.keepalive_slot = self._next_slot
        self._next_slot = (self._next_slot + 1) % self.SLICES
        connection.pinged_at = asyncio.get_running_loop().time()
        self._slices[connection.keepalive_slot].add(connection)

    def discard(self, connection: WebSocketConnection) -> None:
        self._slices[connection.keepalive_slot].discard(connection)

    def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._tick_seconds, self._tick)
        now = loop.time()
        for connection in list(self._slices[self._visit]):
            self._check(connection, now)
        self._visit = (self._visit + 1) % self.SLICES

    def _check(self, connection: WebSocketConnection, now: float) -> None:
        elapsed = now - connection.pinged_at + self._slack
        if not connection.awaiting_pong:
            if elapsed >= self.interval:
                connection.ping(now)
        elif elapsed >= self.timeout:
            self.discard(connection)
            connection.fail(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
