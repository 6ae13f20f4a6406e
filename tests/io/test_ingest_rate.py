"""A topic's ``ingest_max_rate`` on the real router process: a flood from a PUSH producer comes out
as one burst plus the rate, the rest is counted as ``rate_limited``, and offsets have no hole."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from router.wire import Recover, Recovered, SubscribeOk
from tests.io.harness import RouterProcess, TestEdge, configured_router

pytestmark = pytest.mark.timeout(60)

RATE = 50
SENT = 2_000
PAUSES = 5
PAUSE = 0.1
"""The flood goes in PAUSES + 1 bursts with PAUSE seconds between them, so tokens come back."""
TOPIC = "/capped/readings"
PROBE = "/probe"
CONFIG = f"""
[[topics.declare]]
pattern = "/capped/*"

[topics.declare.policy]
kind = "reliable"
ingest_max_rate = {RATE}
"""


@pytest.fixture
def router(tmp_path: Path) -> Iterator[RouterProcess]:
    with configured_router(tmp_path, CONFIG) as process:
        yield process


async def wait_for_probe(edge: TestEdge, push: zmq.Socket[bytes]) -> None:
    """Probe until a message reaches the edge: its SUB then holds every subscription made before."""
    for _ in range(200):
        push.send_multipart([PROBE.encode(), b"probe"])
        try:
            await edge.next_message(timeout=0.05)
            break
        except TimeoutError:
            continue
    else:
        raise AssertionError("the edge's subscriptions never took effect")
    edge.drain()


async def flood(push: zmq.Socket[bytes]) -> None:
    """SENT messages on TOPIC as fast as the socket takes them, with short pauses, then an end
    marker on PROBE that comes after all of them."""
    per_burst = SENT // (PAUSES + 1)
    for index in range(SENT):
        push.send_multipart([TOPIC.encode(), index.to_bytes(4, "big")])
        if index % per_burst == per_burst - 1 and index < SENT - 1:
            await asyncio.sleep(PAUSE)
    push.send_multipart([PROBE.encode(), b"end"])


async def receive_until_end(edge: TestEdge) -> list[int]:
    """The offsets of TOPIC's messages that reach the edge before the end marker."""
    offsets: list[int] = []
    while True:
        meta, payload = await edge.next_message()
        if payload == b"end":
            return offsets
        if meta.topic == TOPIC.encode():
            offsets.append(meta.offset)


async def test_a_flood_is_cut_to_the_burst_plus_the_rate_and_the_rest_counted(
    router: RouterProcess, push: zmq.Socket[bytes]
) -> None:
    async with TestEdge(router.endpoints) as edge:
        await edge.register("c")
        subscribed = await edge.subscribe("c", TOPIC)
        assert isinstance(subscribed, SubscribeOk), subscribed
        assert subscribed.policy.ingest_max_rate == RATE
        assert isinstance(await edge.subscribe("c", PROBE), SubscribeOk)
        await wait_for_probe(edge, push)

        started = time.monotonic()
        offsets, _ = await asyncio.gather(receive_until_end(edge), flood(push))
        elapsed = time.monotonic() - started

        assert RATE <= len(offsets) <= RATE + RATE * elapsed + 5, (len(offsets), elapsed)
        assert offsets == list(range(1, len(offsets) + 1)), "a dropped message took an offset"
        stats = await edge.stats()
        drops = stats["drops"]
        assert isinstance(drops, dict)
        assert drops == {"rate_limited": SENT - len(offsets)}

        request = Recover(
            request_id=edge.link.next_request_id(), topic=TOPIC, epoch=subscribed.epoch, from_offset=0
        )
        recovered = await edge.request(request)
        assert isinstance(recovered, Recovered), recovered
        assert [offset for offset, _, _ in recovered.messages] == offsets
