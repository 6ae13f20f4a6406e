"""Headless Chromium as a WebRTC client of the real edge and router (``edges/static/rtc-client.js``)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from tests.io.browser import Chromium
from tests.io.harness import ROOT, RouterProcess, TestEdge, eventually, running_router
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

SHOW_VIDEO = """(() => {
  window.shown = 0;
  const onControl = transport.onControl;
  transport.onControl = (message) => {
    onControl(message);
    if (message.op !== "track") return;
    const video = document.createElement("video");
    Object.assign(video, { muted: true, autoplay: true, playsInline: true });
    video.srcObject = new MediaStream([transport.track(message.mid)]);
    document.body.append(video);
    const count = () => {
      if (window.shown === 0) window.firstFrameMs = performance.now() - window.subscribedAt;
      window.shown += 1;
      video.requestVideoFrameCallback(count);
    };
    video.requestVideoFrameCallback(count);
    window.video = video;
  };
  window.subscribedAt = performance.now();
  return true;
})()"""
VIDEO_CONFIG = """
[topics]
allow_undeclared = true

[[topics.declare]]
pattern = "/demo/camera"
content_type = "image/jpeg"

[topics.declare.policy]
kind = "latest"
"""


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


@pytest.fixture
def camera(tmp_path: Path) -> Iterator[RouterProcess]:
    """A router whose ``/demo/camera`` is a JPEG video topic, fed by the demo producer at 20 frames/s."""
    config = tmp_path / "router.toml"
    config.write_text(VIDEO_CONFIG, encoding="utf-8")
    with running_router(["--config", str(config)]) as router:
        command = [sys.executable, "examples/demo_producer.py", "--pull", router.endpoints["pull"]]
        producer = subprocess.Popen(command, cwd=ROOT)
        try:
            yield router
        finally:
            producer.terminate()
            producer.wait(timeout=10)


async def test_a_video_topic_plays_as_a_video_track(camera: RouterProcess) -> None:
    loopback_only()
    edge = WebRtcEdgeProcess(camera)
    edge.start()
    try:
        async with Chromium() as browser:
            await open_page(browser, edge, video_slots=1)
            assert await browser.evaluate(SHOW_VIDEO)
            subscribed = await subscribe(browser, "/demo/camera", 1)
            assert subscribed["content_type"] == "image/jpeg"
            track = await browser.wait_for("controls.find((m) => m.op === 'track')")
            assert (track["topic"], track["channel"]) == ("/demo/camera", subscribed["channel"])
            await browser.wait_for("window.shown >= 1", timeout=5)
            assert await browser.evaluate("window.firstFrameMs") < 1000
            assert await browser.evaluate("video.videoWidth") == 320
            before = await browser.evaluate("window.shown")
            await browser.evaluate("new Promise((resolve) => setTimeout(resolve, 2000))")
            shown = await browser.evaluate("window.shown") - before
            assert shown >= 10  # about 40 at 20 frames/s; fewer on a busy machine
            assert await browser.evaluate("transport.stats.frames") == 0
    finally:
        edge.stop()
