"""Per-client rate limits and priorities over the real router and WebSocket edge, measured over a
bounded run with a client written from ``docs/protocol.md``."""

from __future__ import annotations

import asyncio
import json
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from websockets.asyncio.client import ClientConnection

from tests.io.harness import RouterProcess, WebSocketEdgeProcess, configured_router, connected_client
from tests.io.metrics_scrape import scrape

pytestmark = pytest.mark.timeout(90)

RATE = 50
CONFIG = f"""
[[topics.declare]]
pattern = "/limited/*"

[topics.declare.policy]
max_rate = {RATE}

[[topics.declare]]
pattern = "/urgent/*"

[topics.declare.policy]
priority = 10

[[topics.declare]]
pattern = "/bulk/*"

[topics.declare.policy]
priority = 0
queue_max_messages = 4096
queue_max_bytes = 67108864
"""
EDGE_QUEUE = ["--queue-messages", "4096", "--queue-bytes", "67108864"]
DATA = struct.Struct("!BBIQ")
SKIPPED = struct.Struct("!BBIQQI")
RATE_LIMITED = 0x02


@pytest.fixture
def router(tmp_path: Path) -> Iterator[RouterProcess]:
    with configured_router(tmp_path, CONFIG) as process:
        yield process


@pytest.fixture
def edge(router: RouterProcess) -> Iterator[WebSocketEdgeProcess]:
    process = WebSocketEdgeProcess(router, EDGE_QUEUE)
    process.start()
    yield process
    process.stop()


async def subscribe(ws: ClientConnection, request_id: int, topic: str) -> dict[str, Any]:
    await ws.send(json.dumps({"op": "subscribe", "id": request_id, "topic": topic}))
    reply: dict[str, Any] = json.loads(await ws.recv())
    assert reply["op"] == "subscribed", reply
    return reply


async def first_frame(ws: ClientConnection, push: zmq.Socket[bytes], topic: str) -> int:
    """Send probes until one arrives (the edge's data subscription takes a moment); its offset."""
    for _ in range(100):
        push.send_multipart([topic.encode(), b"probe"])
        try:
            frame = await asyncio.wait_for(ws.recv(decode=False), 0.1)
        except TimeoutError:
            continue
        assert frame[0] == 1
        return int(DATA.unpack_from(frame)[3])
    raise AssertionError("no probe arrived")


async def test_max_rate_caps_each_client_and_accounts_for_every_message(
    edge: WebSocketEdgeProcess, push: zmq.Socket[bytes]
) -> None:
    topic = "/limited/telemetry"
    ws = await connected_client(edge.url)
    await subscribe(ws, 1, topic)
    await asyncio.sleep(1.0)
    start_offset = await first_frame(ws, push, topic)
    await asyncio.sleep(1.0)
    sent = 500
    started = time.monotonic()
    for _ in range(sent // 5):
        for _ in range(5):
            push.send_multipart([topic.encode(), b"x" * 100])
        await asyncio.sleep(0.01)
    elapsed = time.monotonic() - started
    await asyncio.sleep(1.5)
    push.send_multipart([topic.encode(), b"last"])
    last_offset = start_offset + sent + 1

    delivered: list[int] = []
    skipped: list[tuple[int, int, int]] = []
    while not delivered or delivered[-1] < last_offset:
        frame = await asyncio.wait_for(ws.recv(decode=False), 10)
        if frame[0] == 1:
            delivered.append(DATA.unpack_from(frame)[3])
        else:
            _, reasons, _, first, last, count = SKIPPED.unpack(frame)
            assert reasons == RATE_LIMITED
            skipped.append((first, last, count))
    await ws.close()

    during = [offset for offset in delivered if offset < last_offset]
    assert RATE <= len(during) <= RATE + RATE * (elapsed + 0.5), (len(during), elapsed)
    covered = sorted(delivered + [o for first, last, _ in skipped for o in range(first, last + 1)])
    assert covered == list(range(start_offset + 1, last_offset + 1)), "every message sent or skipped, once"
    assert sum(count for _, _, count in skipped) == sent - len(during)


async def build_a_backlog(edge: WebSocketEdgeProcess, push: zmq.Socket[bytes], at_least: int) -> int:
    """Push 16 KiB bulk frames until the edge holds ``at_least`` of them for the stalled client
    (kernel buffers take the first few MiB, by an amount that varies between machines); how many
    were pushed."""
    pushed = 0
    for _ in range(40):
        for _ in range(50):
            push.send_multipart([b"/bulk/points", bytes(16_384)])
        pushed += 50
        await asyncio.sleep(0.2)
        if (await scrape(edge.address)).labelled("switchboard_edge_queued_messages") >= at_least:
            return pushed
    raise AssertionError(f"the edge never held {at_least} frames after {pushed} were pushed")


async def test_a_higher_priority_topic_overtakes_a_backlog(
    edge: WebSocketEdgeProcess, push: zmq.Socket[bytes]
) -> None:
    ws = await connected_client(edge.url, receive_buffer=8192)
    channels = {}
    for request_id, topic in enumerate(("/bulk/points", "/urgent/events"), start=1):
        channels[(await subscribe(ws, request_id, topic))["channel"]] = topic
    await first_frame(ws, push, "/bulk/points")
    await first_frame(ws, push, "/urgent/events")

    bulk, urgent = await build_a_backlog(edge, push, at_least=100), 20
    for _ in range(urgent):
        push.send_multipart([b"/urgent/events", bytes(4_096)])
    await asyncio.sleep(0.5)

    order: list[str] = []
    while order.count("/urgent/events") < urgent or order.count("/bulk/points") < bulk:
        frame = await asyncio.wait_for(ws.recv(decode=False), 10)
        assert frame[0] == 1, "the queue is large enough for the whole backlog"
        order.append(channels[DATA.unpack_from(frame)[2]])
    await ws.close()

    first_urgent = order.index("/urgent/events")
    assert order[first_urgent : first_urgent + urgent] == ["/urgent/events"] * urgent, (
        "80 KiB of urgent frames go in one run: topics of equal priority would share by 16 KiB turns"
    )
    assert order[first_urgent + urgent :], "bulk frames were still queued when the urgent ones came"
