"""The viewer page in headless Chromium, fed by the real router, edge and demo producer."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.io.browser import Chromium
from tests.io.harness import WebSocketEdgeProcess, demo_producer, running, running_router

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def stack() -> Iterator[WebSocketEdgeProcess]:
    with (
        running_router() as router,
        running(WebSocketEdgeProcess(router)) as edge,
        demo_producer(router.endpoints["pull"]),
    ):
        yield edge


def count(element_id: str) -> str:
    return f"Number(document.getElementById('{element_id}').textContent)"


async def test_viewer_shows_live_frames_and_telemetry(stack: WebSocketEdgeProcess) -> None:
    async with Chromium() as browser:
        await browser.goto(stack.http_url)
        await browser.wait_for("document.getElementById('status').textContent === 'connected'")
        await browser.wait_for(f"{count('frames-count')} >= 5")
        await browser.wait_for(f"{count('telemetry-count')} >= 25")
        width = await browser.wait_for("document.getElementById('frame').naturalWidth")
        assert width == 320
        topics = await browser.evaluate(
            "[...document.querySelectorAll('#subscriptions tr[data-topic]')].map(r => r.dataset.topic).sort()"
        )
        assert topics == ["/demo/camera", "/demo/telemetry"]
        latency = await browser.wait_for("Number(document.getElementById('latency').textContent) > 0")
        assert latency

        await browser.evaluate(
            "document.querySelector('#subscriptions tr[data-topic=\"/demo/camera\"] button').click()"
        )
        await browser.wait_for("!document.querySelector('#subscriptions tr[data-topic=\"/demo/camera\"]')")
        # The counters are drawn every 250 ms at most: wait for a drawing after the row went, which
        # counts every frame that came before the unsubscribed reply.
        samples = await browser.evaluate(count("telemetry-count"))
        await browser.wait_for(f"{count('telemetry-count')} > {samples}")
        frames = await browser.evaluate(count("frames-count"))
        samples = await browser.evaluate(count("telemetry-count"))
        await browser.wait_for(f"{count('telemetry-count')} >= {samples + 25}")
        assert await browser.evaluate(count("frames-count")) == frames

        await browser.evaluate("document.getElementById('topic').value = '/demo/camera'")
        await browser.evaluate("document.querySelector('#subscribe-form button[type=submit]').click()")
        await browser.wait_for(f"{count('frames-count')} >= {frames + 3}")
