"""Headless Chromium as a WebRTC client of the real edge and router (``edges/static/rtc-client.js``)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import zmq

from tests.io.browser import Chromium
from tests.io.harness import RouterProcess, TestEdge, eventually
from tests.io.rtc_client import WebRtcEdgeProcess, loopback_only

pytestmark = pytest.mark.timeout(90)

OPEN_TRANSPORT = """(async () => {
  const { RtcTransport } = await import("/rtc-client.js");
  window.controls = [];
  window.counts = {};
  window.transport = new RtcTransport(location.origin + "/whep", { token: "browser", videoSlots: %d });
  transport.onControl = (message) => controls.push(message);
  transport.onData = (buffer) => {
    const channel = new DataView(buffer).getUint32(2);
    counts[channel] = (counts[channel] || 0) + 1;
  };
  await transport.open();
  return true;
})()"""


@pytest.fixture
def edge(router: RouterProcess) -> Iterator[WebRtcEdgeProcess]:
    loopback_only()
    process = WebRtcEdgeProcess(router)
    process.start()
    yield process
    process.stop()


async def open_page(browser: Chromium, edge: WebRtcEdgeProcess, video_slots: int = 0) -> None:
    await browser.goto(f"{edge.base_url}/blank")
    await browser.wait_for("document.readyState === 'complete'")
    assert await browser.evaluate(OPEN_TRANSPORT % video_slots)
    await browser.wait_for("controls.some((m) => m.op === 'connected')")


async def subscribe(browser: Chromium, topic: str, request_id: int) -> dict[str, object]:
    await browser.evaluate(
        f"transport.send({json.dumps({'op': 'subscribe', 'id': request_id, 'topic': topic})})"
    )
    reply: dict[str, object] = await browser.wait_for(f"controls.find((m) => m.id === {request_id})")
    return reply


async def clients_at_router(router: RouterProcess) -> object:
    async with TestEdge(router.endpoints) as observer:
        return (await observer.stats())["clients"]


async def test_data_channel_messages_for_the_subscribed_topic_only(
    router: RouterProcess, edge: WebRtcEdgeProcess, push: zmq.Socket[bytes]
) -> None:
    async with Chromium() as browser:
        await open_page(browser, edge)
        subscribed = await subscribe(browser, "/browser/wanted", 1)
        assert subscribed["op"] == "subscribed", subscribed
        channel = subscribed["channel"]
        for _ in range(100):
            push.send_multipart([b"/browser/unwanted", b"no"])
            push.send_multipart([b"/browser/wanted", b"yes"])
            if await browser.evaluate(f"(counts[{channel}] || 0) >= 20"):
                break
        await browser.wait_for(f"(counts[{channel}] || 0) >= 20")
        assert list(await browser.evaluate("Object.keys(counts)")) == [str(channel)]
        assert await browser.evaluate("transport.stats.lossy === transport.stats.frames")


async def test_a_closed_tab_and_a_killed_browser_are_cleaned_up_at_the_router(
    router: RouterProcess, edge: WebRtcEdgeProcess
) -> None:
    async with Chromium() as browser:
        await open_page(browser, edge)
        assert await clients_at_router(router) == 1
        await browser.call("Page.close")
        await eventually(lambda: _no_clients(router), timeout=5)
    async with Chromium() as browser:
        await open_page(browser, edge)
        assert await clients_at_router(router) == 1
        browser.kill()
        await eventually(lambda: _no_clients(router), timeout=5)


async def _no_clients(router: RouterProcess) -> bool:
    return await clients_at_router(router) == 0
