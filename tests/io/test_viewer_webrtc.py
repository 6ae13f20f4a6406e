"""The viewer page in its WebRTC mode, in headless Chromium, fed by the real router, a WebRTC edge
and the demo producer: the camera as a video track, telemetry from the data channel."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.io.browser import Chromium
from tests.io.harness import configured_router, demo_producer, running
from tests.io.rtc_client import WebRtcEdgeProcess, loopback_only

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
