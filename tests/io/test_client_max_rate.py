"""A client's own ``max_rate`` (``docs/protocol.md`` 4.2) through the real router and WebSocket edge:
a raw pyzmq PUSH producer, and two ``websockets`` clients of one topic, one capped and one not."""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Iterator

import pytest
import zmq

from tests.io.harness import RouterProcess, WebSocketEdgeProcess, running
from tests.io.test_websocket_edge import Client, flowing, open_client

pytestmark = pytest.mark.timeout(90)

TOPIC = "/ws/capped"
DATA = struct.Struct("!BBIQ")
SKIPPED = struct.Struct("!BBIQQI")
RATE_LIMITED = 0x02
MAX_RATE = 2.0
SENT = 40


@pytest.fixture
def edge(router: RouterProcess) -> Iterator[WebSocketEdgeProcess]:
    with running(WebSocketEdgeProcess(router)) as process:
        yield process


async def frames_until(
    client: Client, last_payload: bytes
) -> tuple[list[int], list[tuple[int, int, int, int]]]:
    """Read binary frames until a data frame carries ``last_payload``. Returns the data frames'
    offsets and the skipped frames' (reasons, first, last, count)."""
    offsets: list[int] = []
    skips: list[tuple[int, int, int, int]] = []
    async with asyncio.timeout(10):
        while True:
            frame = await client.ws.recv()
            if isinstance(frame, str):
                continue
            if frame[0] == 0x02:
                _, reasons, _, first, last, count = SKIPPED.unpack(frame)
                skips.append((reasons, first, last, count))
            elif frame[0] == 0x01:
                offsets.append(DATA.unpack_from(frame)[3])
                if frame[DATA.size :] == last_payload:
                    return offsets, skips


def told(offsets: list[int], skips: list[tuple[int, int, int, int]]) -> list[int]:
    """Every offset a data frame or a skipped frame accounts for, sorted."""
    covered = list(offsets)
    for _, first, last, count in skips:
        assert count == last - first + 1, "the edge had every message of the range"
        covered += range(first, last + 1)
    return sorted(covered)


async def test_a_capped_client_gets_its_rate_and_the_rest_told_as_skipped(
    edge: WebSocketEdgeProcess, push: zmq.Socket[bytes], clients: list[Client]
) -> None:
    free = await open_client(edge)
    capped = await open_client(edge)
    clients += [free, capped]
    assert (await free.request("subscribe", topic=TOPIC))["op"] == "subscribed"
    await flowing(free, push, TOPIC)
    subscribed = await capped.request("subscribe", topic=TOPIC, max_rate=MAX_RATE)
    assert subscribed["op"] == "subscribed", subscribed
    start = subscribed["offset"]

    began = time.monotonic()
    for index in range(SENT):
        push.send_multipart([TOPIC.encode(), b"%d" % index])
        await asyncio.sleep(1 / SENT)
    elapsed = time.monotonic() - began
    sent_by_free = [(await free.data())[1] for _ in range(SENT)]
    assert sent_by_free == list(range(start + 1, start + SENT + 1)), "the uncapped client gets all"

    ending = asyncio.create_task(frames_until(capped, b"end"))
    while not ending.done():
        push.send_multipart([TOPIC.encode(), b"end"])
        await asyncio.wait({ending}, timeout=0.1)
    offsets, skips = ending.result()

    within = [offset for offset in offsets if offset <= start + SENT]
    assert 2 <= len(within) <= MAX_RATE * (elapsed + 0.5) + 2, (within, elapsed)
    assert within[:2] == [start + 1, start + 2], "the bucket starts full: a burst of 2"
    assert {reasons for reasons, *_ in skips} == {RATE_LIMITED}
    assert told(offsets, skips) == list(range(start + 1, offsets[-1] + 1)), "every offset accounted for"
