"""What one client got of one topic of :mod:`benchlib.sequence_producer`, counted by the payloads'
sequence numbers, with no I/O.

A client's frames of a topic, in the order they arrived, are data (sequence number, offset), or a
``skipped`` or ``restarted`` frame (``docs/protocol.md`` 4.4). A sequence number that never arrived
between the first one received and the last one sent is lost:

- *reported* when a skipped or restarted frame came between the data frames around it: the client
  was told;
- *silent* otherwise. Of those, the ones with no gap in the offsets around them never had an offset
  that reached the client at all: the producer's PUB socket had no router subscribed for them, or a
  router that was killed had them and had not made them durable. With an offset gap and no frame,
  Switchboard lost a message it had sequenced, which it must never do;
- *at the end* when it was sent after the last one the client received.

A sequence number that arrives a second time is duplicated.

Given the times a router was started again (``rejoins``, and the ``kills`` after them), the silent
loss of a gap that closed after a rejoin and before the next kill is counted apart too: it happened
while shards moved to a router that joined, not to one that was killed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import NamedTuple


class Data(NamedTuple):
    seq: int
    offset: int
    at: int = 0
    """When it arrived, in ``time.monotonic_ns()``."""


class Told(NamedTuple):
    """A skipped or restarted frame."""

    kind: str


Frame = Data | Told


@dataclass
class Tally:
    received: int = 0
    duplicated: int = 0
    lost_reported: int = 0
    lost_silent: int = 0
    lost_silent_no_offset_gap: int = 0
    """Part of :attr:`lost_silent`: the offsets around them have no gap."""
    lost_silent_at_rejoins: int = 0
    """Part of :attr:`lost_silent`: while shards moved to a router that joined again."""
    lost_at_end: int = 0

    @property
    def lost(self) -> int:
        """Every loss the client was not told of."""
        return self.lost_silent + self.lost_at_end

    def __add__(self, other: Tally) -> Tally:
        return Tally(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class _Gap(NamedTuple):
    first: int
    last: int
    reported: bool
    offset_gap: bool
    closed_at: int


def tally(
    frames: Sequence[Frame], last_sent: int, kills: Sequence[int] = (), rejoins: Sequence[int] = ()
) -> Tally:
    """Count ``frames`` against the sequence numbers up to ``last_sent``."""
    result = Tally()
    seen: set[int] = set()
    gaps: list[_Gap] = []
    high: int | None = None
    offset = 0
    told = False
    for frame in frames:
        if isinstance(frame, Told):
            told = True
            continue
        if frame.seq in seen:
            result.duplicated += 1
        else:
            seen.add(frame.seq)
            result.received += 1
            if high is not None and frame.seq > high + 1:
                gaps.append(_Gap(high + 1, frame.seq - 1, told, frame.offset != offset + 1, frame.at))
            if high is None or frame.seq > high:
                high = frame.seq
            told = False
        offset = frame.offset
    if high is not None and last_sent > high:
        result.lost_at_end = last_sent - high
    for gap in gaps:
        missing = sum(seq not in seen for seq in range(gap.first, gap.last + 1))
        if gap.reported:
            result.lost_reported += missing
        else:
            result.lost_silent += missing
            if not gap.offset_gap:
                result.lost_silent_no_offset_gap += missing
            if _after_rejoin(gap.closed_at, kills, rejoins):
                result.lost_silent_at_rejoins += missing
    return result


def _after_rejoin(at: int, kills: Sequence[int], rejoins: Sequence[int]) -> bool:
    """Whether the last of ``kills`` and ``rejoins`` at or before ``at`` is a rejoin."""
    kill = max((t for t in kills if t <= at), default=None)
    rejoin = max((t for t in rejoins if t <= at), default=None)
    return rejoin is not None and (kill is None or rejoin > kill)
