"""Refilling ``reliable`` subscriptions from the router's history (docs/protocol.md, 3.3 rule 9). No I/O.

A subscription owes messages when its lane fell behind (the client's queue was full), when the
client resumed from a position the history still reaches, or when offsets of the topic never
reached the edge (a gap). Once its queue is empty it asks the router with a ``recover`` for what it
owes, one request at a time, and queues what comes back in order. A failed ``recover`` (the history
no longer reaches back, or the epoch changed) ends the catch-up: the client gets a skipped frame
for what it missed, then live messages again. Without recovery, owed messages are skipped at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Final

from edges.core.output import Data, Payload
from edges.core.requests import RequestKind, RouterRequest, RouterRequests
from edges.core.subscription import Subscription, SubState
from router import wire
from router.core.errors import RecoveryStatus

__all__ = ["CatchUp"]

REPLAYED: Final = frozenset({RecoveryStatus.HISTORY_EXCEEDED, RecoveryStatus.OK})
"""``SubscribeOk.resume`` values after which the history holds the messages from ``resume_from + 1``."""


class CatchUp:
    """The subscriptions that owe messages, and their ``recover`` requests.

    ``frame`` builds a data frame (channel, offset, payload) exactly as live messages are built.
    """

    def __init__(
        self, requests: RouterRequests, frame: Callable[[int, int, Payload], Data], *, enabled: bool = True
    ) -> None:
        self.enabled = enabled
        self._requests = requests
        self._frame = frame
        self._behind: dict[Subscription, None] = {}
        """Subscriptions ``behind`` or ``asking``, in the order they fell behind."""
        self.refilled = 0
        """Frames queued from the router's history."""
        self.gaps = 0
        """Messages of ``reliable`` topics that never reached the edge."""

    def __bool__(self) -> bool:
        return bool(self._behind)

    # ------------------------------------------------------------ owing

    def owe(self, sub: Subscription, first: int, last: int, epoch: int) -> bool:
        """``sub`` owes messages ``first`` to ``last`` of ``epoch`` (nothing unless it is an open
        ``reliable`` one). True when it does: its session may have output."""
        if not sub.owe(first, last):
            return False
        if not self.enabled:
            sub.give_up()
        elif sub.state is SubState.ACTIVE:
            self.fell_behind(sub, epoch)
        return True

    def owe_from_start(self, sub: Subscription, ok: wire.SubscribeOk, topic_offset: int) -> bool:
        """A new subscriber owes the messages after its resume position that the history still
        holds, and those that passed the edge (up to ``topic_offset``) before the router's reply."""
        first = ok.resume_from + 1 if ok.resume in REPLAYED else ok.offset + 1
        return self.owe(sub, first, max(ok.offset, topic_offset), ok.epoch)

    def gap(self, subs: Iterable[Subscription], epoch: int, first: int, last: int) -> list[Subscription]:
        """Offsets ``first`` to ``last`` of ``epoch`` never reached the edge: each subscription that
        should have had them owes them. Returns the subscriptions that do."""
        self.gaps += last - first + 1
        owing = []
        for sub in subs:
            start = max(first, sub.start_offset + 1) if sub.start_epoch == epoch else first
            if self.owe(sub, start, last, epoch):
                owing.append(sub)
        return owing

    def fell_behind(self, sub: Subscription, epoch: int) -> None:
        """The lane of ``sub`` stopped queueing at a message of ``epoch``."""
        sub.fall_behind(epoch)
        self._behind[sub] = None

    def discard(self, sub: Subscription) -> None:
        self._behind.pop(sub, None)

    # ------------------------------------------------------------ asking

    def ask(self) -> None:
        """Send a ``recover`` for each subscription behind whose lane is empty and that has none out,
        once the client's queue has room for what the last refill could not queue."""
        for sub in list(self._behind):
            if not sub.notice_caught_up():
                del self._behind[sub]
        if self.enabled:
            for sub in self._behind:
                if sub.state is SubState.BEHIND and sub.lane.can_refill:
                    self._ask(sub)

    def _ask(self, sub: Subscription) -> None:
        """Ask for what ``sub`` owes; in a cluster, only once its topic's owner can be asked."""
        first, last = sub.owed
        request_id = self._requests.send(
            RouterRequest(RequestKind.RECOVER, sub.client_id, sub.topic, subscription=sub),
            lambda request_id: wire.Recover(
                request_id=request_id,
                topic=sub.topic,
                epoch=sub.behind_epoch,
                from_offset=first - 1,
                to_offset=last,
            ),
        )
        if request_id:
            sub.ask(request_id)

    # ------------------------------------------------------------ answers

    def recovered(self, request_id: int, request: RouterRequest, reply: wire.Recovered) -> bool:
        """The router's answer to a ``recover``: queue what it brought, in order. A reply of another
        epoch ends the catch-up. True when frames may have been queued for the client."""
        sub = request.subscription
        if sub is None or not sub.waits_for(request_id):
            return False
        if reply.epoch != sub.behind_epoch:
            self._give_up(sub)
            return False
        channel, frame = sub.channel, self._frame
        frames = (frame(channel, offset, payload) for offset, _, payload in reply.messages)
        self.refilled += sub.recovered(frames, reply.more)
        if sub.state is SubState.ACTIVE:
            self.discard(sub)
        return True

    def failed(self, request_id: int, request: RouterRequest) -> bool:
        """A ``recover`` was refused or lost: the client gets a skipped frame for what it missed.
        True when that concerned a subscription still waiting for it."""
        sub = request.subscription
        if sub is None or not sub.waits_for(request_id):
            return False
        self._give_up(sub)
        return True

    def redirect(self, request_id: int, request: RouterRequest) -> None:
        """A ``recover`` will get no useful answer (its router lost the topic or the edge): the
        subscription waiting for it asks again, the topic's owner this time."""
        sub = request.subscription
        if sub is not None and sub.waits_for(request_id):
            sub.redirect()

    def _give_up(self, sub: Subscription) -> None:
        sub.give_up()
        self.discard(sub)
