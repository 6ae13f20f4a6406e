"""Things that must happen before a deadline, all with one timeout. No I/O.

The hub keeps two: a new WebSocket client has ``connect_timeout`` seconds to send ``connect`` (an
idle connection would otherwise hold a place under the edge's connection limits for as long as it
liked; a WebRTC client connects with its offer, so it never waits there), and a client's ``connect``
or ``subscribe`` has ``request_timeout`` seconds to be answered by a router (no router may be up,
or, in a cluster, the topic's shard may have no owner), so no client waits forever.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

__all__ = ["Deadlines"]

T = TypeVar("T")


class Deadlines(Generic[T]):
    """Items in the order they were added, each with the time by which it must be done.

    One timeout applies to all, so adding order is deadline order and the earliest is always first.
    An item done in time stays listed until its deadline: :meth:`expired` hands it out like the
    others, and the caller skips it.
    """

    def __init__(self, timeout: float, what: str = "the timeout") -> None:
        if not timeout > 0:
            raise ValueError(f"{what} must be positive")
        self.timeout = timeout
        self._pending: deque[tuple[float, T]] = deque()

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, item: T, now: float) -> None:
        """``item`` started at ``now`` (times from one monotonic clock, never going back)."""
        self._pending.append((now + self.timeout, item))

    def expired(self, now: float) -> list[T]:
        """The items whose deadline is ``now`` or earlier, in adding order; forgotten here."""
        pending = self._pending
        out = []
        while pending and pending[0][0] <= now:
            out.append(pending.popleft()[1])
        return out

    def next_due(self) -> float | None:
        """The earliest deadline, or ``None`` when nothing is listed."""
        return self._pending[0][0] if self._pending else None
