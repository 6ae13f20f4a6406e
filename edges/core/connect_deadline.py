"""New clients that must send ``connect`` before a deadline. No I/O.

A WebSocket client opens its connection, then has ``connect_timeout`` seconds to send ``connect``;
an idle connection would otherwise hold a place under the edge's connection limits for as long as it
liked. A WebRTC client connects with its offer, so it never waits here.
"""

from __future__ import annotations

from collections import deque

__all__ = ["ConnectDeadlines"]


class ConnectDeadlines:
    """Clients in the order they opened, each with the time by which it must send ``connect``.

    One timeout applies to all, so opening order is deadline order and the earliest is always first.
    A client that connected or left in time stays listed until its deadline: :meth:`expired` hands
    it out like the others, and the caller skips it.
    """

    def __init__(self, timeout: float) -> None:
        if not timeout > 0:
            raise ValueError("the connect timeout must be positive")
        self.timeout = timeout
        self._pending: deque[tuple[float, str]] = deque()

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, client_id: str, now: float) -> None:
        """``client_id`` opened at ``now`` (times from one monotonic clock, never going back)."""
        self._pending.append((now + self.timeout, client_id))

    def expired(self, now: float) -> list[str]:
        """The clients whose deadline is ``now`` or earlier, in opening order; forgotten here."""
        pending = self._pending
        out = []
        while pending and pending[0][0] <= now:
            out.append(pending.popleft()[1])
        return out

    def next_due(self) -> float | None:
        """The earliest deadline, or ``None`` when no client is listed."""
        return self._pending[0][0] if self._pending else None
