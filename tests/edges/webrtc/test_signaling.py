"""The WebRTC edge's HTTP routes without sockets: bearer tokens, and the WHEP-style routes against a
stand-in edge. The listener under them is tested in tests/router/test_http_listener.py."""

from __future__ import annotations

from http import HTTPStatus

from edges.webrtc.signaling import Answer, SignalingError, SignalingRoutes
from router.http_messages import HttpRequest

SDP = {"content-type": "application/sdp"}


def request(method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b"") -> HttpRequest:
    path, _, query = path.partition("?")
    return HttpRequest(method, path, headers or {}, body, "127.0.0.1:1", query)


class Edge:
    """Answers offers with ``answer``, or refuses them with ``refusal``."""

    def __init__(self) -> None:
        self.refusal: SignalingError | None = None
        self.tokens: list[str | None] = []
        self.left: list[str] = []

    async def open_peer(self, offer: str, token: str | None, remote: str) -> Answer:
        if self.refusal is not None:
            raise self.refusal
        self.tokens.append(token)
        return Answer("r1", "answer for " + offer)

    async def restart_peer(self, resource: str, offer: str) -> str | None:
        return "again " + offer if resource == "r1" else None

    def leave(self, resource: str) -> bool:
        self.left.append(resource)
        return resource == "r1"


def test_bearer_tokens() -> None:
    assert request("POST", "/", {"authorization": "Bearer abc.def"}).bearer_token() == "abc.def"
    assert request("POST", "/", {"authorization": "bearer  t "}).bearer_token() == "t"
    assert request("POST", "/", {"authorization": "Basic abc"}).bearer_token() is None
    assert request("POST", "/", {"authorization": "Bearer "}).bearer_token() is None
    assert request("POST", "/").bearer_token() is None


async def test_offer_restart_and_leave() -> None:
    edge = Edge()
    routes = SignalingRoutes(edge)
    offer = request("POST", "/whep", {**SDP, "authorization": "Bearer tok"}, b"v=0")
    created = await routes.handle(offer)
    assert (created.status, created.body, created.headers) == (
        201,
        b"answer for v=0",
        (("Location", "/whep/r1"),),
    )
    assert edge.tokens == ["tok"]
    restarted = await routes.handle(request("PATCH", "/whep/r1", SDP, b"v=1"))
    assert (restarted.status, restarted.body) == (200, b"again v=1")
    assert (await routes.handle(request("PATCH", "/whep/gone", SDP, b"v=1"))).status == 404
    assert (await routes.handle(request("DELETE", "/whep/r1"))).status == 200
    assert (await routes.handle(request("DELETE", "/whep/gone"))).status == 404
    assert (await routes.handle(request("GET", "/whep/r1"))).status == 405
    assert (await routes.handle(request("POST", "/whep", {"content-type": "text/plain"}))).status == 415


async def test_refusals_carry_the_error_message() -> None:
    edge = Edge()
    edge.refusal = SignalingError(HTTPStatus.UNAUTHORIZED, '{"op":"error","code":"unauthorized"}')
    refused = await SignalingRoutes(edge).handle(request("POST", "/whep", SDP, b"v=0"))
    assert refused.status == 401
    assert refused.body == b'{"op":"error","code":"unauthorized"}'
    assert ("WWW-Authenticate", 'Bearer realm="switchboard"') in refused.headers


async def test_cors_and_the_viewer() -> None:
    routes = SignalingRoutes(Edge(), allowed_origins=("http://good",))
    preflight = await routes.handle(request("OPTIONS", "/whep", {"origin": "http://good"}))
    assert preflight.status == 204
    assert ("Access-Control-Allow-Origin", "http://good") in preflight.headers
    assert (await routes.handle(request("OPTIONS", "/whep", {"origin": "http://evil"}))).status == 403
    redirect = await routes.handle(request("GET", "/?camera=/c"))
    assert (redirect.status, redirect.headers) == (303, (("Location", "/?mode=webrtc&camera=/c"),))
    injected = await routes.handle(request("GET", "/?camera=/c\r\nSet-Cookie: a=b%0d%0a"))
    assert injected.headers == (("Location", "/?mode=webrtc&camera=/c%0D%0ASet-Cookie:%20a=b%0d%0a"),)
    page = await routes.handle(request("GET", "/?mode=webrtc"))
    assert page.status == 200
    assert page.content_type.startswith("text/html")
    assert (await routes.handle(request("GET", "/rtc-client.js"))).content_type == "text/javascript"
    hidden = SignalingRoutes(Edge(), viewer=None)
    assert (await hidden.handle(request("GET", "/?mode=webrtc"))).status == 404


class Metrics:
    content_type = "text/plain; version=0.0.4; charset=utf-8"

    def render(self) -> bytes:
        return b"switchboard_edge_clients 0\n"


async def test_metrics_only_when_given() -> None:
    scraped = await SignalingRoutes(Edge(), metrics=Metrics()).handle(request("GET", "/metrics"))
    assert (scraped.status, scraped.body) == (200, b"switchboard_edge_clients 0\n")
    assert scraped.content_type == Metrics.content_type
    assert (await SignalingRoutes(Edge()).handle(request("GET", "/metrics"))).status == 404
