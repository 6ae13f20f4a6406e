"""HTTP signaling for the WebRTC edge, in the style of WHEP (``docs/protocol.md``, 4.9).

``POST /whep`` with an SDP offer (``Content-Type: application/sdp``, ``Authorization: Bearer
<token>`` when the router wants one) answers ``201 Created`` with the SDP answer and the client's
resource in ``Location``. ``PATCH`` of that resource with a new offer moves the client's session to
a new peer connection (the ICE restart aiortc can do); ``DELETE`` ends the session. ``GET /`` serves
the viewer page, and ``GET /metrics`` the edge's Prometheus metrics. Cross-origin pages are answered
with CORS headers for the allowed origins.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Final, NamedTuple, Protocol
from urllib.parse import quote

from edges.viewer_page import ViewerPage
from router.http_messages import HttpRequest, HttpResponse, same_origin

__all__ = [
    "METRICS_PATH",
    "SIGNALING_PATH",
    "Answer",
    "MetricsPage",
    "SignalingError",
    "SignalingHost",
    "SignalingRoutes",
]

SIGNALING_PATH: Final = "/whep"
METRICS_PATH: Final = "/metrics"
SDP: Final = "application/sdp"
STATIC_FILES: Final = {
    "/": ("viewer.html", "text/html; charset=utf-8"),
    "/viewer.js": ("viewer.js", "text/javascript"),
    "/rtc-client.js": ("rtc-client.js", "text/javascript"),
}
CORS_METHODS: Final = "POST, PATCH, DELETE, OPTIONS"
CORS_HEADERS: Final = "Authorization, Content-Type"
EXPOSED_HEADERS: Final = "Location"
OWN_VIEWER: Final = ViewerPage()
"""The viewer page that connects only to its own origin."""
URL_CHARACTERS: Final = "/?&=%:@!$'()*+,;-._~"
"""The characters a redirect keeps as they are (RFC 3986's, less ``#``, ``[`` and ``]``)."""


class Answer(NamedTuple):
    resource: str
    sdp: str


class SignalingError(Exception):
    """A refused offer: the HTTP status and a body (the client's ``error`` JSON when there is one)."""

    def __init__(self, status: HTTPStatus, body: str) -> None:
        super().__init__(body)
        self.status = status
        self.body = body


class SignalingHost(Protocol):
    """What the routes ask of the edge."""

    async def open_peer(self, offer: str, token: str | None, remote: str) -> Answer: ...

    async def restart_peer(self, resource: str, offer: str) -> str | None:
        """The answer for a new offer on an existing resource; ``None``: no such resource."""
        ...

    def leave(self, resource: str) -> bool:
        """End the resource's session; ``False``: no such resource."""
        ...


class MetricsPage(Protocol):
    """The body of a ``GET /metrics`` response (:class:`edges.metrics.EdgeMetrics`)."""

    @property
    def content_type(self) -> str: ...

    def render(self) -> bytes: ...


class SignalingRoutes:
    """Turns HTTP requests into calls on the edge. A browser's request is served when its ``Origin``
    is the edge's own or one of ``allowed_origins``; ``viewer``: ``None`` serves no viewer page;
    ``metrics``: ``None`` answers ``GET /metrics`` with 404."""

    def __init__(
        self,
        host: SignalingHost,
        allowed_origins: tuple[str, ...] | None = None,
        viewer: ViewerPage | None = OWN_VIEWER,
        metrics: MetricsPage | None = None,
    ) -> None:
        self.host = host
        self.allowed_origins = allowed_origins
        self.viewer = viewer
        self.metrics = metrics

    async def handle(self, request: HttpRequest) -> HttpResponse:
        origin = request.headers.get("origin")
        if origin is not None and not self._origin_allowed(origin, request.headers.get("host", "")):
            return HttpResponse(HTTPStatus.FORBIDDEN, b"origin not allowed\n")
        response = await self._route(request)
        if origin is None:
            return response
        cors = (
            ("Access-Control-Allow-Origin", origin),
            ("Access-Control-Expose-Headers", EXPOSED_HEADERS),
            ("Vary", "Origin"),
        )
        return response._replace(headers=response.headers + cors)

    def _origin_allowed(self, origin: str, host: str) -> bool:
        return same_origin(origin, host) or origin in (self.allowed_origins or ())

    async def _route(self, request: HttpRequest) -> HttpResponse:
        method, path = request.method, request.path
        if method == "OPTIONS":
            return _preflight()
        if method == "GET" and path in STATIC_FILES and self.viewer is not None:
            if path == "/" and "mode=" not in request.query:
                return _see_other(f"/?mode=webrtc&{request.query}".rstrip("&"))
            name, content_type = STATIC_FILES[path]
            return HttpResponse(HTTPStatus.OK, self.viewer.body(name), content_type, self.viewer.headers)
        if method == "GET" and path == METRICS_PATH and self.metrics is not None:
            return HttpResponse(HTTPStatus.OK, self.metrics.render(), self.metrics.content_type)
        if path == SIGNALING_PATH:
            return await self._offer(request) if method == "POST" else _status(HTTPStatus.METHOD_NOT_ALLOWED)
        prefix = SIGNALING_PATH + "/"
        if path.startswith(prefix) and len(path) > len(prefix):
            resource = path[len(prefix) :]
            if method == "PATCH":
                return await self._restart(resource, request)
            if method == "DELETE":
                return _status(HTTPStatus.OK if self.host.leave(resource) else HTTPStatus.NOT_FOUND)
            return _status(HTTPStatus.METHOD_NOT_ALLOWED)
        return _status(HTTPStatus.NOT_FOUND)

    async def _offer(self, request: HttpRequest) -> HttpResponse:
        offer = _offer_text(request)
        if isinstance(offer, HttpResponse):
            return offer
        try:
            answer = await self.host.open_peer(offer, request.bearer_token(), request.remote)
        except SignalingError as error:
            return _refusal(error)
        location = f"{SIGNALING_PATH}/{answer.resource}"
        return HttpResponse(HTTPStatus.CREATED, answer.sdp.encode(), SDP, (("Location", location),))

    async def _restart(self, resource: str, request: HttpRequest) -> HttpResponse:
        offer = _offer_text(request)
        if isinstance(offer, HttpResponse):
            return offer
        try:
            answer = await self.host.restart_peer(resource, offer)
        except SignalingError as error:
            return _refusal(error)
        if answer is None:
            return _status(HTTPStatus.NOT_FOUND)
        return HttpResponse(HTTPStatus.OK, answer.encode(), SDP)


def _offer_text(request: HttpRequest) -> str | HttpResponse:
    """The offer in the body, or the response that refuses it."""
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type != SDP:
        return HttpResponse(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, b"send the offer as application/sdp\n")
    try:
        return request.body.decode()
    except UnicodeDecodeError:
        return HttpResponse(HTTPStatus.BAD_REQUEST, b"the offer is not UTF-8\n")


def _refusal(error: SignalingError) -> HttpResponse:
    headers: tuple[tuple[str, str], ...] = ()
    if error.status == HTTPStatus.UNAUTHORIZED:
        headers = (("WWW-Authenticate", 'Bearer realm="switchboard"'),)
    return HttpResponse(error.status, error.body.encode(), "application/json", headers)


def _preflight() -> HttpResponse:
    headers = (
        ("Access-Control-Allow-Methods", CORS_METHODS),
        ("Access-Control-Allow-Headers", CORS_HEADERS),
        ("Access-Control-Max-Age", "600"),
    )
    return HttpResponse(HTTPStatus.NO_CONTENT, headers=headers)


def _see_other(location: str) -> HttpResponse:
    """The viewer page served by this edge starts in its WebRTC mode. ``location`` comes from the
    request: whatever is not a URL character (CR, LF, spaces, non-ASCII) is percent-encoded."""
    return HttpResponse(
        HTTPStatus.SEE_OTHER, b"", headers=(("Location", quote(location, safe=URL_CHARACTERS)),)
    )


def _status(status: HTTPStatus) -> HttpResponse:
    return HttpResponse(status, f"{status.phrase.lower()}\n".encode())
