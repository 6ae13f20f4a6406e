"""The C and Node.js producers in examples/producers reach a WebSocket client through the router;
the C one that follows its topic's demand sends only as fast as its watchers want."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from router.wire import Registered, SubscribeOk
from tests.io.harness import ROOT, RouterProcess, TestEdge, WebSocketEdgeProcess, running

pytestmark = pytest.mark.timeout(120)

PRODUCERS = ROOT / "examples" / "producers"


@pytest.fixture
def edge(router: RouterProcess) -> Iterator[WebSocketEdgeProcess]:
    with running(WebSocketEdgeProcess(router)) as process:
        yield process


@pytest.fixture(scope="module")
def c_producer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compiled("telemetry", tmp_path_factory)


def compiled(example: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``examples/producers/EXAMPLE.c`` built with libzmq."""
    binary = tmp_path_factory.mktemp("c") / example
    compiler = shutil.which("cc") or "gcc"
    subprocess.run([compiler, str(PRODUCERS / f"{example}.c"), "-lzmq", "-o", str(binary)], check=True)
    return binary


async def receive_from(edge: WebSocketEdgeProcess, topic: str, command: list[str]) -> list[dict[str, Any]]:
    """Subscribe a WebSocket client to ``topic``, run the producer, and collect 5 messages."""
    async with connect(edge.url, subprotocols=["switchboard.v1"], proxy=None) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps({"op": "connect"}))
        assert json.loads(await ws.recv())["op"] == "connected"
        await ws.send(json.dumps({"op": "subscribe", "id": 1, "topic": topic}))
        assert json.loads(await ws.recv())["op"] == "subscribed"
        producer = subprocess.Popen(command, cwd=PRODUCERS)
        try:
            messages: list[dict[str, Any]] = []
            while len(messages) < 5:
                frame = await ws.recv()
                assert isinstance(frame, bytes)
                messages.append(json.loads(frame[14:]))
            return messages
        finally:
            producer.kill()
            producer.wait()


async def test_c_producer(edge: WebSocketEdgeProcess, router: RouterProcess, c_producer: Path) -> None:
    command = [str(c_producer), router.endpoints["pull"], "/lang/c", "200"]
    messages = await receive_from(edge, "/lang/c", command)
    assert {m["lang"] for m in messages} == {"c"}
    seqs = [m["seq"] for m in messages]
    assert seqs == sorted(seqs)


async def test_node_producer(edge: WebSocketEdgeProcess, router: RouterProcess) -> None:
    node = shutil.which("node")
    assert node is not None, "scripts/test installs Node.js"
    command = [node, "telemetry.mjs", router.endpoints["pull"], "/lang/js", "200"]
    messages = await receive_from(edge, "/lang/js", command)
    assert {m["lang"] for m in messages} == {"js"}
    seqs = [m["seq"] for m in messages]
    assert seqs == sorted(seqs)


@pytest.fixture(scope="module")
def c_on_demand(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compiled("on_demand", tmp_path_factory)


async def next_line(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    return (await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), timeout=10)).strip()


async def test_c_producer_follows_the_demand_of_its_topic(c_on_demand: Path) -> None:
    topic = "/lang/demand"
    with running(RouterProcess(["--demand", "tcp://127.0.0.1:0"])) as router:
        async with TestEdge(router.endpoints) as edge:
            for viewer in ("slow", "any"):
                assert isinstance(await edge.register(viewer), Registered)
            assert isinstance(await edge.subscribe("slow", topic, max_rate=4), SubscribeOk)
            command = [
                str(c_on_demand),
                router.endpoints["pull"],
                router.endpoints["demand"],
                topic,
                "5",
                "30",
            ]
            producer = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
            try:
                assert await next_line(producer) == "demand 4", (
                    "a producer that connects later is told at once"
                )
                await asyncio.sleep(1.5)
                first = len(edge.drain())
                assert 2 <= first <= 9, f"{first} messages in 1.5 s at a demand of 4/s"
                assert isinstance(await edge.subscribe("any", topic), SubscribeOk)
                assert await next_line(producer) == "demand inf"
                for viewer in ("any", "slow"):
                    await edge.request_unsubscribe(viewer, topic)
                assert await next_line(producer) == "demand 4"
                assert await next_line(producer) == "demand 0"
                sent = await next_line(producer)
                assert sent.startswith("sent "), sent
                assert int(sent.split()[1]) >= first
            finally:
                producer.kill()
                producer.wait()
