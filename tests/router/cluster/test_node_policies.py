"""Runtime policies shared through Redis by ClusterNode rounds, on a real redis-server: what one
router sets reaches the others, the last one set wins, and an entry no router can read is passed
over, logged."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import msgspec
import pytest
from redis.asyncio import Redis

from router.cluster.config import ClusterSection
from router.cluster.node import ClusterNode
from router.core.policy import DeliveryPolicy
from tests.io.redis_server import RedisServer

Applied = list[dict[str, DeliveryPolicy]]
MakeNode = Callable[[str], ClusterNode]

LATEST = DeliveryPolicy(kind="latest", max_rate=5.0)
CAPPED = DeliveryPolicy(kind="best_effort", max_rate=2.0)


@pytest.fixture
async def nodes(redis_server: RedisServer) -> AsyncIterator[tuple[MakeNode, dict[str, Applied]]]:
    """Makes started nodes on ``redis_server``; each one's handed policies, by router id."""
    section = ClusterSection(url=redis_server.url, shards=4, tick=0.05, timeout=0.5)
    applied: dict[str, Applied] = {}
    made: list[ClusterNode] = []

    def make(router_id: str) -> ClusterNode:
        applied[router_id] = []
        node = ClusterNode(
            section,
            router_id,
            {"pull": "tcp://127.0.0.1:1"},
            lambda changes, shard_map: None,
            apply_policies=applied[router_id].append,
        )
        made.append(node)
        return node

    yield make, applied
    for node in made:
        await node.stop()


async def test_a_policy_set_on_one_router_reaches_another_and_the_last_set_wins(
    nodes: tuple[MakeNode, dict[str, Applied]],
) -> None:
    make, applied = nodes
    a, b = make("a"), make("b")
    await a.start()
    await b.start()
    await a.round()
    await b.round()
    assert applied["b"] == [{}], "the first round hands what Redis holds, even nothing"
    a.share_policy("/p/t", LATEST)
    await a.round()
    await b.round()
    assert applied["b"][-1] == {"/p/t": LATEST}
    b.share_policy("/p/t", CAPPED)
    await b.round()
    await a.round()
    assert applied["a"][-1] == {"/p/t": CAPPED}
    rounds_before = len(applied["a"])
    await a.round()
    assert len(applied["a"]) == rounds_before, "nothing changed, nothing handed"


async def test_an_entry_no_router_can_read_is_passed_over(
    nodes: tuple[MakeNode, dict[str, Applied]], redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    make, applied = nodes
    raw = Redis.from_url(redis_server.url)
    await raw.hset(
        "switchboard:policies", mapping={"/p/bad": b"{not json", "/p/good": msgspec.json.encode(LATEST)}
    )
    await raw.incr("switchboard:policies:version")
    await raw.aclose()
    node = make("a")
    await node.start()
    await node.round()
    assert applied["a"] == [{"/p/good": LATEST}]
    assert "the policy of /p/bad in Redis" in caplog.text
