"""A tiny HTTP/1.1 listener that serves ``GET /metrics`` and nothing else.

One request per connection, a bounded request head read within a deadline, and a bounded number
of connections at once. The body comes from a render function (:meth:`RouterMetrics.render
<router.metrics.RouterMetrics.render>`) called on the event loop, so it reads the core's state
between two of the router's own steps.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from http import HTTPStatus
from typing import Final

__all__ = ["MetricsListener", "parse_address"]

MAX_HEAD_BYTES: Final = 8 * 1024
READ_TIMEOUT: Final = 5.0
MAX_CONNECTIONS: Final = 32
PLAIN_TEXT: Final = "text/plain; charset=utf-8"


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6; port 0 picks a free one). Raises ``ValueError``."""
    host, colon, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not colon or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"metrics address {address!r} is not HOST:PORT")
    return host, int(port)


class MetricsListener:
    """Serves ``render()`` at ``/metrics`` once :meth:`start` has bound the address."""

    def __init__(self, render: Callable[[], bytes], content_type: str) -> None:
        self._render = render
        self._content_type = content_type
        self._server: asyncio.Server | None = None
        self._open = 0
        self.address = ""
        """``HOST:PORT`` as bound (the port resolved when 0 was asked)."""

    async def start(self, address: str) -> str:
        host, port = parse_address(address)
        self._server = await asyncio.start_server(self._serve, host, port, limit=MAX_HEAD_BYTES)
        bound_host, bound_port = self._server.sockets[0].getsockname()[:2]
        self.address = f"[{bound_host}]:{bound_port}" if ":" in bound_host else f"{bound_host}:{bound_port}"
        return self.address

    @property
    def url(self) -> str:
        return f"http://{self.address}/metrics"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open += 1
        try:
            if self._open > MAX_CONNECTIONS:
                response = _response(HTTPStatus.SERVICE_UNAVAILABLE, PLAIN_TEXT, b"busy\n")
            else:
                response = self._respond(await _request_line(reader))
            if response:
                writer.write(response)
                await writer.drain()
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._open -= 1
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def _respond(self, request_line: str) -> bytes:
        method, _, rest = request_line.partition(" ")
        path = rest.partition(" ")[0].partition("?")[0]
        if not method:
            return b""
        if path != "/metrics":
            return _response(HTTPStatus.NOT_FOUND, PLAIN_TEXT, b"not found: try /metrics\n")
        if method not in ("GET", "HEAD"):
            return _response(HTTPStatus.METHOD_NOT_ALLOWED, PLAIN_TEXT, b"GET only\n")
        body = self._render()
        return _response(HTTPStatus.OK, self._content_type, body, head_only=method == "HEAD")


async def _request_line(reader: asyncio.StreamReader) -> str:
    """The request's first line; the rest of its head is read and ignored."""
    async with asyncio.timeout(READ_TIMEOUT):
        head = await reader.readuntil(b"\r\n\r\n")
    return head.split(b"\r\n", 1)[0].decode("latin-1")


def _response(status: HTTPStatus, content_type: str, body: bytes, *, head_only: bool = False) -> bytes:
    head = (
        f"HTTP/1.1 {status.value} {status.phrase}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + (b"" if head_only else body)
