"""ClusterHistory against a store that answers when the test says: a shard handed over while one of
its batches is being written."""

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
        self.wrote = asyncio.Event()

    async def epoch(self, topic: str, shard: int, proposed: int) -> int:
        return proposed

    async def append(self, shard: int, router_id: str, token: int, batch: Sequence[Append]) -> AppendResult:
        self.writing.set()
        await self.release.wait()
        self.written.append([entry.offset for append in batch for entry in append.entries])
        self.wrote.set()
        return AppendResult(accepted=True, skipped=0)


def routed(manager: ConnectionManager) -> Pending:
    """The next message of the topic, placed in its sequence by the manager as the router does."""
    route = manager.route_wire(TOPIC.encode(), 2)
    return Pending(TOPIC, TOPIC.encode(), route.epoch, route.offset, b"", b"m%d" % route.offset)


async def test_a_shard_handed_over_while_its_batch_is_written_leaves_the_writer_running() -> None:
    manager = ConnectionManager(
        TopicRegistry([TopicSpec(pattern=TOPIC, policy=DeliveryPolicy(kind="reliable"))])
    )
    manager.serve_shards(1)
    manager.shard_gained(0)
    leases = ShardLeases("r1", shards=1, lease_time=60.0)
    leases.acquired(0, token=7, asked_at=time.monotonic())
    store = HeldStore()
    history = ClusterHistory(
        manager,
        leases,
        lambda: cast(ClusterStore, store),
        lambda *published: None,
        max_pending_messages=100,
        max_pending_bytes=1 << 20,
    )
    writer = asyncio.create_task(history.run())
    try:
        history.add(routed(manager))
        await asyncio.wait_for(store.writing.wait(), 5)
        history.forget_shard(0)
        store.release.set()
        await asyncio.wait_for(store.wrote.wait(), 5)
        store.wrote.clear()
        await asyncio.sleep(0)
        assert not writer.done(), writer.exception()
        history.add(routed(manager))
        await asyncio.wait_for(store.wrote.wait(), 5)
        assert store.written == [[1], [2]]
        assert history.pending_messages == 0
    finally:
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer
