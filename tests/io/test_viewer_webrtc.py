"""The viewer page in its WebRTC mode, in headless Chromium, fed by the real router, a WebRTC edge
and the demo producer: the camera as a video track, telemetry from the data channel."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from tests.io.browser import Chromium
from tests.io.harness import configured_router, demo_producer, running
from tests.io.rtc_client import WebRtcEdgeProcess, http, loopback_only

pytestmark = pytest.mark.timeout(120)

CONFIG = """
[topics]
allow_undeclared = true

[[topics.declare]]
pattern = "/demo/camera"
content_type = "image/jpeg"

[topics.declare.policy]
kind = "latest"

[[topics.declare]]
pattern = "/demo/telemetry"
content_type = "application/json"
"""
CAMERA_ROW = '#subscriptions tr[data-topic="/demo/camera"]'


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[WebRtcEdgeProcess]:
    loopback_only()
    with (
        configured_router(tmp_path, CONFIG) as router,
        running(WebRtcEdgeProcess(router)) as edge,
        demo_producer(router.endpoints["pull"]),
    ):
        yield edge


def count(element_id: str) -> str:
    return f"Number(document.getElementById('{element_id}').textContent)"


async def test_viewer_plays_the_camera_and_telemetry_over_webrtc(stack: WebRtcEdgeProcess) -> None:
    async with Chromium() as browser:
        await browser.goto(f"{stack.base_url}/")
        await browser.wait_for("document.getElementById('status').textContent === 'connected'")
        assert await browser.evaluate("location.search") == "?mode=webrtc"
        await browser.wait_for(f"{count('frames-count')} >= 10")
        await browser.wait_for(f"{count('telemetry-count')} >= 25")
        assert await browser.evaluate("document.getElementById('video').videoWidth") == 320
        assert await browser.evaluate("document.getElementById('frame').hidden")

        await browser.evaluate(f"document.querySelector('{CAMERA_ROW} button').click()")
        await browser.wait_for(f"!document.querySelector('{CAMERA_ROW}')")
        frames = await browser.evaluate(count("frames-count"))
        samples = await browser.evaluate(count("telemetry-count"))
        await browser.wait_for(f"{count('telemetry-count')} >= {samples + 25}")
        assert await browser.evaluate(count("frames-count")) <= frames + 1

        await browser.evaluate("document.getElementById('topic').value = '/demo/camera'")
        await browser.evaluate("document.querySelector('#subscribe-form button[type=submit]').click()")
        await browser.wait_for(f"{count('frames-count')} >= {frames + 10}")


HOSTILE_MODULE = b"""document.title = "taken over";
export class RtcTransport { constructor() { document.title = "taken over"; } }
"""


@pytest.fixture
async def hostile_origin() -> AsyncIterator[tuple[str, list[str]]]:
    """Another origin on loopback serving a client module that would retitle any page that runs it,
    with CORS open to all; yields its base URL and the paths asked of it."""
    asked: list[str] = []

    async def serve(request: web.Request) -> web.Response:
        asked.append(request.path)
        headers = {"Access-Control-Allow-Origin": "*"}
        return web.Response(body=HOSTILE_MODULE, content_type="text/javascript", headers=headers)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", asked
    finally:
        await runner.cleanup()


async def test_a_foreign_whep_parameter_runs_no_foreign_code(
    stack: WebRtcEdgeProcess, hostile_origin: tuple[str, list[str]]
) -> None:
    hostile, asked = hostile_origin
    status, headers, _ = await http("GET", f"{stack.base_url}/?mode=webrtc")
    assert status == 200
    assert "script-src" not in headers["content-security-policy"], "default-src 'self' covers scripts"
    assert "default-src 'self'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"
    async with Chromium() as browser:
        await browser.goto(f"{stack.base_url}/?mode=webrtc&whep={hostile}/whep")
        await browser.wait_for("document.getElementById('status').textContent === 'connected'")
        await browser.wait_for(f"{count('telemetry-count')} >= 5")
        assert await browser.evaluate("document.title") != "taken over"
        log = await browser.evaluate("document.getElementById('log').textContent")
        assert f"ignored whep={hostile}/whep" in log
    assert asked == [], "the page never asked the other origin for anything"
