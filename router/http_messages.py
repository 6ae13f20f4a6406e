"""One HTTP exchange as plain values: what a route receives and what it answers.

Routes (the admin API, the WebRTC edge's signaling, ``/metrics``) take an :class:`HttpRequest` and
return an :class:`HttpResponse`; they never see a socket, so tests call them directly.
:mod:`router.http_listener` moves them to and from the wire.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Final, NamedTuple
from urllib.parse import urlsplit

__all__ = [
    "PAGE_HEADERS",
    "PAGE_POLICY",
    "PLAIN_TEXT",
    "HttpRequest",
    "HttpResponse",
    "page_headers",
    "page_policy",
    "same_origin",
]

PLAIN_TEXT: Final = "text/plain; charset=utf-8"
PAGE_POLICY: Final = (
    "default-src 'self'; img-src 'self' blob:; style-src 'self' 'unsafe-inline'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
"""The Content-Security-Policy of every page and page file Switchboard serves (the dashboard, the
viewer): scripts, modules and connections only from the page's own origin, images also from the
``blob:`` URLs the viewer makes of frames, and no framing by other pages."""
PAGE_HEADERS: Final = (("Content-Security-Policy", PAGE_POLICY), ("X-Content-Type-Options", "nosniff"))
_SOCKET_SCHEMES: Final = {"http": "ws", "https": "wss"}


def page_policy(connect: tuple[str, ...] = ()) -> str:
    """:data:`PAGE_POLICY`, letting the page also connect to the ``connect`` origins
    (``http(s)://HOST[:PORT]``, and each one's WebSocket twin, ``ws(s)://HOST[:PORT]``); scripts
    still come only from the page's own origin."""
    if not connect:
        return PAGE_POLICY
    sources = []
    for origin in connect:
        scheme, _, rest = origin.partition("://")
        sources += [origin, f"{_SOCKET_SCHEMES.get(scheme, scheme)}://{rest}"]
    return f"{PAGE_POLICY}; connect-src 'self' {' '.join(sources)}"


def page_headers(connect: tuple[str, ...] = ()) -> tuple[tuple[str, str], ...]:
    """:data:`PAGE_HEADERS`, with :func:`page_policy` of ``connect``."""
    return (("Content-Security-Policy", page_policy(connect)), ("X-Content-Type-Options", "nosniff"))


class HttpRequest(NamedTuple):
    method: str
    path: str
    """The target's path, still percent-encoded, without its query string."""
    headers: dict[str, str]
    """Header names in lower case (the listener refuses a repeated header that matters)."""
    body: bytes
    remote: str = ""
    """``HOST:PORT`` of the client (``HOST`` alone when a proxy named it without its port): the
    connection's peer, or the client a trusted proxy names."""
    query: str = ""
    """The target's query string, still percent-encoded, without the ``?``."""
    proxied_origin: str = ""
    """``SCHEME://HOST`` the client addressed, as a trusted proxy reported it; ``""`` when the
    request did not come through one, or it did not say."""

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
    """More headers; a value with a control character is refused by the listener (500), so text
    from a request must be percent-encoded before it goes here."""


def same_origin(origin: str, host: str) -> bool:
    """Whether a browser's ``Origin`` names the server it is talking to: its host and port are the
    request's ``Host`` header (a browser sets both; scheme aside, since a TLS proxy may sit between)."""
    try:
        netloc = urlsplit(origin).netloc
    except ValueError:
        return False
    return bool(host) and netloc.lower() == host.lower()
