"""A topic's history: its newest messages, kept so an edge can refill a gap or a client resume.

No I/O and no clock: every call that depends on age takes ``now``. The history is always one
unbroken run of offsets: it holds every message after :attr:`TopicHistory.start` up to
:attr:`TopicHistory.last`, and nothing else. Bounds (count, bytes, age) and evictions only ever
move ``start`` forward, so a read either returns every message asked for, or says that the history
no longer reaches back that far (:class:`Missing`). It never returns part of a range silently.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable
from typing import Final, NamedTuple

__all__ = [
    "ENTRY_OVERHEAD",
    "MAX_ENTRY_BYTES",
    "RECOVER_BATCH_BYTES",
    "HistoryEntry",
    "HistoryLimits",
    "HistoryTotal",
    "Missing",
    "TopicHistory",
    "Window",
    "entry_size",
]

MAX_ENTRY_BYTES: Final = 64 * 1024 * 1024
"""The largest message (header + payload) a history keeps, so that one fits in a recovery reply."""

ENTRY_OVERHEAD: Final = 32
"""What one message costs a bounded read beyond its header and payload (its share of the reply's
encoding), so that a read of many empty messages is bounded too."""

RECOVER_BATCH_BYTES: Final = 1024 * 1024
"""The default budget of one read: what a single recovery reply carries at most."""


class HistoryLimits(NamedTuple):
    """Bounds on one topic's history. Every one is at least 1: a history is always bounded."""

    max_messages: int
    max_bytes: int
    max_age: float


class HistoryEntry(NamedTuple):
    """One message as the producer sent it, at its place in the topic's sequence."""

    offset: int
    header: bytes
    payload: bytes


class Window(NamedTuple):
    """The messages of a read, in order. ``more``: messages of the range remain after the last one
    (the read's byte budget was reached); read again after ``entries[-1].offset``."""

    entries: list[HistoryEntry]
    more: bool


class Missing(NamedTuple):
    """The history no longer reaches back to the offset asked for.

    ``start``: the oldest position it can still answer, i.e. the smallest ``after`` a read accepts.
    """

    start: int


class HistoryTotal:
    """The bytes that a group of histories hold together; each one adds and removes its own."""

    def __init__(self) -> None:
        self.bytes = 0


def entry_size(entry: HistoryEntry) -> int:
    """What a message counts against a history's byte bound: its header and payload."""
    return len(entry.header) + len(entry.payload)


class TopicHistory:
    """The newest messages of one topic, bounded by count, bytes and age."""

    def __init__(self, limits: HistoryLimits, offset: int, total: HistoryTotal | None = None) -> None:
        """An empty history of a topic whose last message so far is ``offset``; its bytes also
        count in ``total``, if given."""
        self.limits = limits
        self._start = offset
        self._last = offset
        self._bytes = 0
        self._total = total if total is not None else HistoryTotal()
        self._entries: deque[tuple[float, HistoryEntry]] = deque()

    @property
    def start(self) -> int:
        """Every message after this offset, up to :attr:`last`, is held."""
        return self._start

    @property
    def last(self) -> int:
        """The offset of the newest message recorded (or passed over)."""
        return self._last

    @property
    def bytes(self) -> int:
        """Header and payload bytes held."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> list[HistoryEntry]:
        return [entry for _, entry in self._entries]

    # ------------------------------------------------------------ writing

    def append(self, entry: HistoryEntry, now: float) -> None:
        """Keep a new message, then evict the oldest until every bound holds.

        A message that does not follow :attr:`last` breaks the run: everything older is dropped.
        A message over ``max_bytes`` (or :data:`MAX_ENTRY_BYTES`) is not kept, and drops everything
        older with it, so a later read that spans it gets :class:`Missing`.
        """
        self.expire(now)
        if entry.offset != self._last + 1:
            self.clear(entry.offset - 1)
        size = entry_size(entry)
        if size > MAX_ENTRY_BYTES:
            self.clear(entry.offset)
            return
        self._entries.append((now, entry))
        self._bytes += size
        self._total.bytes += size
        self._last = entry.offset
        self.trim()

    def trim(self) -> None:
        """Evict the oldest messages until the count and byte bounds hold (after a limits change)."""
        while len(self._entries) > self.limits.max_messages or self._bytes > self.limits.max_bytes:
            self.evict_oldest()

    def expire(self, now: float) -> None:
        """Evict the messages older than ``max_age`` seconds at ``now``: a message recorded at
        ``at`` is kept while ``at >= now - max_age``."""
        oldest_kept = now - self.limits.max_age
        while self._entries and self._entries[0][0] < oldest_kept:
            self.evict_oldest()

    def evict_oldest(self) -> None:
        """Drop the oldest message held (there must be one)."""
        _, entry = self._entries.popleft()
        size = entry_size(entry)
        self._bytes -= size
        self._total.bytes -= size
        self._start = entry.offset

    def clear(self, offset: int) -> None:
        """Drop everything; the history starts again after ``offset``."""
        self._entries.clear()
        self._total.bytes -= self._bytes
        self._bytes = 0
        self._start = self._last = offset

    # ------------------------------------------------------------ reading

    def read(self, after: int, upto: int | None = None, max_bytes: int | None = None) -> Window | Missing:
        """The messages after offset ``after`` up to ``upto`` (default and at most :attr:`last`).

        With ``max_bytes``, the window stops before the message that would take it over budget
        (each message counting :data:`ENTRY_OVERHEAD` extra), but always holds at least one.
        Raises ``ValueError`` for an ``after`` beyond :attr:`last` or an ``upto`` before ``after``.
        """
        if after > self._last:
            raise ValueError(f"offset {after} is beyond the newest message {self._last}")
        end = self._last if upto is None else min(upto, self._last)
        if end < after:
            raise ValueError(f"a range cannot end at {end}, before {after}")
        if after < self._start:
            return Missing(self._start)
        wanted = itertools.islice(self._entries, after - self._start, end - self._start)
        return _fill(wanted, end, max_bytes)


def _fill(wanted: Iterable[tuple[float, HistoryEntry]], end: int, budget: int | None) -> Window:
    entries: list[HistoryEntry] = []
    spent = 0
    for _, entry in wanted:
        spent += entry_size(entry) + ENTRY_OVERHEAD
        if budget is not None and spent > budget and entries:
            break
        entries.append(entry)
    more = bool(entries) and entries[-1].offset < end
    return Window(entries, more)
