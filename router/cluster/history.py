"""Reliable topics in cluster mode: durable in Redis before any client sees them.

A message of a reliable topic waits here after the manager placed it in its sequence. Messages are
written in batches, one fenced call per shard (:meth:`ClusterStore.append`), and only a batch Redis
accepted under the shard's current token is recorded in the router's memory and published. So a
router that lost its lease writes nothing, and publishes nothing of what it could not write.

When a router takes a shard, :meth:`ClusterHistory.load` reads each of its reliable topics' epoch,
last offset and newest messages, and the manager continues the same sequence.

What waits is bounded (``[cluster] max_pending_messages`` and ``max_pending_bytes``): while Redis
is unavailable, or the shard is degraded, messages wait; past the bound, new ones are dropped and
counted as ``history_unavailable``. Their offsets were taken, so the clients see a gap, which their
edges try to refill and, failing that, report as skipped: no loss is silent.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

from router.cluster.store import Append, ClusterStore, StoreUnavailable
from router.core import ConnectionManager, HistoryEntry
from router.core.errors import RefusedError
from router.core.shards import ShardLeases
from router.logs import ThrottledLog

log = logging.getLogger("switchboard.router")

BATCH_MESSAGES = 1000
BATCH_BYTES = 4 * 1024 * 1024
MAX_REGISTERED = 100_000
"""Topics whose epoch is known to be in Redis; past it the set starts again (registering twice
is harmless)."""
RETRY_AFTER = 0.05
"""Seconds before a write that found Redis unavailable is tried again."""
HAND_OVER_POLL = 0.005
"""Seconds between two looks at a shard handed over while a batch of it is on its way to Redis."""

Publish = Callable[[bytes, int, int, bytes, bytes], None]
"""Sends one message to the edges: ``(raw topic, epoch, offset, header, payload)``."""


class Pending(NamedTuple):
    topic: str
    raw_topic: bytes
    epoch: int
    offset: int
    header: bytes
    payload: bytes
    dropped_until: int = 0
    """Not 0: no message but a mark that offsets ``offset`` to ``dropped_until`` were dropped
    (past the bound), kept in order with the others so the history breaks exactly there."""


class Loaded(NamedTuple):
    """A reliable topic's sequence as the previous owner left it in Redis."""

    topic: str
    epoch: int
    last_offset: int
    entries: list[HistoryEntry]


class ClusterHistory:
    """Writes reliable messages to Redis before publishing them; loads a taken shard's topics."""

    def __init__(
        self,
        manager: ConnectionManager,
        leases: ShardLeases,
        store: Callable[[], ClusterStore],
        publish: Publish,
        *,
        max_pending_messages: int,
        max_pending_bytes: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.manager = manager
        self.leases = leases
        self._store = store
        self._publish = publish
        self.max_pending_messages = max_pending_messages
        self.max_pending_bytes = max_pending_bytes
        self._clock = clock
        self._pending: dict[int, deque[Pending]] = {}
        self._writing: set[int] = set()
        """Shards with a batch on its way to Redis."""
        self.pending_messages = 0
        self.pending_bytes = 0
        self.written = 0
        self._registered: set[tuple[str, int]] = set()
        """``(topic, epoch)`` whose epoch is in Redis already; cleared when Redis was unavailable,
        since it may have restarted without its data."""
        self._wake = asyncio.Event()
        self._log = ThrottledLog(log)

    # ------------------------------------------------------------ ingest side

    def add(self, message: Pending) -> None:
        """Queue a routed message of a reliable topic (the manager defers its recording); past
        the bound, drop it, counted, and mark the drop in its place."""
        shard = self.manager.defer_record(message.topic)
        if shard is None:
            self.manager.count_drop("not_owner")
            return
        waiting = self._pending.setdefault(shard, deque())
        size = len(message.header) + len(message.payload)
        full = self.pending_messages >= self.max_pending_messages
        if full or self.pending_bytes + size > self.max_pending_bytes:
            self._mark_dropped(waiting, message)
            return
        waiting.append(message)
        self.pending_messages += 1
        self.pending_bytes += size
        self._wake.set()

    def _mark_dropped(self, waiting: deque[Pending], message: Pending) -> None:
        self.manager.count_drop("history_unavailable")
        self._log.warning(
            "history_unavailable",
            "reliable messages wait for Redis past [cluster] max_pending_*: dropping %s offset %d",
            message.topic,
            message.offset,
            now=self._clock(),
        )
        tail = waiting[-1] if waiting else None
        if tail is not None and tail.topic == message.topic and tail.dropped_until == message.offset - 1:
            waiting[-1] = tail._replace(dropped_until=message.offset)
        else:
            waiting.append(message._replace(header=b"", payload=b"", dropped_until=message.offset))

    async def hand_over(self, shard: int, token: int, within: float) -> None:
        """Write what waits for a shard this router hands over, under its lease's ``token`` (still
        valid in Redis until it is released), so that the next owner continues after it; what
        cannot be written ``within`` seconds is given up (:meth:`forget_shard`)."""
        deadline = self._clock() + within
        try:
            while shard in self._pending and self._clock() < deadline:
                if shard in self._writing:
                    await asyncio.sleep(HAND_OVER_POLL)
                elif not await self._write(shard, token):
                    break
        except StoreUnavailable as error:
            self._log.warning("redis-history", "cluster history: %s", error, now=self._clock())
        self.forget_shard(shard)

    def forget_shard(self, shard: int) -> None:
        """The shard went to another router: what waits for it will never be written here."""
        waiting = list(self._pending.pop(shard, deque()))
        self._give_up(waiting, "not_owner")

    def wake(self) -> None:
        """Try the waiting messages again now (a shard was gained back)."""
        self._wake.set()

    # ------------------------------------------------------------ writing

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while await self._flush_once():
                pass

    async def _flush_once(self) -> bool:
        """Write one batch of each shard that can be written; whether more could go at once. A
        shard with no token now (degraded) keeps its messages until it is served again or lost
        (:meth:`forget_shard`)."""
        more = False
        for shard in list(self._pending):
            token = self.leases.token(shard, self._clock())
            if token is None:
                continue
            try:
                more |= await self._write(shard, token)
            except StoreUnavailable as error:
                self._log.warning("redis-history", "cluster history: %s", error, now=self._clock())
                self._registered.clear()
                await asyncio.sleep(RETRY_AFTER)
                self._wake.set()
                return False
        return more

    async def _write(self, shard: int, token: int) -> bool:
        waiting = self._pending[shard]
        batch = _take_batch(waiting)
        appends = self._appends(batch)
        accepted = True
        if appends:
            store = self._store()
            self._writing.add(shard)
            try:
                await self._register_epochs(store, shard, batch)
                accepted = (await store.append(shard, store.router_id, token, appends)).accepted
            except StoreUnavailable:
                waiting.extendleft(reversed(batch))
                raise
            finally:
                self._writing.discard(shard)
        if not waiting and self._pending.get(shard) is waiting:
            del self._pending[shard]
        if not accepted:
            log.warning("cluster history: %d messages of shard %d fenced off", len(batch), shard)
            self._give_up(batch, "fenced")
            return False
        for message in batch:
            self._took(message)
        self._deliver(batch)
        return bool(waiting)

    def _give_up(self, messages: list[Pending], reason: str) -> None:
        """Messages that will never be written here: dropped, counted, the history broken there."""
        for message in messages:
            self._took(message)
            if not message.dropped_until:
                self.manager.count_drop(reason)
            for offset in range(message.offset, max(message.offset, message.dropped_until) + 1):
                self.manager.drop_deferred(message.topic, offset)

    async def _register_epochs(self, store: ClusterStore, shard: int, batch: list[Pending]) -> None:
        if len(self._registered) > MAX_REGISTERED:
            self._registered.clear()
        for topic, epoch in {(m.topic, m.epoch) for m in batch} - self._registered:
            kept = await store.epoch(topic, shard, epoch)
            if kept != epoch:
                self.manager.count_drop("epoch_conflict")
                log.error("cluster history: %s has epoch %d in Redis, %d here", topic, kept, epoch)
            self._registered.add((topic, epoch))

    def _appends(self, batch: list[Pending]) -> list[Append]:
        by_topic: dict[str, list[HistoryEntry]] = {}
        for message in batch:
            if message.dropped_until:
                continue
            entry = HistoryEntry(message.offset, message.header, message.payload)
            by_topic.setdefault(message.topic, []).append(entry)
        appends = []
        for topic, entries in by_topic.items():
            limits = self.manager.history_limits(topic)
            most = limits.max_messages if limits is not None else len(entries)
            appends.append(Append(topic, entries, max(most, 1)))
        return appends

    def _deliver(self, batch: list[Pending]) -> None:
        now = self._clock()
        for message in batch:
            if message.dropped_until:
                for offset in range(message.offset, message.dropped_until + 1):
                    self.manager.drop_deferred(message.topic, offset)
                continue
            self.written += 1
            self.manager.record_deferred(message.topic, message.offset, message.header, message.payload, now)
            if self.manager.get_clients_for_topic(message.topic):
                self._publish(
                    message.raw_topic, message.epoch, message.offset, message.header, message.payload
                )

    def _took(self, message: Pending) -> None:
        if not message.dropped_until:
            self.pending_messages -= 1
            self.pending_bytes -= len(message.header) + len(message.payload)

    # ------------------------------------------------------------ taking a shard over

    async def load(self, shard: int) -> list[Loaded]:
        """The reliable topics of ``shard`` as Redis holds them. Raises :class:`StoreUnavailable`."""
        store = self._store()
        loaded = []
        for topic in await store.shard_topics(shard):
            epoch = await store.epoch(topic, shard, secrets.randbits(32) or 1)
            last = await store.last_offset(topic)
            limits = self.manager.history_limits(topic)
            most = limits.max_messages if limits is not None else 0
            entries = await store.read(topic, max(0, last - most), most) if most else []
            loaded.append(Loaded(topic, epoch, last, entries))
            self._registered.add((topic, epoch))
        return loaded

    def adopt(self, loaded: list[Loaded]) -> None:
        """Continue each loaded topic's sequence (right after the shard is served here)."""
        now = self._clock()
        for topic in loaded:
            try:
                self.manager.adopt_topic(topic.topic, topic.epoch, topic.last_offset, topic.entries, now)
            except RefusedError as refused:
                log.warning("cluster history: %s left as it is in Redis: %s", topic.topic, refused)


def _take_batch(waiting: deque[Pending]) -> list[Pending]:
    batch: list[Pending] = []
    size = 0
    while waiting and len(batch) < BATCH_MESSAGES and size < BATCH_BYTES:
        message = waiting.popleft()
        batch.append(message)
        size += len(message.header) + len(message.payload)
    return batch
