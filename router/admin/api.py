"""The admin API: one HTTP request in, one response out, on the router's event loop.

Every ``/api/`` request must bear ``Authorization: Bearer TOKEN`` when a token is configured; it
is compared in constant time. Without a token the API only listens on loopback
(:mod:`router.admin.config`), and a request whose ``Host`` is not a loopback name is refused, so a
web page cannot reach it through DNS rebinding. A request whose ``Origin`` is another site's is
always refused, so a page open in an operator's browser cannot drive the API. The API's own origins
are ``http://`` and its ``Host``, the configured public origin, and the origin a trusted reverse
proxy reports (a TLS proxy's ``https://`` one). The dashboard page and its script are served to
anyone who reaches the port: they hold no data.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from http import HTTPStatus
from importlib import resources
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote

import msgspec

from router.admin.config import is_loopback
from router.admin.rates import RateMeter
from router.admin.rows import Clocks, client_rows, cluster_reply, edge_rows, topic_rows
from router.admin.shapes import (
    ClientList,
    DrainReply,
    EdgeList,
    ErrorBody,
    ErrorReply,
    KickReply,
    NoCluster,
    PolicyReply,
    TopicList,
)
from router.core import ConnectionManager, DeliveryPolicy, ErrorCode, RefusedError
from router.core.control import KICKED
from router.core.views import ClusterView
from router.http_messages import PAGE_HEADERS, HttpRequest, HttpResponse

__all__ = ["AdminApi", "AdminTarget", "ApiError"]

JSON = "application/json"
STATIC_FILES = {
    "/": ("dashboard.html", "text/html; charset=utf-8"),
    "/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
}
MAX_REASON = 200
_STATUS = {
    ErrorCode.UNKNOWN_CLIENT: HTTPStatus.NOT_FOUND,
    ErrorCode.UNKNOWN_EDGE: HTTPStatus.NOT_FOUND,
    ErrorCode.UNKNOWN_TOPIC: HTTPStatus.NOT_FOUND,
}
_POLICY_FIELDS = frozenset(DeliveryPolicy.__struct_fields__)


class AdminTarget(Protocol):
    """What the API acts on: :class:`~router.server.RouterServer`, or a test's stand-in."""

    manager: ConnectionManager

    def set_delivery_policy(self, topic: str, policy: DeliveryPolicy) -> list[str]: ...

    def kick_client(self, client_id: str, reason: str = KICKED) -> str: ...

    def drain_edge(self, edge_id: str) -> list[str]: ...

    def cluster_view(self) -> ClusterView | None: ...


class ApiError(Exception):
    """A request the API refuses: an HTTP status, a stable code and a message."""

    def __init__(
        self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST, code: str = "bad_request"
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class AdminApi:
    """Routes admin requests to ``target``. :meth:`sample` (every second) feeds the rates."""

    def __init__(
        self,
        target: AdminTarget,
        token: str | None,
        heartbeat_interval: float,
        *,
        public_origin: str = "",
        clock: Callable[[], float] = time.monotonic,
        unix_clock: Callable[[], float] = time.time,
    ) -> None:
        self.target = target
        self._public_origin = public_origin
        """An origin of the dashboard besides the API's own (``[admin] public_origin``), as
        :func:`~router.forwarding.parse_origin` writes it."""
        self._token = token.encode() if token else None
        self._heartbeat_interval = heartbeat_interval
        self._clock = clock
        self._unix_clock = unix_clock
        self._rates = RateMeter()
        self._drop_rates = RateMeter()

    def sample(self) -> None:
        """Sample every topic's counters for the rates the API shows."""
        views = self.target.manager.topic_views()
        now = self._clock()
        self._rates.sample(now, {view.topic: view.messages for view in views})
        self._drop_rates.sample(now, {view.topic: view.edge_drops for view in views})

    async def handle(self, request: HttpRequest) -> HttpResponse:
        if not request.path.startswith("/api/"):
            return _static(request)
        try:
            self._check_access(request)
            return self._route(request)
        except ApiError as refused:
            return _error(refused.status, refused.code, refused.message)
        except RefusedError as refused:
            return _error(
                _STATUS.get(refused.code, HTTPStatus.BAD_REQUEST), refused.code.value, refused.detail
            )

    # ------------------------------------------------------------ access

    def _check_access(self, request: HttpRequest) -> None:
        host = request.headers.get("host", "")
        origin = request.headers.get("origin")
        if origin is not None and origin.lower() not in self._own_origins(request, host):
            raise ApiError(f"requests from {origin[:100]!r} are refused", HTTPStatus.FORBIDDEN, "forbidden")
        if self._token is None:
            if not is_loopback(_hostname(host)):
                raise ApiError("without a token, use a loopback Host", HTTPStatus.FORBIDDEN, "forbidden")
            return
        given = (request.bearer_token() or "").encode()
        if not hmac.compare_digest(given, self._token):
            raise ApiError("send Authorization: Bearer TOKEN", HTTPStatus.UNAUTHORIZED, "unauthorized")

    def _own_origins(self, request: HttpRequest, host: str) -> set[str]:
        return {f"http://{host.lower()}", self._public_origin, request.proxied_origin} - {""}

    # ------------------------------------------------------------ routes

    def _route(self, request: HttpRequest) -> HttpResponse:
        path = request.path
        listing = {"/api/stats": self._stats, "/api/clients": self._clients}
        listing |= {"/api/topics": self._topics, "/api/edges": self._edges, "/api/cluster": self._cluster}
        if path in listing:
            _allow(request, "GET")
            return _json(listing[path](request))
        if (topic := _between(path, "/api/topics", "/policy")) is not None:
            return self._policy(request, topic)
        if (client_id := _between(path, "/api/clients/", "/kick")) is not None:
            _allow(request, "POST")
            reason = _reason(request)
            return _json(KickReply(client_id=client_id, edge_id=self.target.kick_client(client_id, reason)))
        if (edge_id := _between(path, "/api/edges/", "/drain")) is not None:
            _allow(request, "POST")
            return _json(DrainReply(edge_id=edge_id, clients=self.target.drain_edge(edge_id)))
        raise ApiError(f"no such API: {path[:100]!r}", HTTPStatus.NOT_FOUND, "not_found")

    def _clocks(self) -> Clocks:
        return Clocks(self._clock(), self._unix_clock())

    def _stats(self, request: HttpRequest) -> object:
        return self.target.manager.get_connection_stats()

    def _clients(self, request: HttpRequest) -> object:
        edge = parse_qs(request.query).get("edge", [None])[0]
        return ClientList(clients=client_rows(self.target.manager.client_views(edge), self._clocks()))

    def _topics(self, request: HttpRequest) -> object:
        views = self.target.manager.topic_views()
        return TopicList(topics=topic_rows(views, self._rates, self._drop_rates))

    def _edges(self, request: HttpRequest) -> object:
        views = self.target.manager.edge_views()
        return EdgeList(edges=edge_rows(views, self._clocks(), self._heartbeat_interval))

    def _cluster(self, request: HttpRequest) -> object:
        view = self.target.cluster_view()
        return NoCluster() if view is None else cluster_reply(view)

    def _policy(self, request: HttpRequest, topic: str) -> HttpResponse:
        _allow(request, "GET", "PUT")
        manager = self.target.manager
        told: list[str] = []
        if request.method == "PUT":
            told = self.target.set_delivery_policy(topic, _policy_body(request.body))
        policy = manager.get_delivery_policy(topic)
        overridden = policy != manager.registry.resolve(topic).policy
        return _json(PolicyReply(topic=topic, policy=policy, overridden=overridden, edges_told=told))


# ---------------------------------------------------------------- helpers


def _between(path: str, prefix: str, suffix: str) -> str | None:
    """The percent-decoded part of ``path`` between ``prefix`` and ``suffix``, if it has both."""
    if not (path.startswith(prefix) and path.endswith(suffix) and len(path) > len(prefix) + len(suffix)):
        return None
    try:
        return unquote(path[len(prefix) : -len(suffix)], errors="strict")
    except UnicodeDecodeError:
        raise ApiError("the path is not UTF-8 once percent-decoded") from None


def _allow(request: HttpRequest, *methods: str) -> None:
    if request.method not in methods:
        raise ApiError(f"use {' or '.join(methods)}", HTTPStatus.METHOD_NOT_ALLOWED, "method_not_allowed")


def _body(body: bytes) -> dict[str, Any]:
    try:
        value = msgspec.json.decode(body or b"{}")
    except msgspec.DecodeError as error:
        raise ApiError(f"the body is not JSON: {error}") from None
    if not isinstance(value, dict):
        raise ApiError("the body must be a JSON object")
    return value


def _policy_body(body: bytes) -> DeliveryPolicy:
    fields = _body(body)
    unknown = set(fields) - _POLICY_FIELDS
    if unknown:
        raise ApiError(f"unknown policy keys: {', '.join(sorted(unknown))}")
    try:
        return msgspec.convert(fields, DeliveryPolicy)
    except (msgspec.ValidationError, ValueError) as error:
        raise ApiError(f"bad policy: {error}") from None


def _reason(request: HttpRequest) -> str:
    reason = _body(request.body).get("reason", KICKED)
    if not isinstance(reason, str) or not reason or len(reason) > MAX_REASON:
        raise ApiError(f"reason: a string of 1 to {MAX_REASON} characters")
    return reason


def _hostname(host: str) -> str:
    name = host.rpartition(":")[0] if not host.endswith("]") else host
    return (name or host).removeprefix("[").removesuffix("]")


def _json(value: object, status: HTTPStatus = HTTPStatus.OK) -> HttpResponse:
    return HttpResponse(status, msgspec.json.encode(value) + b"\n", JSON)


def _error(status: HTTPStatus, code: str, message: str) -> HttpResponse:
    return _json(ErrorReply(error=ErrorBody(code=code, message=message)), status)


def _static(request: HttpRequest) -> HttpResponse:
    found = STATIC_FILES.get(request.path)
    if found is None:
        return _error(HTTPStatus.NOT_FOUND, "not_found", "the dashboard is at /")
    if request.method != "GET":
        return _error(HTTPStatus.METHOD_NOT_ALLOWED, "method_not_allowed", "use GET")
    name, content_type = found
    body = resources.files("router.admin").joinpath("static", name).read_bytes()
    return HttpResponse(HTTPStatus.OK, body, content_type, PAGE_HEADERS)
