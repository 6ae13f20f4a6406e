"""HTTP listeners on aiohttp, bounded so that no client can lock the others out.

Every HTTP port of Switchboard (the router's admin API and ``/metrics``, the WebRTC edge's
signaling) is an :class:`HttpListener` around a route: a coroutine from
:class:`~router.http_messages.HttpRequest` to :class:`~router.http_messages.HttpResponse`.

Rules of this module (the bounds come from :class:`~router.http_limits.HttpLimits`):

- One request per connection: every response closes its connection, so every request's head is
  read under the same deadline and no idle connection is kept.
- A connection from an address that already holds ``max_connections_per_address`` open
  connections is answered ``429`` and closed at once, before anything is read; an IPv6 address
  counts by its /64, since one host usually holds the whole /64. Past ``max_connections`` in all,
  ``503``. So one address cannot fill the listener.
- The request head must be complete ``header_timeout`` seconds after the connection opened, and
  the body ``body_timeout`` seconds after the head; the response must be written within
  ``body_timeout`` too. Otherwise ``408`` (when nothing was written yet) and the connection closes.
- Each head line is at most ``max_header_bytes`` long, a head has at most :data:`MAX_HEADERS`
  fields, and a body at most ``max_body_bytes`` (``413``, checked against ``Content-Length``
  before any of it is read). Chunked bodies are refused (``411``).
- aiohttp's parsers (the C one and the pure-Python one) refuse malformed heads with ``400``; on
  top of them :func:`request_fault` refuses what they let through: versions other than HTTP/1.0
  and 1.1 (the C parser reads ``GET /?a<LF>...`` as an HTTP/0.9 request, the Python parser takes
  ``HTTP/1.9``), targets with bytes outside printable ASCII or control characters once
  percent-decoded (``%0d%0a``), and repeated headers whose meaning would be ambiguous.
- A response header value with a control character is never written (``500`` instead), so text
  from a request cannot split a response.
- Every refusal is counted by reason in :attr:`HttpListener.refusals`, for the process's metrics.
- Behind a reverse proxy named in its :class:`~router.forwarding.TrustedProxies`, the client is the
  one the proxy's headers name (:func:`~router.forwarding.resolve`): a connection from a trusted
  proxy counts towards ``max_connections`` at once, and towards its client's per-address cap once
  its head has named the client. Unusable header values are counted in
  :attr:`HttpListener.bad_proxy_headers`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping
from enum import StrEnum
from http import HTTPStatus
from typing import Any, Final, cast
from urllib.parse import unquote_to_bytes

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler
from prometheus_client.metrics_core import Metric

from router.forwarding import ClientAddress, TrustedProxies, resolve
from router.http_limits import HttpLimits, address_key
from router.http_messages import PLAIN_TEXT, HttpRequest, HttpResponse
from router.metric_families import counter, gauge

__all__ = [
    "MAX_HEADERS",
    "Handler",
    "HttpListener",
    "ListenerCollector",
    "Refusal",
    "request_fault",
    "serve_metrics",
]

log = logging.getLogger("switchboard.http")

MAX_HEADERS: Final = 64
"""Header fields in one request head, at most."""
SINGLE_HEADERS: Final = frozenset(
    {"host", "content-length", "content-type", "authorization", "origin", "transfer-encoding"}
)
"""Headers a request may carry once at most: two values would be read differently by different
parts (or proxies), so the request is refused."""
BACKLOG: Final = 512

Handler = Callable[[HttpRequest], Awaitable[HttpResponse]]


class Refusal(StrEnum):
    """Why a listener refused or closed a connection (the ``reason`` label of its metrics)."""

    PER_ADDRESS = "max_connections_per_address"
    TOTAL = "max_connections"
    HEADER_TIMEOUT = "header_timeout"
    BODY_TIMEOUT = "body_timeout"
    SEND_TIMEOUT = "send_timeout"
    MALFORMED = "malformed"
    TOO_LARGE = "too_large"


# ---------------------------------------------------------------- what is refused (no I/O)


def request_fault(
    version: tuple[int, int], target: str, headers: Iterator[tuple[bytes, bytes]] | list[tuple[bytes, bytes]]
) -> tuple[HTTPStatus, str] | None:
    """The status and reason that refuse a parsed request head, or ``None`` when it may pass.

    ``target`` is the request target as sent; ``headers`` the raw header fields in order.
    """
    if version not in ((1, 0), (1, 1)):
        return HTTPStatus.BAD_REQUEST, "HTTP/1.0 or HTTP/1.1 only"
    if not target.isascii() or not target.isprintable() or " " in target:
        return HTTPStatus.BAD_REQUEST, "the target must be printable ASCII"
    if any(byte < 0x20 or byte == 0x7F for byte in unquote_to_bytes(target)):
        return HTTPStatus.BAD_REQUEST, "control characters in the target"
    seen: Counter[str] = Counter()
    for raw_name, raw_value in headers:
        name = raw_name.decode("latin-1").lower()
        seen[name] += 1
        if name in SINGLE_HEADERS and seen[name] > 1:
            return HTTPStatus.BAD_REQUEST, f"more than one {name} header"
        if name == "content-length" and not raw_value.strip(b" \t").isdigit():
            return HTTPStatus.BAD_REQUEST, "bad content-length"
    if seen["transfer-encoding"]:
        return HTTPStatus.LENGTH_REQUIRED, "send a Content-Length, not chunks"
    return None


def _header_safe(value: str) -> bool:
    return value.isascii() and all(" " <= char <= "~" or char == "\t" for char in value)


def _plain(status: HTTPStatus, text: str) -> HttpResponse:
    return HttpResponse(status, f"{text}\n".encode())


def _raw_response(status: HTTPStatus, text: str) -> bytes:
    """A whole response, for a connection aiohttp never sees a request on."""
    body = f"{text}\n".encode()
    head = (
        f"HTTP/1.1 {status.value} {status.phrase}\r\nContent-Type: {PLAIN_TEXT}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


def serve_metrics(render: Callable[[], bytes], content_type: str) -> Handler:
    """The route of a metrics listener: ``GET`` or ``HEAD /metrics``, and nothing else."""

    async def route(request: HttpRequest) -> HttpResponse:
        if request.path != "/metrics":
            return _plain(HTTPStatus.NOT_FOUND, "not found: try /metrics")
        if request.method not in ("GET", "HEAD"):
            return _plain(HTTPStatus.METHOD_NOT_ALLOWED, "GET only")
        return HttpResponse(HTTPStatus.OK, render(), content_type)

    return route


# ---------------------------------------------------------------- the listener


class HttpListener:
    """Serves ``handler`` once :meth:`start` has bound an address, until :meth:`close`.

    ``name`` labels its metrics and its log lines; ``proxies`` are the reverse proxies whose word
    on the client is taken.
    """

    def __init__(
        self, name: str, handler: Handler, limits: HttpLimits, proxies: TrustedProxies | None = None
    ) -> None:
        self.name = name
        self.handler = handler
        self.limits = limits
        self.proxies = proxies or TrustedProxies()
        self.refusals: Counter[str] = Counter()
        """Connections and requests refused, by :class:`Refusal`."""
        self.bad_proxy_headers: Counter[str] = Counter()
        """Requests from a trusted proxy whose forwarding header could not be used, by header."""
        self.open_by_address: Counter[str] = Counter()
        """Open connections, by :func:`address_key`, once the client's address is known."""
        self.proxied_unnamed = 0
        """Open connections from trusted proxies whose client is not known yet."""
        self._server = web.Server(self._serve)
        self._socket: socket.socket | None = None
        self._listening: asyncio.Server | None = None
        self.host = ""
        self.port = 0

    @property
    def open_connections(self) -> int:
        return self.open_by_address.total() + self.proxied_unnamed

    @property
    def address(self) -> str:
        """``HOST:PORT`` as bound (``[HOST]:PORT`` for IPv6)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def bind(self, host: str, port: int) -> str:
        """Bind ``host:port`` now, without serving yet (0 picks a free port); returns
        :attr:`address`. Raises ``OSError``."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.create_server((host, port), family=family, backlog=BACKLOG)
        self.host, self.port = self._socket.getsockname()[:2]
        return self.address

    async def start(self, host: str | None = None, port: int = 0) -> str:
        """Serve on the address :meth:`bind` bound, or bind ``host:port`` first; returns
        :attr:`address`. Raises ``OSError``."""
        if self._socket is None:
            assert host is not None, "bind() first, or give the address"
            self.bind(host, port)
        assert self._socket is not None
        loop = asyncio.get_running_loop()
        self._listening = await loop.create_server(self._connection, sock=self._socket, backlog=BACKLOG)
        return self.address

    async def close(self) -> None:
        if self._listening is None:
            if self._socket is not None:
                self._socket.close()
            return
        self._listening.close()
        await self._server.shutdown(1.0)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await self._listening.wait_closed()

    # ------------------------------------------------------------ connections

    def _connection(self) -> _Connection:
        limits = self.limits
        return _Connection(
            self,
            self._server,
            loop=asyncio.get_running_loop(),
            keepalive_timeout=0,
            access_log=None,
            max_line_size=limits.max_header_bytes,
            max_field_size=limits.max_header_bytes,
            max_headers=MAX_HEADERS,
            lingering_time=0,
        )

    def _admit(self, peer: Any) -> tuple[str | None, bytes]:
        """The address key to count the connection under (``""`` for a trusted proxy's, whose
        client is not known yet), or ``None`` and the response that refuses it."""
        host = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        proxied = self.proxies.trusts(host)
        key = "" if proxied else address_key(host)
        if not proxied and not self._room_for(key):
            return None, _raw_response(HTTPStatus.TOO_MANY_REQUESTS, "too many connections from your address")
        if self.open_connections >= self.limits.max_connections:
            self.refusals[Refusal.TOTAL] += 1
            return None, _raw_response(HTTPStatus.SERVICE_UNAVAILABLE, "too many connections")
        if proxied:
            self.proxied_unnamed += 1
        else:
            self.open_by_address[key] += 1
        return key, b""

    def _room_for(self, key: str) -> bool:
        """Whether ``key`` is under the per-address cap; counts the refusal when it is not."""
        if self.open_by_address[key] >= self.limits.max_connections_per_address:
            self.refusals[Refusal.PER_ADDRESS] += 1
            return False
        return True

    def _name_client(self, key: str) -> bool:
        """Count a trusted proxy's connection under its client's ``key`` instead; ``False`` when
        that address is at its cap (the connection is then refused)."""
        if not self._room_for(key):
            return False
        self.proxied_unnamed -= 1
        self.open_by_address[key] += 1
        return True

    def _release(self, key: str) -> None:
        self.open_by_address[key] -= 1
        if self.open_by_address[key] <= 0:
            del self.open_by_address[key]

    # ------------------------------------------------------------ requests

    async def _serve(self, request: web.BaseRequest) -> web.StreamResponse:
        connection = request.protocol
        assert isinstance(connection, _Connection)
        response = await self._respond(request)
        connection.arm(self.limits.body_timeout, Refusal.SEND_TIMEOUT)
        return _to_aiohttp(response, self.name)

    async def _respond(self, request: web.BaseRequest) -> HttpResponse:
        fault = request_fault(
            (request.version.major, request.version.minor), request.raw_path, list(request.raw_headers)
        )
        if fault is not None:
            self.refusals[Refusal.MALFORMED] += 1
            return _plain(*fault)
        headers = {name.lower(): value for name, value in request.headers.items()}
        peer = request.transport.get_extra_info("peername") if request.transport is not None else None
        direct = ClientAddress(str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else ClientAddress("")
        forwarding = resolve(direct, request.headers.items(), self.proxies, headers.get("host", ""))
        self.bad_proxy_headers.update(forwarding.malformed)
        connection = request.protocol
        assert isinstance(connection, _Connection)
        if not connection.name_client(address_key(forwarding.client.host)):
            return _plain(HTTPStatus.TOO_MANY_REQUESTS, "too many connections from your address")
        length = request.content_length or 0
        if length > self.limits.max_body_bytes:
            self.refusals[Refusal.TOO_LARGE] += 1
            most = self.limits.max_body_bytes
            return _plain(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"a body is at most {most} bytes")
        try:
            async with asyncio.timeout(self.limits.body_timeout):
                body = await request.content.readexactly(length) if length else b""
        except TimeoutError:
            self.refusals[Refusal.BODY_TIMEOUT] += 1
            return _plain(HTTPStatus.REQUEST_TIMEOUT, "the body came too slowly")
        except asyncio.IncompleteReadError:
            return _plain(HTTPStatus.BAD_REQUEST, "incomplete body")
        path, _, query = request.raw_path.partition("?")
        remote = forwarding.client.remote if isinstance(peer, tuple) else ""
        mine = HttpRequest(request.method, path, headers, body, remote, query, forwarding.origin)
        try:
            return await self.handler(mine)
        except Exception:
            log.exception("%s: %s %s failed", self.name, request.method, path[:100])
            return _plain(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error")


def _to_aiohttp(response: HttpResponse, name: str) -> web.Response:
    if not all(_header_safe(value) for _, value in [("", response.content_type), *response.headers]):
        log.error("%s: a response header holds a control character; answering 500 instead", name)
        response = _plain(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error")
    headers = {"Content-Type": response.content_type, "Cache-Control": "no-store", "Server": "switchboard"}
    headers.update(response.headers)
    prepared = web.Response(status=response.status, body=response.body, headers=headers)
    prepared.force_close()
    return prepared


class _Connection(RequestHandler):
    """aiohttp's connection protocol, with the per-address cap and the deadlines of
    :class:`HttpListener`."""

    def __init__(self, listener: HttpListener, manager: web.Server, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._listener = listener
        self._key: str | None = None
        """The address key it is counted under; ``None`` while not admitted, ``""`` while a trusted
        proxy's client is not known yet."""
        self._deadline: asyncio.TimerHandle | None = None
        self._head_done = False
        """Whether a whole request head (or one aiohttp refused) has arrived."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._key, refusal = self._listener._admit(transport.get_extra_info("peername"))
        if self._key is None:
            writable = cast(asyncio.WriteTransport, transport)
            writable.write(refusal)
            writable.close()
            return
        super().connection_made(transport)
        self.arm(self._listener.limits.header_timeout, Refusal.HEADER_TIMEOUT)

    def data_received(self, data: bytes) -> None:
        if self._key is None:
            return
        super().data_received(data)
        if self._messages and not self._head_done:
            self._head_done = True
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

    def eof_received(self) -> bool:  # type: ignore[override]  # asyncio.Protocol allows a bool
        """A client may close its side once it sent its request, and is still answered; before
        that, the connection closes."""
        return self._head_done

    def name_client(self, key: str) -> bool:
        """A trusted proxy named the client: count the connection under its address ``key`` from now
        on. ``False`` when that address is at its cap. A direct client's connection is counted
        already."""
        if self._key != "":
            return True
        if not self._listener._name_client(key):
            return False
        self._key = key
        return True

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._key is None:
            return
        if self._key:
            self._listener._release(self._key)
        else:
            self._listener.proxied_unnamed -= 1
        self._key = None
        if self._deadline is not None:
            self._deadline.cancel()
        super().connection_lost(exc)

    def arm(self, seconds: float, reason: Refusal) -> None:
        """Close the connection unless it is closed within ``seconds``, counted as ``reason``."""
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self._loop.call_later(seconds, self._expire, reason)

    def _expire(self, reason: Refusal) -> None:
        self._deadline = None
        self._listener.refusals[reason] += 1
        transport = self.transport
        if transport is None:
            return
        if not self._head_done:
            transport.write(_raw_response(HTTPStatus.REQUEST_TIMEOUT, "the request came too slowly"))
            self.force_close()
        else:
            transport.abort()

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """aiohttp's refusals of malformed heads are expected from the network: counted, and
        logged at debug level only."""
        if isinstance(kw.get("exc_info"), HttpProcessingError):
            self._listener.refusals[Refusal.MALFORMED] += 1
            log.debug(*args, **kw)
        else:
            super().log_exception(*args, **kw)


# ---------------------------------------------------------------- metrics


class ListenerCollector:
    """A Prometheus collector of listeners' open connections and refusals
    (``prometheus_client.registry.Collector``): ``PREFIX_http_connections{listener}`` and
    ``PREFIX_http_refused{listener,reason}``."""

    def __init__(self, prefix: str, listeners: Mapping[str, HttpListener]) -> None:
        self.prefix = prefix
        self.listeners = listeners

    def collect(self) -> Iterator[Metric]:
        listeners = sorted(self.listeners.items())
        yield gauge(
            f"{self.prefix}_http_connections",
            "Open HTTP connections, by listener.",
            ["listener"],
            [((name,), listener.open_connections) for name, listener in listeners],
        )
        refused = [
            ((name, reason), count)
            for name, listener in listeners
            for reason, count in sorted(listener.refusals.items())
        ]
        yield counter(
            f"{self.prefix}_http_refused",
            "HTTP connections and requests refused or closed early, by listener and reason.",
            ["listener", "reason"],
            refused,
        )
        bad = [
            ((name, header), count)
            for name, listener in listeners
            for header, count in sorted(listener.bad_proxy_headers.items())
        ]
        yield counter(
            f"{self.prefix}_http_bad_proxy_headers",
            "Requests from a trusted proxy whose forwarding header was unusable (the proxy's own "
            "address stood for the client), by listener and header.",
            ["listener", "header"],
            bad,
        )
