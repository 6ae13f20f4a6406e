"""A small HTTP/1.1 server for the WebRTC edge's signaling and static files.

One request per connection (every response says ``Connection: close``), a bounded head and body,
and a deadline for reading the request. :func:`parse_head` and :func:`encode_response` do no I/O;
:class:`HttpServer` only reads, calls the handler and writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Final, NamedTuple

__all__ = ["HttpError", "HttpRequest", "HttpResponse", "HttpServer", "encode_response", "parse_head"]

log = logging.getLogger("switchboard.edge.http")

MAX_HEAD_BYTES: Final = 16 * 1024
MAX_BODY_BYTES: Final = 256 * 1024
READ_TIMEOUT: Final = 10.0
"""Seconds a client has to send its whole request."""
PLAIN_TEXT: Final = "text/plain; charset=utf-8"


class HttpRequest(NamedTuple):
    method: str
    path: str
    """The target without its query string."""
    headers: dict[str, str]
    """Header names in lower case; a repeated header keeps its last value."""
    body: bytes
    remote: str = ""
    query: str = ""
    """The target's query string, without the ``?``."""

    def bearer_token(self) -> str | None:
        """The token of an ``Authorization: Bearer`` header, or ``None``."""
        scheme, _, token = self.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return None
        return token.strip() or None


class HttpResponse(NamedTuple):
    status: HTTPStatus
    body: bytes = b""
    content_type: str = PLAIN_TEXT
    headers: tuple[tuple[str, str], ...] = ()


class HttpError(ValueError):
    """A request this server refuses before the handler sees it."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


def parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    """Method, target and headers of a request head (without the blank line). Raises :class:`HttpError`."""
    try:
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ")
    except ValueError:
        raise HttpError(HTTPStatus.BAD_REQUEST, "malformed request line") from None
    if not version.startswith("HTTP/1."):
        raise HttpError(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED, "HTTP/1.x only")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise HttpError(HTTPStatus.BAD_REQUEST, "malformed header")
        headers[name.lower()] = value.strip()
    return method, target, headers


def body_length(headers: dict[str, str]) -> int:
    """The body's length from ``Content-Length``. Raises :class:`HttpError`."""
    if "transfer-encoding" in headers:
        raise HttpError(HTTPStatus.LENGTH_REQUIRED, "send a Content-Length, not chunks")
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError:
        raise HttpError(HTTPStatus.BAD_REQUEST, "bad Content-Length") from None
    if length < 0:
        raise HttpError(HTTPStatus.BAD_REQUEST, "bad Content-Length")
    if length > MAX_BODY_BYTES:
        raise HttpError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"a body is at most {MAX_BODY_BYTES} bytes")
    return length


def encode_response(response: HttpResponse) -> bytes:
    status = response.status
    lines = [f"HTTP/1.1 {status.value} {status.phrase}"]
    headers = [
        ("Content-Type", response.content_type),
        ("Content-Length", str(len(response.body))),
        ("Connection", "close"),
        ("Cache-Control", "no-store"),
        *response.headers,
    ]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + response.body


Handler = Callable[[HttpRequest], Awaitable[HttpResponse]]


class HttpServer:
    """Serves ``handler`` on ``host:port`` (0 picks a free port; :attr:`port` tells which)."""

    def __init__(self, handler: Handler, max_connections: int = 1000) -> None:
        self._handler = handler
        self._max_connections = max_connections
        self._connections: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._serve, host, port, limit=MAX_HEAD_BYTES)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            response: HttpResponse | None
            if len(self._connections) > self._max_connections:
                response = HttpResponse(HTTPStatus.SERVICE_UNAVAILABLE, b"too many connections\n")
            else:
                response = await self._respond(reader, _remote(writer))
            if response is not None:
                writer.write(encode_response(response))
                await writer.drain()
        except (ConnectionError, TimeoutError):
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _respond(self, reader: asyncio.StreamReader, remote: str) -> HttpResponse | None:
        """The response to one request; ``None`` when the client sent nothing at all."""
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                request = await _read_request(reader, remote)
        except HttpError as error:
            return HttpResponse(error.status, f"{error}\n".encode())
        if request is None:
            return None
        try:
            return await self._handler(request)
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            return HttpResponse(HTTPStatus.INTERNAL_SERVER_ERROR, b"internal error\n")


async def _read_request(reader: asyncio.StreamReader, remote: str) -> HttpRequest | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as error:
        if not error.partial.strip():
            return None  # browsers open connections in advance and may never use them
        raise HttpError(HTTPStatus.BAD_REQUEST, "incomplete request") from None
    except asyncio.LimitOverrunError:
        raise HttpError(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "request head too large") from None
    method, target, headers = parse_head(head[:-4])
    path, _, query = target.partition("?")
    length = body_length(headers)
    try:
        body = await reader.readexactly(length) if length else b""
    except asyncio.IncompleteReadError:
        raise HttpError(HTTPStatus.BAD_REQUEST, "incomplete body") from None
    return HttpRequest(method, path, headers, body, remote, query)


def _remote(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if peer else ""
