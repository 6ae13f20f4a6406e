"""The router's demand socket (``[router] demand``, docs/protocol.md 1.10) with a real router: a
producer's SUB socket gets the demand of the topics its prefix matches, at once and at each change;
a flood of subscriptions from an outsider is answered only up to a rate, counted, and the router
goes on serving."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
import zmq

from router.wire import Registered, SubscribeOk
from tests.io.harness import RouterProcess, TestEdge, running

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def router() -> Iterator[RouterProcess]:
    with running(RouterProcess(["--demand", "tcp://127.0.0.1:0"])) as process:
        yield process


@pytest.fixture
def context() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield context
    context.destroy(linger=0)


def demands_received(sock: zmq.Socket[bytes], seconds: float) -> list[tuple[bytes, bytes]]:
    """Every ``[topic, rate]`` the socket gets within ``seconds``."""
    received = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if sock.poll(int(left * 1000)):
            topic, rate = sock.recv_multipart()
            received.append((topic, rate))
    return received


async def test_a_producer_gets_the_demand_of_the_topics_its_prefix_matches(
    router: RouterProcess, context: zmq.Context[zmq.Socket[bytes]]
) -> None:
    async with TestEdge(router.endpoints) as edge:
        assert isinstance(await edge.register("c1"), Registered)
        for topic, rate in (("/d/a", 5.0), ("/d/b", None), ("/e/c", 2.0)):
            assert isinstance(await edge.subscribe("c1", topic, max_rate=rate), SubscribeOk)
        with context.socket(zmq.SUB) as sub:
            sub.subscribe(b"/d/")
            sub.connect(router.endpoints["demand"])
            told = await asyncio.to_thread(demands_received, sub, 1.0)
            assert sorted(told) == [(b"/d/a", b"5"), (b"/d/b", b"inf")]
            await edge.request_unsubscribe("c1", "/d/b")
            await edge.request_unsubscribe("c1", "/e/c")
            assert await asyncio.to_thread(demands_received, sub, 1.0) == [(b"/d/b", b"0")]


async def test_a_flood_of_demand_subscriptions_is_answered_up_to_a_rate_and_counted(
    router: RouterProcess, context: zmq.Context[zmq.Socket[bytes]]
) -> None:
    async with TestEdge(router.endpoints) as edge:
        assert isinstance(await edge.register("c1"), Registered)
        for n in range(50):
            assert isinstance(await edge.subscribe("c1", f"/flood/t{n}", max_rate=1.0), SubscribeOk)
        with context.socket(zmq.XSUB) as flood:
            flood.connect(router.endpoints["demand"])
            for n in range(3000):
                flood.send(b"\x01/flood/" + str(n).encode())
            started = time.monotonic()
            stats = await edge.stats()
            assert time.monotonic() - started < 5, "the router stalled under the flood"

            async def counted() -> bool:
                drops = (await edge.stats())["drops"]
                assert isinstance(drops, dict)
                return bool(drops.get("demand_unanswered", 0) > 0)

            deadline = time.monotonic() + 10
            while not await counted():
                assert time.monotonic() < deadline, f"no demand_unanswered drop: {stats}"
                await asyncio.sleep(0.1)
        assert router.alive
