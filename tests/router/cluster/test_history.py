"""ClusterHistory against a store that answers when the test says: a shard handed over while one of
its batches is being written, by this router (what waits is written first, under the lease still
held) or by Redis (what waits is given up)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import cast

from router.cluster.history import ClusterHistory, Pending
from router.cluster.store import Append, AppendResult, ClusterStore
from router.core import ConnectionManager, DeliveryPolicy, TopicRegistry, TopicSpec
from router.core.shards import ShardLeases

TOPIC = "/reliable/a"


class HeldStore:
    """Writes each batch only once :attr:`release` is set."""

    router_id = "r1"

    def __init__(self) -> None:
        self.writing = asyncio.Event()
        self.release = asyncio.Event()
        self.written: list[list[int]] = []
        self.tokens: list[int] = []
        self.wrote = asyncio.Event()

    async def epoch(self, topic: str, shard: int, proposed: int) -> int:
        return proposed

    async def append(self, shard: int, router_id: str, token: int, batch: Sequence[Append]) -> AppendResult:
        self.writing.set()
        await self.release.wait()
        self.written.append([entry.offset for append in batch for entry in append.entries])
        self.tokens.append(token)
        self.wrote.set()
        return AppendResult(accepted=True, skipped=0)


def routed(manager: ConnectionManager) -> Pending:
    """The next message of the topic, placed in its sequence by the manager as the router does."""
    route = manager.route_wire(TOPIC.encode(), 2)
    return Pending(TOPIC, TOPIC.encode(), route.epoch, route.offset, b"", b"m%d" % route.offset)


class Writing:
    """One reliable topic in shard 0, served under token 7, its history writer running."""

    def __init__(self) -> None:
        self.manager = ConnectionManager(
            TopicRegistry([TopicSpec(pattern=TOPIC, policy=DeliveryPolicy(kind="reliable"))])
        )
        self.manager.serve_shards(1)
        self.manager.shard_gained(0)
        self.leases = ShardLeases("r1", shards=1, lease_time=60.0)
        self.leases.acquired(0, token=7, asked_at=time.monotonic())
        self.store = HeldStore()
        self.history = ClusterHistory(
            self.manager,
            self.leases,
            lambda: cast(ClusterStore, self.store),
            lambda *published: None,
            max_pending_messages=100,
            max_pending_bytes=1 << 20,
        )
        self.writer = asyncio.create_task(self.history.run())

    def add(self, count: int) -> None:
        for _ in range(count):
            self.history.add(routed(self.manager))

    def dropped(self) -> dict[str, int]:
        return dict(self.manager.get_connection_stats().drops)

    async def one_on_its_way_then_handed_over(self, waiting: int) -> None:
        """A batch of one message on its way to Redis, ``waiting`` more behind it, and the shard
        handed over (this router serves it no more)."""
        self.add(1)
        await asyncio.wait_for(self.store.writing.wait(), 5)
        self.add(waiting)
        self.leases.drop_all()

    async def __aenter__(self) -> Writing:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.writer


async def test_a_shard_taken_while_its_batch_is_written_leaves_the_writer_running() -> None:
    async with Writing() as writing:
        store, history = writing.store, writing.history
        writing.add(1)
        await asyncio.wait_for(store.writing.wait(), 5)
        history.forget_shard(0)
        store.release.set()
        await asyncio.wait_for(store.wrote.wait(), 5)
        store.wrote.clear()
        await asyncio.sleep(0)
        assert not writing.writer.done(), writing.writer.exception()
        writing.add(1)
        await asyncio.wait_for(store.wrote.wait(), 5)
        assert store.written == [[1], [2]]
        assert history.pending_messages == 0


async def test_a_shard_handed_over_writes_what_waits_after_the_batch_on_its_way() -> None:
    async with Writing() as writing:
        store = writing.store
        await writing.one_on_its_way_then_handed_over(waiting=2)
        handing = asyncio.create_task(writing.history.hand_over(0, 7, within=5.0))
        await asyncio.sleep(0.05)
        assert not handing.done(), "the hand-over did not wait for the batch on its way"
        store.release.set()
        await asyncio.wait_for(handing, 5)
        assert store.written == [[1], [2, 3]]
        assert store.tokens == [7, 7]
        assert writing.history.pending_messages == 0
        assert writing.dropped() == {}


async def test_a_hand_over_that_redis_does_not_answer_in_time_gives_up_what_waits() -> None:
    async with Writing() as writing:
        await writing.one_on_its_way_then_handed_over(waiting=2)
        await asyncio.wait_for(writing.history.hand_over(0, 7, within=0.1), 5)
        assert writing.dropped() == {"not_owner": 2}
        assert writing.history.pending_messages == 1, "only the batch on its way may still be written"
