"""The viewer's ``ws`` parameter may name another edge's origin when the edge that serves the page
lists it (``--viewer-origin``), in headless Chromium against the real router, three WebSocket edges
and the demo producer: a listed edge serves the viewer, an unlisted one is ignored."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import NamedTuple

import pytest

from tests.io.browser import Chromium
from tests.io.harness import RouterProcess, WebSocketEdgeProcess, demo_producer, running
from tests.io.rtc_client import http

pytestmark = pytest.mark.timeout(120)


class Edges(NamedTuple):
    page: WebSocketEdgeProcess
    """The edge that serves the viewer page, with ``listed`` as a viewer origin."""
    listed: WebSocketEdgeProcess
    unlisted: WebSocketEdgeProcess


def origin(edge: WebSocketEdgeProcess) -> str:
    return edge.http_url.rstrip("/")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def edges(router: RouterProcess) -> Iterator[Edges]:
    page_port = free_port()
    page_origin = f"http://127.0.0.1:{page_port}"
    with (
        demo_producer(router.endpoints["pull"]),
        running(WebSocketEdgeProcess(router, ["--allowed-origin", page_origin])) as listed,
        running(WebSocketEdgeProcess(router, ["--allowed-origin", page_origin])) as unlisted,
        running(
            WebSocketEdgeProcess(router, ["--port", str(page_port), "--viewer-origin", origin(listed)])
        ) as page,
    ):
        yield Edges(page, listed, unlisted)


def text_of(element_id: str) -> str:
    return f"document.getElementById('{element_id}').textContent"


async def view(url: str) -> tuple[str, str]:
    """Open the viewer at ``url`` in Chromium until telemetry flows: the client id it shows, and
    what it logged."""
    async with Chromium() as browser:
        await browser.goto(url)
        await browser.wait_for(f"{text_of('status')} === 'connected'")
        client_id: str = await browser.evaluate(text_of("client-id"))
        await browser.wait_for(f"Number({text_of('telemetry-count')}) >= 5")
        log: str = await browser.evaluate(text_of("log"))
    return client_id, log


async def test_a_listed_viewer_origin_serves_the_viewer(edges: Edges) -> None:
    listed = origin(edges.listed)
    status, headers, page = await http("GET", edges.page.http_url)
    assert status == 200
    policy = headers["content-security-policy"]
    assert f"connect-src 'self' {listed} {listed.replace('http://', 'ws://')}" in policy
    assert "script-src" not in policy, "default-src 'self' covers scripts"
    assert "default-src 'self'" in policy
    assert f'content="{listed}"'.encode() in page
    client_id, log = await view(f"{edges.page.http_url}?ws={listed.replace('http://', 'ws://')}/")
    assert client_id.startswith(f"{edges.listed.announced['edge_id']}."), client_id
    assert "a viewer origin of this edge" in log


async def test_an_unlisted_origin_is_ignored_and_the_page_says_so(edges: Edges) -> None:
    unlisted = origin(edges.unlisted).replace("http://", "ws://") + "/"
    client_id, log = await view(f"{edges.page.http_url}?ws={unlisted}")
    assert client_id.startswith(f"{edges.page.announced['edge_id']}."), client_id
    assert f"ignored ws={unlisted}: not this page's host nor a viewer origin of this edge" in log
