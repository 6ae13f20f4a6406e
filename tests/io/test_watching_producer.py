"""The example producer that encodes only while someone watches, and no faster than its viewers
want, against the real router."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any

import pytest

from router.wire import Registered, SubscribeOk
from tests.io.harness import ROOT, RouterProcess, TestEdge, running

pytestmark = pytest.mark.timeout(60)


async def next_event(producer: subprocess.Popen[bytes]) -> dict[str, Any]:
    assert producer.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(producer.stdout.readline), timeout=10)
    event: dict[str, Any] = json.loads(line)
    return event


async def test_producer_encodes_only_while_watched(router: RouterProcess) -> None:
    producer = subprocess.Popen(
        [sys.executable, "examples/watching_producer.py", "--xsub", router.endpoints["xsub"], "--fps", "50"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
    )
    try:
        assert (await next_event(producer))["event"] == "started"
        async with TestEdge(router.endpoints) as edge:
            assert isinstance(await edge.register("viewer"), Registered)
            assert isinstance(await edge.subscribe("viewer", "/demo/camera"), SubscribeOk)
            watched = await next_event(producer)
            assert (watched["event"], watched["encoded"]) == ("watched", 0)
            meta, frame = await edge.next_message(timeout=10)
            assert meta.topic == b"/demo/camera"
            assert frame.startswith(b"\xff\xd8")
            await edge.request_unsubscribe("viewer", "/demo/camera")
            unwatched = await next_event(producer)
            assert unwatched["event"] == "unwatched"
            assert unwatched["encoded"] >= 1
            await asyncio.sleep(0.5)
            assert isinstance(await edge.subscribe("viewer", "/demo/camera"), SubscribeOk)
            again = await next_event(producer)
            assert (again["event"], again["encoded"]) == ("watched", unwatched["encoded"])
    finally:
        producer.terminate()
        producer.wait(timeout=10)


async def until_event(producer: subprocess.Popen[bytes], name: str) -> dict[str, Any]:
    """The producer's next event called ``name``, past any other."""
    while (event := await next_event(producer))["event"] != name:
        pass
    return event


async def test_producer_encodes_no_faster_than_the_fastest_viewer_wants() -> None:
    with running(RouterProcess(["--demand", "tcp://127.0.0.1:0"])) as router:
        command = [sys.executable, "examples/watching_producer.py", "--xsub", router.endpoints["xsub"]]
        command += ["--fps", "50", "--demand", router.endpoints["demand"]]
        producer = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE)
        try:
            assert (await next_event(producer))["event"] == "started"
            async with TestEdge(router.endpoints) as edge:
                for viewer in ("slow", "fast"):
                    assert isinstance(await edge.register(viewer), Registered)
                assert isinstance(await edge.subscribe("slow", "/demo/camera", max_rate=5), SubscribeOk)
                assert (await until_event(producer, "demand"))["fps"] == 5
                edge.drain()
                await asyncio.sleep(2)
                frames = len(edge.drain())
                assert 2 <= frames <= 14, f"{frames} frames in 2 s at a demand of 5/s"
                assert isinstance(await edge.subscribe("fast", "/demo/camera", max_rate=20), SubscribeOk)
                assert (await until_event(producer, "demand"))["fps"] == 20
                await edge.request_unsubscribe("fast", "/demo/camera")
                assert (await until_event(producer, "demand"))["fps"] == 5
                assert isinstance(await edge.subscribe("fast", "/demo/camera"), SubscribeOk)
                assert (await until_event(producer, "demand"))["fps"] == 50, "a viewer without a cap"
                for viewer in ("slow", "fast"):
                    await edge.request_unsubscribe(viewer, "/demo/camera")
                stopped = await until_event(producer, "demand")
                assert (stopped["rate"], stopped["fps"]) == (0, 0)
        finally:
            producer.terminate()
            producer.wait(timeout=10)
