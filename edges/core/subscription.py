"""One client's subscription to one topic on an edge, from the request to the router until it ends. No I/O.

Rules of this module: every change of a subscription's state goes through :data:`TRANSITIONS`, and an
event the table does not allow raises :class:`InvalidSubscriptionEventError` and changes nothing.
The subscription owns everything that is its own: the client's request id, window and own
``max_rate``, the router request in flight for it, the position its ``subscribed`` announced, and
its :class:`~edges.core.delivery.Lane`, which it takes from the session once, when the router
confirms, and gives back when it ends. Nobody else touches the lane.

The states, for a ``reliable`` topic that falls behind and is refilled from the router's history::

    requested --confirm--> active --fall_behind--> behind --ask--> asking --answer--> behind ...
                             ^                       |               |
                             +------ catch_up -------+---------------+

A ``behind`` subscription asks (:mod:`edges.core.catch_up`) once its queue is empty; the answer
leaves it ``behind`` when more is missing, and ``catch_up`` brings it back to ``active`` once the lane
queues live messages again (refilled, or given up). ``leave`` ends it from any state.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Final

from edges.core.client_wire import Resume
from edges.core.delivery import Lane
from edges.core.output import Data
from edges.core.session import ClientSession
from router.core.policy import DeliveryPolicy

__all__ = [
    "TRANSITIONS",
    "InvalidSubscriptionEventError",
    "SubEvent",
    "SubState",
    "Subscription",
    "next_sub_state",
]


class SubState(StrEnum):
    REQUESTED = "requested"
    """The router was asked; the client waits for its reply. No lane yet."""
    ACTIVE = "active"
    """Confirmed: messages go to the lane."""
    BEHIND = "behind"
    """A ``reliable`` lane stopped queueing and owes messages; it asks once its queue is empty."""
    ASKING = "asking"
    """A ``recover`` for what the lane owes is out."""
    CLOSED = "closed"


class SubEvent(StrEnum):
    SEND = "send"
    """The subscribe went to the router (again, to a new router after a restart)."""
    CONFIRM = "confirm"
    """The router accepted the client's subscribe."""
    RECONFIRM = "reconfirm"
    """A new router accepted a subscription the client already had: what was owed is given up."""
    FALL_BEHIND = "fall_behind"
    ASK = "ask"
    ANSWER = "answer"
    """The router's history brought some of what is owed, not all."""
    REDIRECT = "redirect"
    """The ``recover`` out will get no useful answer (its router no longer serves the topic, or no
    longer knows the edge): ask the topic's owner again."""
    CATCH_UP = "catch_up"
    """The lane queues live messages again: refilled, or what it owed became a skipped frame."""
    GIVE_UP = "give_up"
    """What is owed becomes a skipped frame (the history cannot refill it)."""
    LEAVE = "leave"


_CONFIRMED_EVENTS: Final[Mapping[SubEvent, SubState]] = {
    SubEvent.RECONFIRM: SubState.ACTIVE,
    SubEvent.GIVE_UP: SubState.ACTIVE,
    SubEvent.LEAVE: SubState.CLOSED,
}

TRANSITIONS: Final[Mapping[SubState, Mapping[SubEvent, SubState]]] = {
    SubState.REQUESTED: {
        SubEvent.SEND: SubState.REQUESTED,
        SubEvent.CONFIRM: SubState.ACTIVE,
        SubEvent.LEAVE: SubState.CLOSED,
    },
    SubState.ACTIVE: {**_CONFIRMED_EVENTS, SubEvent.FALL_BEHIND: SubState.BEHIND},
    SubState.BEHIND: {
        **_CONFIRMED_EVENTS,
        SubEvent.FALL_BEHIND: SubState.BEHIND,
        SubEvent.ASK: SubState.ASKING,
        SubEvent.CATCH_UP: SubState.ACTIVE,
    },
    SubState.ASKING: {
        **_CONFIRMED_EVENTS,
        SubEvent.ANSWER: SubState.BEHIND,
        SubEvent.REDIRECT: SubState.BEHIND,
        SubEvent.CATCH_UP: SubState.ACTIVE,
    },
    SubState.CLOSED: {},
}
"""``behind`` takes ``fall_behind`` again: a lane that gives up by itself when drained (no recovery)
may fall behind again before the hub noticed."""


class InvalidSubscriptionEventError(RuntimeError):
    """An event the subscription's state does not allow. Nothing was changed."""

    def __init__(self, state: SubState, event: SubEvent) -> None:
        super().__init__(f"{event.value!r} is not allowed in subscription state {state.value!r}")
        self.state = state
        self.event = event


def next_sub_state(state: SubState, event: SubEvent) -> SubState:
    """The state after ``event``, or :class:`InvalidSubscriptionEventError`."""
    try:
        return TRANSITIONS[state][event]
    except KeyError:
        raise InvalidSubscriptionEventError(state, event) from None


_LIVE: Final = frozenset({SubState.BEHIND, SubState.ASKING})


class Subscription:
    """One client's subscription to one topic, on the topic's channel.

    Data operations (:meth:`owe`, :meth:`set_policy`, :meth:`release`) need the lane: they are
    for confirmed subscriptions (``active``, ``behind``, ``asking``) only. Fan-out hands each
    message to :attr:`lane` itself (:meth:`~edges.core.delivery.Lane.push`): a method of ours
    around it would cost every message a call per subscriber.
    """

    __slots__ = (
        "asked",
        "behind_epoch",
        "channel",
        "client_id",
        "client_request",
        "lane",
        "max_rate",
        "request_id",
        "resume",
        "session",
        "start_epoch",
        "start_offset",
        "state",
        "topic",
        "window",
    )

    lane: Lane
    """Set when the router confirms."""

    def __init__(
        self,
        session: ClientSession,
        topic: str,
        channel: int,
        client_request: int,
        resume: Resume | None = None,
        window: int | None = None,
        max_rate: float | None = None,
    ) -> None:
        self.session = session
        self.client_id = session.client_id
        self.topic = topic
        self.channel = channel
        self.client_request = client_request
        self.request_id = 0
        """The router request the client waits for, while ``requested`` (see :meth:`sent`)."""
        self.resume = resume
        self.window = window
        self.max_rate = max_rate
        """The client's own cap on the topic's messages per second, under the policy's."""
        self.state = SubState.REQUESTED
        self.start_epoch = 0
        self.start_offset = 0
        """The position ``subscribed`` announced: messages up to it in its epoch are not for us."""
        self.behind_epoch = 0
        """The epoch of the messages owed while ``behind`` or ``asking``."""
        self.asked = 0
        """The id of the ``recover`` out while ``asking``."""

    def __repr__(self) -> str:
        return f"<Subscription {self.client_id} {self.topic} {self.state.value}>"

    def _advance(self, event: SubEvent) -> None:
        self.state = next_sub_state(self.state, event)

    @property
    def confirmed(self) -> bool:
        """The router confirmed it and it has not ended: it has a lane."""
        return self.state not in (SubState.REQUESTED, SubState.CLOSED)

    # ------------------------------------------------------------ lifecycle

    def sent(self, request_id: int) -> None:
        """The subscribe went to the router as ``request_id``; the client waits for the reply."""
        self._advance(SubEvent.SEND)
        self.request_id = request_id

    def awaits(self, request_id: int) -> bool:
        """Whether the client waits for the router's reply to ``request_id``."""
        return self.state is SubState.REQUESTED and self.request_id == request_id

    def confirm(self, policy: DeliveryPolicy, epoch: int, offset: int) -> None:
        """The router accepted the subscribe: take the lane, and start after ``epoch``:``offset``."""
        self._advance(SubEvent.CONFIRM)
        self.lane = self.session.open_lane(self.channel, policy)
        self.lane.limit_in_flight(self.window)
        self.lane.cap_rate(self.max_rate)
        self.start_epoch, self.start_offset = epoch, offset

    def reconfirm(self, epoch: int, offset: int) -> None:
        """A new router accepted the subscription again: start after its position, and turn what the
        lane owes into a skipped frame (the new router's history is of another epoch)."""
        self._advance(SubEvent.RECONFIRM)
        self.lane.give_up()
        self.start_epoch, self.start_offset = epoch, offset
        self.asked = 0

    def leave(self) -> int:
        """End it: the lane and what it holds go. Returns the drops the lane counted while open."""
        confirmed = self.confirmed
        self._advance(SubEvent.LEAVE)
        if not confirmed:
            return 0
        drops = self.lane.drops
        self.session.purge_channel(self.channel)
        return drops

    # ------------------------------------------------------------ data

    def set_policy(self, policy: DeliveryPolicy) -> bool:
        """Apply the topic's new policy at once. True as :meth:`push` says."""
        attention = self.lane.set_policy(policy)
        self._settle()
        return attention

    @property
    def held(self) -> bool:
        """A rate-limited ``latest`` frame waits for :meth:`release`."""
        return self.lane.open and self.lane.held is not None

    def release(self, now: float) -> float | None:
        """Queue the held frame if its token came. Returns when to try again, ``None`` once none is held."""
        lane = self.lane
        if lane.open and lane.held is not None:
            lane.release(now)
        if lane.open and lane.held is not None:
            return lane.next_release() or now
        return None

    # ------------------------------------------------------------ a reliable lane behind

    @property
    def lane_behind(self) -> bool:
        return self.lane.behind is not None

    @property
    def owed(self) -> tuple[int, int]:
        """The first and last offset the lane misses (while it is behind)."""
        behind = self.lane.behind
        assert behind is not None, "only a lane behind owes messages"
        return behind.first, behind.last

    def owe(self, first: int, last: int) -> bool:
        """Messages ``first`` to ``last`` never reached the lane. False, owing nothing, unless the
        range is not empty and the lane is an open ``reliable`` one."""
        lane = self.lane
        if last < first or not lane.open or lane.kind != "reliable":
            return False
        lane.owe(first, last)
        return True

    def fall_behind(self, epoch: int) -> None:
        """The lane owes messages of ``epoch``: ask for them once the queue is empty."""
        self._advance(SubEvent.FALL_BEHIND)
        self.behind_epoch = epoch

    def ask(self, request_id: int) -> None:
        self._advance(SubEvent.ASK)
        self.asked = request_id

    def redirect(self) -> None:
        """The ``recover`` out is lost: still behind, ask again."""
        self._advance(SubEvent.REDIRECT)
        self.asked = 0

    def waits_for(self, request_id: int) -> bool:
        """Whether the ``recover`` ``request_id`` is the one this subscription waits for."""
        return self.state is SubState.ASKING and self.asked == request_id

    def recovered(self, frames: Iterable[Data], more: bool) -> int:
        """Queue what the router's history brought, in order; returns how many frames were queued.
        The lane is then caught up, or still behind (``answer``: it asks again), or gave up."""
        next_sub_state(self.state, SubEvent.ANSWER)
        queued = self.lane.recover(frames, more)
        self.asked = 0
        self._advance(SubEvent.ANSWER if self.lane_behind else SubEvent.CATCH_UP)
        return queued

    def give_up(self) -> None:
        """What the lane owes becomes a skipped frame; live messages are queued again."""
        self._advance(SubEvent.GIVE_UP)
        self.lane.give_up()
        self.asked = 0

    def notice_caught_up(self) -> bool:
        """Follow a lane that stopped being behind by itself; True while it still is."""
        self._settle()
        return self.state in _LIVE

    def _settle(self) -> None:
        if self.state in _LIVE and not self.lane_behind:
            self._advance(SubEvent.CATCH_UP)
            self.asked = 0
