"""Messages a router holds for another router's shard while they cannot be passed on. No I/O.

In a cluster, a PUSH producer's message may reach a router that does not own its shard. That router
passes it on to the owner; while the shard has no owner (a takeover under way) or the owner's socket
takes nothing (it was just killed), the message is *parked* here instead of dropped, and passed on
once the owner can take it. Each shard's messages stay in arrival order: one that arrives while its
shard has messages parked is parked behind them. Everything is bounded: the count, the bytes, and
the time a message may wait (``max_age``); what does not fit, or waits too long, is handed back to
be dropped and counted.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import Generic, NamedTuple, TypeVar

__all__ = ["Parking"]

T = TypeVar("T")


class _Parked(NamedTuple, Generic[T]):
    at: float
    size: int
    message: T


class Parking(Generic[T]):
    """Parked messages by shard, each shard's in arrival order."""

    def __init__(self, max_messages: int, max_bytes: int, max_age: float) -> None:
        if min(max_messages, max_bytes) < 1 or not max_age > 0:
            raise ValueError("parking bounds must be positive")
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.bytes = 0
        self._count = 0
        self._shards: dict[int, deque[_Parked[T]]] = {}

    def __len__(self) -> int:
        return self._count

    def holds(self, shard: int) -> bool:
        """Whether ``shard`` has messages parked (a new one must then wait behind them)."""
        return shard in self._shards

    def shards(self) -> list[int]:
        return list(self._shards)

    def park(self, shard: int, message: T, size: int, now: float) -> bool:
        """Hold ``message`` (``size`` bytes) for ``shard``; ``False`` when that would pass a bound."""
        if self._count >= self.max_messages or self.bytes + size > self.max_bytes:
            return False
        self._shards.setdefault(shard, deque()).append(_Parked(now, size, message))
        self._count += 1
        self.bytes += size
        return True

    def pass_on(self, shard: int, send: Callable[[T], bool]) -> int:
        """Hand ``shard``'s messages to ``send`` in order, until it returns ``False`` (that message
        stays parked, first); returns how many went."""
        queue = self._shards.get(shard)
        sent = 0
        while queue:
            if not send(queue[0].message):
                break
            self._forget(queue.popleft())
            sent += 1
        if not queue:
            self._shards.pop(shard, None)
        return sent

    def expire(self, now: float) -> Iterator[tuple[int, T]]:
        """The messages parked for longer than ``max_age`` at ``now``, as (shard, message), each
        shard's in order; forgotten here."""
        oldest = now - self.max_age
        for shard, queue in list(self._shards.items()):
            while queue and queue[0].at < oldest:
                parked = queue.popleft()
                self._forget(parked)
                yield shard, parked.message
            if not queue:
                del self._shards[shard]

    def _forget(self, parked: _Parked[T]) -> None:
        self._count -= 1
        self.bytes -= parked.size
