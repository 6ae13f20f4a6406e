"""One client's outgoing data frames, one lane per topic, under each topic's delivery policy. No I/O.

Rules of this module:

- A :class:`DeliveryQueue` holds one :class:`Lane` per channel. A lane keeps its topic's frames in
  offset order and applies the topic's :class:`~router.core.policy.DeliveryPolicy`; the queue bounds
  all its lanes together and decides the order in which a drain takes frames from them.
- Every message handed to a lane ends in exactly one place: sent, still queued, pending (held for a
  rate-limit token, or owed to a ``reliable`` client that is behind), or skipped on purpose and
  counted once in :attr:`DeliveryQueue.dropped` under its reason. A message skipped while the client
  stays subscribed is also covered by a skipped frame (:class:`~edges.core.output.Skipped`)
  written just before the channel's next data frame, so the client can tell it from real loss.
- No clock: time comes from the caller as ``now`` (seconds). ``None`` means no time is known, and
  rate limits are not applied.

Policies, per lane:

- ``best_effort``: bounded by the policy's ``queue_max_*`` and the client's. When a frame does not
  fit, ``slow_client`` decides: ``drop_oldest`` drops the lane's oldest frames, ``drop_newest`` the
  new one, ``disconnect`` sets :attr:`DeliveryQueue.too_slow` (the caller closes the client).
- ``latest``: at most one frame; a newer message takes the place of the one waiting (conflated).
  With ``max_rate``, a message without a token is held until :meth:`Lane.release` finds one.
- ``reliable``: never dropped to make room. When it does not fit, the lane stops queueing and is
  behind from that offset (:attr:`Lane.behind`) until :meth:`Lane.recover` refills it, or until it
  gives up (:meth:`Lane.give_up`, automatic once drained when the queue is not ``recoverable``).
  ``max_rate``, the policy's or the client's, does not apply to it.
- A lane's rate is the lower of the policy's ``max_rate`` and the client's own
  (:meth:`Lane.cap_rate`), which outlives policy changes. Over it, ``best_effort`` skips the
  message (``rate limited``) and ``latest`` holds it, as above.
- When the client's shared bound is the one that is full, frames of ``best_effort`` lanes of a
  lower priority are dropped first, oldest first.

Drain order: lanes of a higher priority first; lanes of one priority share the output by deficit
round-robin (:data:`QUANTUM` bytes per turn), so over a drain limited to some bytes each backlogged
lane gets its share within one quantum plus one frame.

A lane with a window (:meth:`Lane.limit_in_flight`) sends at most that many frames until the client
acknowledges them (:meth:`Lane.ack`); meanwhile its frames wait in the queue under its policy, so a
``latest`` lane with a window of 1 always sends the newest frame the moment the client is ready.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from edges.core.client_wire import SkipReason, encode_restarted_frame, encode_skipped_frame
from edges.core.drops import DropReason
from edges.core.output import ClientOutput, Data, Framing, Skipped, record
from router.core.policy import DEFAULT_POLICY, DeliveryPolicy
from router.core.token_bucket import TokenBucket

__all__ = ["QUANTUM", "DeliveryQueue", "Lane", "Skip"]

QUANTUM: Final = 16 * 1024
"""Bytes a lane may send per round-robin turn among lanes of the same priority."""


CONFLATED: Final = int(SkipReason.CONFLATED)
RATE_LIMITED: Final = int(SkipReason.RATE_LIMITED)
QUEUE_FULL: Final = int(SkipReason.QUEUE_FULL)
BEHIND: Final = int(SkipReason.BEHIND)
NOT_RECEIVED: Final = int(SkipReason.NOT_RECEIVED)
"""The :class:`~edges.core.client_wire.SkipReason` bits as plain ints, which combine faster."""


class Skip:
    """Messages skipped between two frames of one lane: their offsets and reasons; and, with an
    ``epoch``, that the topic's sequence started over in that epoch before the next frame (the
    skipped offsets, if any, are then the new epoch's)."""

    __slots__ = ("count", "epoch", "first", "last", "reasons")

    def __init__(self, reasons: int, offset: int) -> None:
        self.reasons = reasons
        self.first = self.last = offset
        self.count = 1
        self.epoch = 0

    @classmethod
    def restart(cls, epoch: int) -> Skip:
        """A skip of no message yet, that says the sequence started over in ``epoch``."""
        skip = cls(0, 0)
        skip.count = 0
        skip.epoch = epoch
        return skip

    def __repr__(self) -> str:
        return f"Skip({self.reasons!r}, {self.first}..{self.last}, count={self.count}, epoch={self.epoch})"

    def add(self, reason: int, offset: int) -> None:
        """One more message: a newer one at the tail, or the older frame just dropped before it."""
        self.reasons |= reason
        if not self.count:
            self.first = self.last = offset
        elif offset < self.first:
            self.first = offset
        elif offset > self.last:
            self.last = offset
        self.count += 1

    def absorb(self, other: Skip) -> Skip:
        """Take ``other``, the skip just before or after this one, in."""
        self.reasons |= other.reasons
        self.epoch = self.epoch or other.epoch
        if not self.count:
            self.first, self.last = other.first, other.last
        elif other.count:
            if other.first < self.first:
                self.first = other.first
            if other.last > self.last:
                self.last = other.last
        self.count += other.count
        return self


Item = Data | Skip
"""What a lane queues: a message's frame (the object every subscriber of its topic shares, which
knows its offset) or the skip that explains a gap. A queued frame is never wrapped in an object of
its own: a container per client and message, kept alive in a queue, is what the garbage collector
walks at every full collection."""


class Lane:
    """One topic's frames for one client, in offset order, under the topic's policy.

    :attr:`items` holds frames and, before a frame or at the end, at most one :class:`Skip` per gap.
    It is ``None`` until the lane first holds something, so a subscription that never got data
    costs no deque; then the lane keeps it, emptied: a deque made and dropped per client and
    message set the garbage collector off all the time (at 10,000 clients of a topic, the edge
    delivered 48,000 frames/s with it and 79,000 without, ``scripts/bench soak``).
    """

    __slots__ = (
        DropReason.BEHIND,
        "bucket",
        "bytes",
        "channel",
        "client_max_rate",
        "count",
        "deficit",
        "drops",
        "fast",
        "held",
        "items",
        "kind",
        "max_bytes",
        "max_messages",
        "open",
        "policy",
        "priority",
        "queue",
        "rate",
        "refill_size",
        "shed",
        "slow_client",
        "unacked",
        "window",
    )

    def __init__(self, queue: DeliveryQueue, channel: int, policy: DeliveryPolicy) -> None:
        self.queue = queue
        self.channel = channel
        self.items: deque[Item] | None = None
        self.count = 0
        self.bytes = 0
        self.deficit = 0
        self.held: Data | None = None
        """A ``latest`` frame waiting for a rate-limit token (never while a frame is queued)."""
        self.behind: Skip | None = None
        """A ``reliable`` lane's messages not queued: from ``first`` (the offset to refill from) to
        ``last``, ``count`` of them."""
        self.refill_size = 0
        """The size of the owed frame the last refill found no room for (0: none)."""
        self.open = True
        self.drops = 0
        """Messages this lane skipped while the client stayed subscribed (every reason counted in
        the queue's ``dropped`` but ``closed`` and ``unsubscribed``)."""
        self.window: int | None = None
        """At most this many frames sent and not acknowledged by the client (``None``: no limit)."""
        self.unacked: deque[int] | None = None
        """Offsets of the frames sent and not acknowledged yet, with a window."""
        self.client_max_rate: float | None = None
        """The client's own cap on the topic's messages per second (``None``: none)."""
        self._configure(policy)

    def __repr__(self) -> str:
        return f"<Lane {self.channel} {self.kind} {self.count} frames>"

    def _configure(self, policy: DeliveryPolicy) -> None:
        queue = self.queue
        self.policy = policy
        self.kind = policy.kind
        self.priority = policy.priority
        self.slow_client = policy.slow_client
        self.shed = policy.kind == "best_effort" and policy.slow_client == "drop_oldest"
        most = 1 if policy.kind == "latest" else policy.queue_max_messages
        self.max_messages = min(most, queue.max_messages)
        self.max_bytes = min(policy.queue_max_bytes, queue.max_bytes)
        self.rate = None if policy.kind == "reliable" else _lower(policy.max_rate, self.client_max_rate)
        self.bucket = TokenBucket(self.rate) if self.rate is not None else None
        """The bucket of :attr:`rate`, full at every policy change; ``None`` without a rate."""
        self._refresh()

    def _refresh(self) -> None:
        """Whether a frame that fits the client's bound can simply be appended."""
        queue = self.queue
        self.fast = (
            self.kind != "latest"
            and self.rate is None
            and self.behind is None
            and self.max_messages >= queue.max_messages
            and self.max_bytes >= queue.max_bytes
        )

    # ------------------------------------------------------------ input

    def push(self, frame: Data, now: float | None = None) -> bool:
        """Hand the lane one message. True when the caller must look at it: it now holds a frame
        for later (:attr:`held`), fell behind (:attr:`behind`), or the client is too slow."""
        queue = self.queue
        offset, size = frame.offset, frame.size
        if self.fast:
            if queue.count < queue.max_messages and queue.bytes + size <= queue.max_bytes:
                items = self.items
                if items is None:
                    items = self.items = deque()
                items.append(frame)
                self.count += 1
                self.bytes += size
                queue.count += 1
                queue.bytes += size
                return False
            if (
                self.shed
                and len(queue.levels) == 1
                and queue.count - self.count < queue.max_messages
                and queue.bytes - self.bytes + size <= queue.max_bytes
            ):
                self._shed(offset, frame, size)
                return False
        return self._push(offset, frame, size, now)

    def _shed(self, offset: int, frame: Data, size: int) -> None:
        """The client's bound is full, no lane has a lower priority, and dropping this lane's
        oldest frames makes room: the common overflow, kept short."""
        queue = self.queue
        while queue.count >= queue.max_messages or queue.bytes + size > queue.max_bytes:
            self._drop_oldest()
        self._append(frame, size)

    def _push(self, offset: int, frame: Data, size: int, now: float | None) -> bool:
        if self.behind is not None:
            self.behind.add(BEHIND, offset)
            return False
        if size > self.max_bytes:
            if self.held is not None:
                self._conflate_held()
            self._skip(QUEUE_FULL, offset, DropReason.OVERSIZE)
            return False
        if self.kind == "latest":
            return self._push_latest(offset, frame, size, now)
        if self.rate is not None and now is not None and not self._take_token(now):
            self._skip(RATE_LIMITED, offset, DropReason.RATE_LIMITED)
            return False
        return self._enqueue(offset, frame, size)

    def _push_latest(self, offset: int, frame: Data, size: int, now: float | None) -> bool:
        """The waiting frame, paid for already, gives its place to the newer one."""
        if self.count:
            self._conflate_queued()
        elif self.rate is not None and now is not None and not self._take_token(now):
            self._hold(frame)
            return True
        elif self.held is not None:
            self._conflate_held()
        return self._enqueue(offset, frame, size)

    def _enqueue(self, offset: int, frame: Data, size: int) -> bool:
        if self._make_room(size):
            self._append(frame, size)
            return False
        return self._full(offset)

    def _make_room(self, size: int) -> bool:
        """Drop what the policy allows until ``size`` more bytes fit; False, dropping nothing, if
        they cannot."""
        own = self.slow_client == "drop_oldest" and self.kind != "reliable"
        queue = self.queue
        lane_fits = self.count < self.max_messages and self.bytes + size <= self.max_bytes
        if lane_fits and queue.fits(size):
            return True
        if size > self.max_bytes or not (own or lane_fits):
            return False
        if not queue.can_free(size, self.priority, self if own else None):
            return False
        while self.count >= self.max_messages or self.bytes + size > self.max_bytes:
            self._drop_oldest()
        queue.evict_below(self.priority, size)
        while not queue.fits(size):
            self._drop_oldest()
        return True

    def _full(self, offset: int) -> bool:
        if self.slow_client == "disconnect":
            self.queue.too_slow = True
            self.queue.dropped[DropReason.TOO_SLOW] += 1
            self.drops += 1
            return True
        if self.kind == "reliable":
            self.behind = Skip(BEHIND, offset)
            self.queue.behind_lanes += 1
            self._refresh()
            return True
        self._skip(QUEUE_FULL, offset, DropReason.QUEUE_FULL)
        return False

    def _hold(self, frame: Data) -> None:
        if self.held is not None:
            self._conflate_held()
        self.held = frame

    def _take_token(self, now: float) -> bool:
        return self.bucket is None or self.bucket.take(now)

    # ------------------------------------------------------------ bookkeeping

    def _deque(self) -> deque[Item]:
        items = self.items
        if items is None:
            items = self.items = deque()
        return items

    def _append(self, frame: Data, size: int) -> None:
        self._deque().append(frame)
        self.count += 1
        self.bytes += size
        self.queue.count += 1
        self.queue.bytes += size

    def _forget(self, frame: Data) -> None:
        size = frame.size
        self.count -= 1
        self.bytes -= size
        self.queue.count -= 1
        self.queue.bytes -= size

    def _tidy(self) -> None:
        if not self.items:
            self.items = None

    def _skip(self, reason: int, offset: int, counter: DropReason) -> None:
        self.queue.dropped[counter] += 1
        self.drops += 1
        items = self._deque()
        tail = items[-1] if items else None
        if isinstance(tail, Skip):
            tail.add(reason, offset)
        else:
            items.append(Skip(reason, offset))

    def missed(self, first: int, last: int) -> None:
        """Messages ``first`` to ``last`` never reached the edge: the skip before the next frame
        covers them. The caller hands the lane that next frame at once."""
        skip = Skip(NOT_RECEIVED, first)
        skip.last, skip.count = last, last - first + 1
        self.queue.dropped[DropReason.NOT_RECEIVED] += skip.count
        self.drops += skip.count
        items = self._deque()
        if items and isinstance(items[-1], Skip):
            items[-1].absorb(skip)
        else:
            items.append(skip)

    def restarted(self, epoch: int) -> None:
        """The topic's sequence started over in ``epoch``: the frame before the next one says so.
        It says that everything since the last frame is lost, so the old sequence's skips not yet
        told (already counted) go into it, as does a rate-limited frame held back."""
        if self.held is not None:
            self._conflate_held()
        items = self._deque()
        if items and isinstance(items[-1], Skip):
            items.pop()
        items.append(Skip.restart(epoch))

    def _drop_oldest(self, reason: int = QUEUE_FULL, counter: DropReason = DropReason.QUEUE_FULL) -> None:
        """Drop the oldest frame; it joins the skips around it, which stay before the next frame."""
        items = self.items or self._deque()
        head = items.popleft()
        before = None
        if type(head) is Skip:
            before = head
            head = items.popleft()
        assert type(head) is Data
        offset, size = head.offset, head.size
        self.count -= 1
        self.bytes -= size
        queue = self.queue
        queue.count -= 1
        queue.bytes -= size
        queue.dropped[counter] += 1
        self.drops += 1
        after = items[0] if items else None
        if type(after) is Skip:
            after.add(reason, offset)
            if before is not None:
                after.absorb(before)
        elif before is None:
            items.appendleft(Skip(reason, offset))
        else:
            before.add(reason, offset)
            items.appendleft(before)

    def _conflate_queued(self) -> None:
        """Turn everything queued (one frame and its skips) into one skip."""
        items = self._deque()
        merged: Skip | None = None
        for item in items:
            if isinstance(item, Skip):
                skip = item
            else:
                self._forget(item)
                self.queue.dropped[DropReason.CONFLATED] += 1
                self.drops += 1
                skip = Skip(CONFLATED, item.offset)
            merged = skip if merged is None else merged.absorb(skip)
        items.clear()
        if merged is not None:
            items.append(merged)

    def _conflate_held(self) -> None:
        assert self.held is not None
        offset = self.held.offset
        self.held = None
        self._skip(CONFLATED, offset, DropReason.CONFLATED)

    # ------------------------------------------------------------ timed release and policy changes

    def release(self, now: float | None) -> bool:
        """Queue the held frame if a token is there now. True as :meth:`push` says."""
        if self.held is None or (self.rate is not None and now is not None and not self._take_token(now)):
            return self.held is not None
        frame = self.held
        self.held = None
        return self._enqueue(frame.offset, frame, frame.size)

    def next_release(self) -> float | None:
        """When the held frame can go (``-inf``: now), or ``None`` when none is held."""
        if self.held is None:
            return None
        if self.bucket is None:
            return -math.inf
        return self.bucket.next_token_at()

    def cap_rate(self, max_rate: float | None) -> bool:
        """Apply the client's own ``max_rate`` (positive; ``None``: none) from now on, under
        this and every later policy's. True as :meth:`push` says."""
        self.client_max_rate = max_rate
        return self.set_policy(self.policy)

    def set_policy(self, policy: DeliveryPolicy) -> bool:
        """Apply a new policy at once. True as :meth:`push` says.

        Queued frames over smaller bounds are dropped oldest first, except on a ``reliable`` lane,
        which keeps them (the new bounds apply from its next message). A lane that stops being
        ``reliable`` stops being behind; a ``latest`` one keeps only its newest frame.
        """
        old_priority = self.priority
        self._configure(policy)
        if self.priority != old_priority:
            self.queue.reorder(self, old_priority)
        if self.behind is not None and self.kind != "reliable":
            self.give_up()
        if self.kind == "latest":
            while self.count > 1:
                self._drop_oldest(CONFLATED, DropReason.CONFLATED)
        if self.kind != "reliable":
            while self.count and (self.count > self.max_messages or self.bytes > self.max_bytes):
                self._drop_oldest()
        if self.held is not None and (self.kind != "latest" or self.rate is None):
            return self.release(None)
        return False

    # ------------------------------------------------------------ a reliable lane behind

    def recover(self, frames: Iterable[Data], more: bool = False) -> int:
        """Refill a behind lane with its missing messages, in order, from :attr:`behind` ``.first``.

        Frames before that offset are ignored, and so are those after ``behind.last`` (they come
        live). The lane is caught up once it queued ``behind.last``. Otherwise it stays behind from
        the first offset it could not queue when the queue is full, the reply was cut short
        (``more``) or still brought something; a reply that brings nothing, or does not start where
        asked, makes it give up. Returns how many frames were queued.
        """
        behind = self.behind
        if behind is None:
            return 0
        queued = self.refill_size = 0
        for frame in frames:
            offset = frame.offset
            if offset < behind.first:
                continue
            if offset > behind.first:
                break
            size = frame.size
            if size > self.max_bytes:
                self._skip(QUEUE_FULL, offset, DropReason.OVERSIZE)
            elif self._make_room(size):
                self._append(frame, size)
                queued += 1
            else:
                self.refill_size = size
                return self._recovered(queued, stalled=True)
            behind.first += 1
            behind.count = max(0, behind.count - 1)
            if behind.first > behind.last:
                self._stop_behind()
                break
        return self._recovered(queued, stalled=more)

    @property
    def can_refill(self) -> bool:
        """Whether a refill would queue something now: nothing of the lane is queued, and the frame
        the last refill found no room for fits (as :meth:`_make_room` would make room for it)."""
        if self.count:
            return False
        size = self.refill_size
        return not size or self.queue.fits(size) or self.queue.can_free(size, self.priority, None)

    def owe(self, first: int, last: int) -> None:
        """Messages ``first`` to ``last`` never reached the lane (a resumed client's gap, or
        messages the edge did not receive): it is behind from ``first`` and refills them, and
        whatever comes after them, before it queues live messages again. Only for ``reliable``
        lanes; ``first`` must be past every offset the lane was given."""
        if last < first:
            return
        count = last - first + 1
        behind = self.behind
        if behind is not None:
            behind.count += count
            behind.last = max(behind.last, last)
            return
        behind = self.behind = Skip(BEHIND, first)
        behind.last = last
        behind.count = count
        self.queue.behind_lanes += 1
        self._refresh()

    def _recovered(self, queued: int, stalled: bool) -> int:
        self.queue.recovered += queued
        if self.behind is not None and not (stalled or queued):
            self.give_up()
        return queued

    def give_up(self) -> None:
        """Stop being behind: the messages still owed become a skip (``behind``) before the next
        frame, and live messages are queued again."""
        behind = self.behind
        if behind is None:
            return
        self._stop_behind()
        if not behind.count:
            return
        self.queue.dropped[DropReason.BEHIND] += behind.count
        self.drops += behind.count
        items = self._deque()
        tail = items[-1] if items else None
        if isinstance(tail, Skip):
            tail.absorb(behind)
        else:
            items.append(behind)

    def _stop_behind(self) -> None:
        self.refill_size = 0
        if self.behind is not None:
            self.behind = None
            self.queue.behind_lanes -= 1
            self._refresh()

    @property
    def pending(self) -> int:
        """Messages neither queued nor accounted for yet: a held frame and those owed while behind."""
        return (self.held is not None) + (self.behind.count if self.behind is not None else 0)

    # ------------------------------------------------------------ a window of frames in flight

    def limit_in_flight(self, window: int | None) -> None:
        """Send at most ``window`` frames before the client acknowledges them (:meth:`ack`)."""
        self.window = window
        self.unacked = deque() if window is not None else None

    @property
    def ready(self) -> int:
        """Frames that may be sent now: all queued ones, or as many as the window still allows."""
        unacked = self.unacked
        if unacked is None:
            return self.count
        return min(self.count, max(0, self.window or 0) - len(unacked))

    def ack(self, offset: int) -> bool:
        """The client is done with every frame up to ``offset``. True when that lets a queued
        frame go."""
        unacked = self.unacked
        if unacked is None:
            return False
        while unacked and unacked[0] <= offset:
            unacked.popleft()
        return self.ready > 0

    # ------------------------------------------------------------ output

    def head_size(self) -> int:
        items = self._deque()
        item = items[0]
        if isinstance(item, Skip):
            item = items[1]
        assert not isinstance(item, Skip)
        return item.size

    def pop_frame(self, out: list[ClientOutput]) -> int:
        """Move the next frame to ``out``, after its skipped frame if any; returns its size."""
        items = self._deque()
        item = items.popleft()
        if isinstance(item, Skip):
            self.queue.skip_frames(self.channel, item, out)
            item = items.popleft()
        assert not isinstance(item, Skip)
        out.append(item)
        if self.unacked is not None:
            self.unacked.append(item.offset)
        self._forget(item)
        self._tidy()
        return item.size

    def emit(self, out: list[ClientOutput], limit: int | None) -> int:
        """Move frames to ``out`` until ``limit`` bytes are out (the last one may go over)."""
        items = self.items
        if items is None:
            return 0
        if limit is None and len(items) == self.count and self.unacked is None:
            out.extend(items)  # type: ignore[arg-type]  # no Skip: as many items as frames
            items.clear()
            sent = self.bytes
            self.queue.count -= self.count
            self.queue.bytes -= sent
            self.count = self.bytes = 0
            return sent
        sent = 0
        while self.ready and (limit is None or sent < limit):
            sent += self.pop_frame(out)
        return sent

    def discard(self, reason: DropReason) -> int:
        """Drop everything (the client left the topic or is gone); returns how many frames were queued."""
        frames = self.count
        pending = self.pending
        if frames + pending:
            self.queue.dropped[reason] += frames + pending
        self.queue.count -= frames
        self.queue.bytes -= self.bytes
        self.items = None
        self.count = self.bytes = 0
        self.held = None
        self._stop_behind()
        return frames


def _lower(cap: float | None, other: float | None) -> float | None:
    """The lower of two rate caps, ``None`` being no cap."""
    if cap is None:
        return other
    return cap if other is None else min(cap, other)


@dataclass(eq=False, slots=True)
class _Level:
    """The lanes of one priority in round-robin order: it is ``lanes[turn]``'s turn, and that lane
    already got its quantum for this turn if ``granted``."""

    priority: int
    lanes: list[Lane] = field(default_factory=list)
    turn: int = 0
    granted: bool = False

    def remove(self, lane: Lane) -> None:
        index = self.lanes.index(lane)
        del self.lanes[index]
        if index < self.turn:
            self.turn -= 1
        elif index == self.turn:
            self.granted = False
        if self.turn >= len(self.lanes):
            self.turn = 0

    def next_turn(self) -> None:
        self.turn = (self.turn + 1) % len(self.lanes)
        self.granted = False


class DeliveryQueue:
    """Every lane of one client: the bounds they share, the order of a drain, and the counters.

    ``max_messages`` and ``max_bytes`` bound the frames of all lanes together; each lane's policy
    may bound its own frames more tightly. Skipped frames get the transport's ``framing`` like data
    frames, so the shell writes them the same way.
    """

    __slots__ = (
        "_framing",
        "_lanes",
        "behind_lanes",
        "bytes",
        "count",
        "dropped",
        "levels",
        "max_bytes",
        "max_messages",
        "quantum",
        "recoverable",
        "recovered",
        "solo",
        DropReason.TOO_SLOW,
    )

    def __init__(
        self,
        max_messages: int,
        max_bytes: int,
        *,
        dropped: Counter[DropReason] | None = None,
        framing: Framing | None = None,
        recoverable: bool = False,
        quantum: int = QUANTUM,
    ) -> None:
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.dropped: Counter[DropReason] = dropped if dropped is not None else Counter()
        self.recoverable = recoverable
        """Whether someone refills lanes that are behind; if not, a lane behind gives up as soon as
        it has nothing queued after a drain."""
        self.quantum = quantum
        self.count = 0
        self.bytes = 0
        self.recovered = 0
        self.behind_lanes = 0
        self.too_slow = False
        """A ``disconnect`` lane had no room: close the client (code 4003)."""
        self._framing = framing
        self._lanes: dict[int, Lane] = {}
        self.levels: list[_Level] = []
        """By priority, highest first."""
        self.solo: Lane | None = None
        """The only lane, when there is exactly one."""

    def __repr__(self) -> str:
        return f"<DeliveryQueue {len(self._lanes)} lanes {self.count} frames {self.bytes} bytes>"

    # ------------------------------------------------------------ lanes

    def open(self, channel: int, policy: DeliveryPolicy = DEFAULT_POLICY) -> Lane:
        """The channel's lane, made now with ``policy`` if it has none (see :meth:`Lane.set_policy`)."""
        lane = self._lanes.get(channel)
        if lane is None:
            lane = self._lanes[channel] = Lane(self, channel, policy)
            self._level(lane.priority).lanes.append(lane)
            self._update_solo()
        return lane

    def lane(self, channel: int) -> Lane | None:
        return self._lanes.get(channel)

    def lanes(self) -> list[Lane]:
        return list(self._lanes.values())

    def close(self, channel: int, reason: DropReason = DropReason.UNSUBSCRIBED) -> int:
        """Remove a lane and what it holds; returns how many frames were queued in it."""
        lane = self._lanes.pop(channel, None)
        if lane is None:
            return 0
        lane.open = False
        self._unlist(lane, lane.priority)
        self._update_solo()
        return lane.discard(reason)

    def clear(self, reason: DropReason) -> int:
        """Drop what every lane holds (the client is closing); returns how many frames were queued."""
        for lane in self._lanes.values():
            lane.open = False
        return sum(lane.discard(reason) for lane in self._lanes.values())

    def _update_solo(self) -> None:
        self.solo = next(iter(self._lanes.values())) if len(self._lanes) == 1 else None

    def reorder(self, lane: Lane, old_priority: int) -> None:
        self._unlist(lane, old_priority)
        self._level(lane.priority).lanes.append(lane)

    def _level(self, priority: int) -> _Level:
        keys = [-level.priority for level in self.levels]
        index = bisect.bisect_left(keys, -priority)
        if index < len(self.levels) and self.levels[index].priority == priority:
            return self.levels[index]
        level = _Level(priority)
        self.levels.insert(index, level)
        return level

    def _unlist(self, lane: Lane, priority: int) -> None:
        level = next(level for level in self.levels if level.priority == priority)
        level.remove(lane)
        lane.deficit = 0
        if not level.lanes:
            self.levels.remove(level)

    # ------------------------------------------------------------ room

    def fits(self, size: int, freed: int = 0) -> bool:
        """Whether a frame of ``size`` bytes fits, once ``freed`` frames are dropped (``size``
        then counts their bytes as negative)."""
        return self.count - freed < self.max_messages and self.bytes + size <= self.max_bytes

    def can_free(self, size: int, priority: int, own: Lane | None) -> bool:
        """Whether dropping ``own``'s frames and those of ``best_effort`` lanes under ``priority``
        would make room for ``size`` bytes."""
        frames = nbytes = 0
        for lane in self._lanes.values():
            if lane is own or (lane.kind == "best_effort" and lane.priority < priority):
                frames += lane.count
                nbytes += lane.bytes
        return self.fits(size - nbytes, frames)

    def evict_below(self, priority: int, size: int) -> None:
        """Drop the oldest frames of ``best_effort`` lanes under ``priority`` until ``size`` fits:
        the lowest priority first, and in it the lane holding the most bytes."""
        for level in reversed(self.levels):
            if level.priority >= priority:
                return
            while not self.fits(size):
                candidates = [lane for lane in level.lanes if lane.count and lane.kind == "best_effort"]
                if not candidates:
                    break
                max(candidates, key=lambda lane: lane.bytes)._drop_oldest()
            if self.fits(size):
                return

    @property
    def pending(self) -> int:
        """Held and owed messages over all lanes (see :attr:`Lane.pending`)."""
        return sum(lane.pending for lane in self._lanes.values())

    # ------------------------------------------------------------ output

    def drain(self, out: list[ClientOutput], limit: int | None = None) -> None:
        """Move frames to ``out``: higher priorities first, equal ones by deficit round-robin.

        With ``limit``, stop once that many bytes of data frames are out (the last frame may go
        over; skipped frames are not counted); the rest stays queued, and the round-robin resumes
        where it stopped at the next drain.
        """
        if self.solo is not None:
            self.solo.emit(out, limit)
        else:
            for level in self.levels:
                if not self.count or (limit is not None and limit <= 0):
                    break
                sent = self._drain_level(level, out, limit)
                if limit is not None:
                    limit -= sent
        if self.behind_lanes and not self.recoverable:
            for lane in self._lanes.values():
                if lane.behind is not None and not lane.count:
                    lane.give_up()

    def _drain_level(self, level: _Level, out: list[ClientOutput], limit: int | None) -> int:
        lanes = level.lanes
        if len(lanes) == 1:
            return lanes[0].emit(out, limit)
        backlog = sum(1 for lane in lanes if lane.ready)
        sent = 0
        while backlog:
            lane = lanes[level.turn]
            if lane.ready:
                if not level.granted:
                    lane.deficit += self.quantum
                    level.granted = True
                while lane.ready and lane.head_size() <= lane.deficit:
                    if limit is not None and sent >= limit:
                        return sent
                    size = lane.pop_frame(out)
                    lane.deficit -= size
                    sent += size
                if not lane.ready:
                    backlog -= 1
            if not lane.ready:
                lane.deficit = 0
            level.next_turn()
        return sent

    def skip_frames(self, channel: int, skip: Skip, out: list[ClientOutput]) -> None:
        """The frames that explain ``skip`` on ``channel``: a restarted frame if the sequence
        started over, then a skipped frame if messages were skipped."""
        if skip.epoch:
            out.append(self._framed(channel, encode_restarted_frame(channel, skip.epoch)))
        if skip.count:
            frame = encode_skipped_frame(channel, skip.reasons, skip.first, skip.last, skip.count)
            out.append(self._framed(channel, frame))

    def _framed(self, channel: int, frame: bytes) -> Skipped:
        framed = frame if self._framing is None else self._framing(len(frame)) + frame
        return Skipped(channel, framed, record(frame))
