"""The viewer's files as both edges serve them: the page names the other origins it may connect to
(``--viewer-origin``), and its Content-Security-Policy lets it reach them."""

from __future__ import annotations

import html
from collections.abc import Iterable
from importlib import resources
from typing import Final

from router.forwarding import parse_origin
from router.http_messages import page_headers

__all__ = ["ORIGINS_META", "ViewerPage", "viewer_origin"]

ORIGINS_META: Final = b'<meta name="switchboard-viewer-origins" content="">'
"""The element of ``viewer.html`` whose ``content`` becomes the allowed origins, space-separated."""
_HTTP_SCHEMES: Final = {"ws://": "http://", "wss://": "https://"}


def viewer_origin(text: str) -> str:
    """An origin the viewer may take ``ws`` or ``whep`` at, as ``http(s)://HOST[:PORT]``
    (``ws://`` and ``wss://`` are written as their ``http`` twins). Raises ``ValueError``."""
    for socket_scheme, http_scheme in _HTTP_SCHEMES.items():
        if text.startswith(socket_scheme):
            text = http_scheme + text.removeprefix(socket_scheme)
    return parse_origin(text, "--viewer-origin")


class ViewerPage:
    """The viewer's files with ``origins`` (``--viewer-origin`` values) allowed besides the page's
    own. Raises ``ValueError`` for an origin that is not one."""

    def __init__(self, origins: Iterable[str] = ()) -> None:
        self.origins = tuple(dict.fromkeys(viewer_origin(origin) for origin in origins))
        self.headers = page_headers(self.origins)
        """The security headers every viewer file goes with."""

    def body(self, name: str) -> bytes:
        """The file ``name`` of ``edges/static``; the page with its allowed origins filled in."""
        body = resources.files("edges").joinpath("static", name).read_bytes()
        if name != "viewer.html":
            return body
        content = html.escape(" ".join(self.origins), quote=True).encode()
        return body.replace(ORIGINS_META, ORIGINS_META.replace(b'content=""', b'content="%s"' % content))
