"""Reliable delivery end to end, with the real router, real WebSocket edges and ``websockets``
clients written from ``docs/protocol.md``: every message once, in order, across reconnects, a slow
reader and a killed edge; and the documented replies when the history cannot answer."""

from __future__ import annotations

import asyncio
import json
import random
import struct
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import zmq
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from tests.io.harness import ROOT, RouterProcess, WebSocketEdgeProcess, configured_router, connected_client

pytestmark = pytest.mark.timeout(120)

TOPIC = "/orders/all"
SMALL_TOPIC = "/recent/few"
SMALL_HISTORY = 10
MESSAGES = 10_000
PAYLOAD = 1_000
CONFIG = f"""
[topics]
allow_undeclared = false

[[topics.declare]]
pattern = "/orders/*"

[topics.declare.policy]
kind = "reliable"
history_max_messages = {MESSAGES}

[[topics.declare]]
pattern = "/recent/*"

[topics.declare.policy]
kind = "reliable"
history_max_messages = {SMALL_HISTORY}
"""
DATA = struct.Struct("!BBIQ")
SKIPPED = 0x02


@pytest.fixture
def router(tmp_path: Path) -> Iterator[RouterProcess]:
    with configured_router(tmp_path, CONFIG) as process:
        yield process


@pytest.fixture
def edges(router: RouterProcess) -> Iterator[list[WebSocketEdgeProcess]]:
    """Two edges whose client queues hold 64 frames, so a client that stops reading falls behind."""
    started = [WebSocketEdgeProcess(router, ["--queue-messages", "64"]) for _ in range(2)]
    for edge in started:
        edge.start()
    yield started
    for edge in started:
        edge.stop()


def payload(index: int) -> bytes:
    return index.to_bytes(4, "big") + bytes(PAYLOAD - 4)


async def produce(push: zmq.Socket[bytes], count: int, per_tick: int = 25) -> None:
    """``count`` messages at about 2,500 a second, paced by the event loop."""
    for first in range(1, count + 1, per_tick):
        for index in range(first, min(first + per_tick, count + 1)):
            push.send_multipart([TOPIC.encode(), payload(index)])
        await asyncio.sleep(0.01)


async def next_control(ws: ClientConnection, timeout: float = 10.0) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            message = await ws.recv()
            if isinstance(message, str):
                reply: dict[str, Any] = json.loads(message)
                return reply


async def subscribe(ws: ClientConnection, topic: str, resume: tuple[int, int] | None) -> dict[str, Any]:
    request: dict[str, Any] = {"op": "subscribe", "id": 1, "topic": topic}
    if resume is not None:
        request["resume"] = {"epoch": resume[0], "offset": resume[1]}
    await ws.send(json.dumps(request))
    reply = await next_control(ws)
    assert reply["op"] == "subscribed", reply
    return reply


@dataclass
class ResumingClient:
    """Keeps the position of the last message it has, and resumes from it after every reconnect."""

    received: list[int] = field(default_factory=list)
    epoch: int = 0
    offset: int = 0
    resumes: list[str] = field(default_factory=list)

    @property
    def position(self) -> tuple[int, int] | None:
        return (self.epoch, self.offset) if self.resumes else None

    async def session(self, url: str, frames: int, pause_after: int | None = None) -> None:
        """Connect, subscribe (resuming), read up to ``frames`` frames, then drop the connection
        without a word. With ``pause_after``, stop reading for a while after that many frames."""
        ws = await connected_client(url, receive_buffer=8192)
        try:
            reply = await subscribe(ws, TOPIC, self.position)
            self.resumes.append(reply["resume"])
            if reply["resume"] != "ok":
                self.epoch, self.offset = reply["epoch"], reply["offset"]
            for count in range(frames):
                if len(self.received) == MESSAGES:
                    break
                if count == pause_after:
                    await asyncio.sleep(1.0)
                self.take(await ws.recv(decode=False))
        except (ConnectionClosed, TimeoutError):
            pass
        finally:
            ws.transport.abort()

    def take(self, frame: bytes) -> None:
        assert frame[0] != SKIPPED, f"nothing is skipped on a reliable topic: {frame!r}"
        kind, _, _, offset = DATA.unpack_from(frame)
        assert kind == 1
        assert offset == self.offset + 1, f"offset {offset} after {self.offset}"
        self.offset = offset
        self.received.append(int.from_bytes(frame[DATA.size : DATA.size + 4], "big"))


async def test_every_message_once_in_order_across_reconnects_and_a_killed_edge(
    router: RouterProcess, edges: list[WebSocketEdgeProcess], push: zmq.Socket[bytes]
) -> None:
    rng = random.Random(20261127)
    client = ResumingClient()
    await client.session(edges[0].url, frames=0)
    assert client.resumes == ["none"]
    producing = asyncio.create_task(produce(push, MESSAGES))
    deadline = time.monotonic() + 90
    sessions = 0
    while len(client.received) < MESSAGES and time.monotonic() < deadline:
        sessions += 1
        if sessions == 6:
            reading = asyncio.create_task(client.session(edges[0].url, frames=MESSAGES))
            await asyncio.sleep(0.3)
            edges[0].kill()
            await reading
            continue
        edge = edges[sessions % 2] if edges[0].alive else edges[1]
        if sessions == 3:
            await client.session(edge.url, frames=2_000, pause_after=rng.randrange(50, 200))
        else:
            await client.session(edge.url, frames=rng.randrange(1, 1_500))
        await asyncio.sleep(rng.uniform(0, 0.2))
    await producing
    assert not edges[0].alive
    assert client.received == list(range(1, MESSAGES + 1))
    assert sessions >= 6
    assert set(client.resumes[1:]) == {"ok"}


async def test_resume_beyond_the_history_and_after_a_router_restart(
    router: RouterProcess, edges: list[WebSocketEdgeProcess], push: zmq.Socket[bytes]
) -> None:
    ws = await connected_client(edges[0].url)
    first = await subscribe(ws, SMALL_TOPIC, None)
    epoch = first["epoch"]
    push.send_multipart([SMALL_TOPIC.encode(), b"1"])
    frame = await asyncio.wait_for(ws.recv(decode=False), 10)
    assert DATA.unpack_from(frame)[3] == first["offset"] + 1
    seen = first["offset"] + 1
    await ws.close()

    for index in range(2, 52):
        push.send_multipart([SMALL_TOPIC.encode(), b"%d" % index])
    newest = seen + 50
    ws = await connected_client(edges[1].url)
    reply = await position_reached(ws, (epoch, seen), newest)
    assert (reply["resume"], reply["resume_from"]) == ("history_exceeded", newest - SMALL_HISTORY)
    offsets = [DATA.unpack_from(await asyncio.wait_for(ws.recv(decode=False), 10))[3] for _ in range(10)]
    assert offsets == list(range(newest - SMALL_HISTORY + 1, newest + 1))
    await ws.close()

    router.stop()
    router.restart_on_same_ports()
    ws = await connected_client(edges[1].url)
    restarted = await subscribe(ws, SMALL_TOPIC, (epoch, newest))
    assert restarted["resume"] == "epoch_changed"
    assert restarted["epoch"] != epoch
    await ws.close()


async def position_reached(ws: ClientConnection, resume: tuple[int, int], newest: int) -> dict[str, Any]:
    """Subscribe with ``resume`` once the router has routed message ``newest`` (until then,
    unsubscribe and try again)."""
    for attempt in range(100):
        reply = await subscribe(ws, SMALL_TOPIC, resume)
        if reply["offset"] == newest:
            return reply
        await ws.send(json.dumps({"op": "unsubscribe", "id": 2, "topic": SMALL_TOPIC}))
        assert (await next_control(ws))["op"] == "unsubscribed"
        await asyncio.sleep(0.05 * attempt)
    raise AssertionError(f"the router never reached offset {newest}")


async def test_the_example_client_resumes_on_another_edge(
    router: RouterProcess, edges: list[WebSocketEdgeProcess], push: zmq.Socket[bytes]
) -> None:
    count = 1_000
    client = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "examples" / "resuming_client.py"), TOPIC,
        edges[0].url, edges[1].url, "--count", str(count),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert client.stdout is not None
    try:
        lines = [json.loads(await asyncio.wait_for(client.stdout.readline(), 10))]
        assert lines[0] == {"subscribed": TOPIC, "resume": "none", "epoch": lines[0]["epoch"]}
        producing = asyncio.create_task(produce(push, count, per_tick=5))
        await asyncio.sleep(0.8)
        edges[0].kill()
        await producing
        async with asyncio.timeout(60):
            lines += [json.loads(line) async for line in client.stdout]
            assert await client.wait() == 0
    finally:
        if client.returncode is None:
            client.kill()
            await client.wait()
    offsets = [line["offset"] for line in lines if "offset" in line]
    assert offsets == list(range(1, count + 1))
    resumed = [line["resume"] for line in lines if "subscribed" in line]
    assert resumed[0] == "none"
    assert len(resumed) > 1
    assert set(resumed[1:]) == {"ok"}
    dropped = next(i for i, line in enumerate(lines) if "disconnected" in line)
    assert 0 < lines[dropped - 1].get("offset", 0) < count, "the edge was killed mid-stream"
    assert not any("gap" in line or "skipped" in line for line in lines)
