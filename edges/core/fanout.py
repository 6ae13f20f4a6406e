"""The topics an edge's clients hold, their subscriptions, and the fan-out of data to them. No I/O.

A topic is in the index (and watched: :class:`~edges.core.actions.WatchData`) from the moment its
first local client asks for it until its last one leaves, and has a channel number for that long;
freed channel numbers are reused lowest first. Data fans out to the topic's confirmed
subscriptions: the frame is built once and the same object goes to every one of them.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from edges.core.actions import EdgeAction, UnwatchData, WatchData
from edges.core.catch_up import CatchUp
from edges.core.client_wire import Resume
from edges.core.output import Data, Payload
from edges.core.reports import EdgeCounters
from edges.core.routes import Routes
from edges.core.session import ClientSession
from edges.core.subscription import Subscription, SubState
from router import wire
from router.core.policy import DeliveryPolicy

__all__ = ["Fanout", "Topic"]

_OWING: Final = frozenset({SubState.BEHIND, SubState.ASKING})


@dataclass(eq=False, slots=True)
class Topic:
    name: str
    channel: int
    holders: dict[str, Subscription] = field(default_factory=dict)
    """Every client's subscription, confirmed or not, by client id."""
    receiving: dict[str, Subscription] = field(default_factory=dict)
    """The confirmed ones, which data fans out to."""
    policy: DeliveryPolicy | None = None
    reliable: bool = False
    epoch: int = 0
    """The epoch of the newest message received, or of the first subscription's position."""
    offset: int = 0
    """The newest offset received in :attr:`epoch` (or that position's)."""
    retired_drops: int = 0
    """The drops of the lanes of subscriptions that ended."""

    def drops(self) -> int:
        return self.retired_drops + sum(sub.lane.drops for sub in self.receiving.values())

    def advance(self, epoch: int, offset: int) -> tuple[int, int] | None:
        """A message at ``epoch``:``offset`` arrived. Returns the offsets that were skipped on the
        way (never received), if any."""
        if epoch != self.epoch:
            self.epoch, self.offset = epoch, offset
            return None
        if offset <= self.offset:
            return None
        missed = (self.offset + 1, offset - 1) if offset > self.offset + 1 else None
        self.offset = offset
        return missed

    def set_policy(self, policy: DeliveryPolicy) -> bool:
        """Whether ``policy`` is new for the topic."""
        if self.policy == policy:
            return False
        self.policy = policy
        self.reliable = policy.kind == "reliable"
        return True


class Fanout:
    """Topics by name and by their UTF-8 bytes (as data frames name them), and their subscriptions.

    It shares with the hub the list of actions, the sessions with output, and the counters.
    Sessions that a message found too slow wait in :attr:`too_slow` for the hub to close them.
    """

    def __init__(
        self,
        catch_up: CatchUp,
        frame: Callable[[int, int, Payload], Data],
        actions: list[EdgeAction],
        with_output: dict[str, ClientSession],
        counters: EdgeCounters,
    ) -> None:
        self.by_name: dict[str, Topic] = {}
        self._by_wire: dict[bytes, Topic] = {}
        self._free_channels: list[int] = []
        self._next_channel = 0
        self._catch_up = catch_up
        self._frame = frame
        self._actions = actions
        self._with_output = with_output
        self._counters = counters
        self._now: float | None = None
        self._held: dict[Subscription, None] = {}
        """Subscriptions holding a rate-limited ``latest`` frame, for :meth:`tick`."""
        self.too_slow: list[ClientSession] = []
        self.routes: Routes | None = None
        """With a cluster of routers: learns each topic that comes and goes."""

    def __len__(self) -> int:
        return len(self.by_name)

    # ------------------------------------------------------------ subscriptions

    def join(
        self,
        session: ClientSession,
        name: str,
        client_request: int,
        resume: Resume | None,
        window: int | None,
        max_rate: float | None,
    ) -> Subscription:
        """A new subscription of the client to ``name``, on the topic's channel (watched now if new)."""
        topic = self.by_name.get(name) or self._add(name)
        sub = Subscription(session, name, topic.channel, client_request, resume, window, max_rate)
        topic.holders[session.client_id] = sub
        return sub

    def confirm(self, sub: Subscription, ok: wire.SubscribeOk) -> None:
        """The router accepted ``sub``: data flows to it from after the position ``ok`` announces,
        and a ``reliable`` one owes what the history should replay."""
        topic = self.by_name[sub.topic]
        self._set_policy(topic, ok.policy)
        sub.confirm(ok.policy, ok.epoch, ok.offset)
        if topic.epoch != ok.epoch:
            self._new_epoch(topic, ok.epoch, ok.offset)
        topic.receiving[sub.client_id] = sub
        if self._catch_up.owe_from_start(sub, ok, topic.offset):
            self._with_output[sub.client_id] = sub.session

    def reconfirm(self, sub: Subscription, ok: wire.SubscribeOk) -> None:
        """The router accepted ``sub`` again, after it restarted or lost this edge: what it owed is
        given up. A restarted router's new epoch is told (:meth:`_new_epoch`); in the same epoch,
        what was published while the router did not know the client never reached it: a
        ``reliable`` topic owes it from the history, the others skip it (``not received``)."""
        topic = self.by_name[sub.topic]
        self._set_policy(topic, ok.policy)
        sub.reconfirm(ok.epoch, ok.offset)
        self._catch_up.discard(sub)
        if topic.epoch != ok.epoch:
            self._new_epoch(topic, ok.epoch, ok.offset)
        elif ok.offset > topic.offset:
            first, last = topic.offset + 1, ok.offset
            topic.offset = ok.offset
            if topic.reliable:
                if self._catch_up.owe(sub, first, last, ok.epoch):
                    self._with_output[sub.client_id] = sub.session
            else:
                sub.lane.missed(first, last)

    def moved(self, sub: Subscription, ok: wire.SubscribeOk) -> None:
        """The new owner of the topic's shard accepted ``sub`` (a cluster). A sequence it continues
        (a ``reliable`` topic keeps its epoch and offsets across owners) continues for the
        subscription too: what its lane owes stays owed, and what never reached the edge is owed
        by every subscriber, or skipped (``not received``), as for any gap. A sequence it started
        anew is told as a restart, and what the lane owed is given up."""
        topic = self.by_name[sub.topic]
        self._set_policy(topic, ok.policy)
        if topic.epoch != ok.epoch:
            sub.reconfirm(ok.epoch, ok.offset)
            self._catch_up.discard(sub)
            self._new_epoch(topic, ok.epoch, ok.offset)
        elif ok.offset > topic.offset:
            first, last = topic.offset + 1, ok.offset
            topic.offset = ok.offset
            self._missed(topic, ok.epoch, first, last)

    def position(self, sub: Subscription) -> tuple[int, int]:
        """The epoch and offset of the last message the edge handed ``sub`` (or that it owes up to
        the first it misses), from which it continues at another router."""
        topic = self.by_name[sub.topic]
        if sub.lane_behind:
            return sub.behind_epoch if sub.state in _OWING else topic.epoch, sub.owed[0] - 1
        if sub.start_epoch == topic.epoch:
            return topic.epoch, max(topic.offset, sub.start_offset)
        return topic.epoch, topic.offset

    def leave(self, sub: Subscription) -> None:
        """End ``sub``; its queued data goes, and the topic with its last subscription."""
        topic = self.by_name[sub.topic]
        del topic.holders[sub.client_id]
        topic.receiving.pop(sub.client_id, None)
        topic.retired_drops += sub.leave()
        self._held.pop(sub, None)
        self._catch_up.discard(sub)
        if not topic.holders:
            del self.by_name[topic.name]
            del self._by_wire[topic.name.encode()]
            heapq.heappush(self._free_channels, topic.channel)
            self._actions.append(UnwatchData(topic.name))
            if self.routes is not None:
                self.routes.topic_removed(topic.name)

    def _add(self, name: str) -> Topic:
        if self._free_channels:
            channel = heapq.heappop(self._free_channels)
        else:
            channel, self._next_channel = self._next_channel, self._next_channel + 1
        topic = self.by_name[name] = self._by_wire[name.encode()] = Topic(name, channel)
        self._actions.append(WatchData(name))
        if self.routes is not None:
            self.routes.topic_added(name)
        return topic

    def set_policy(self, name: str, policy: DeliveryPolicy) -> None:
        """The router changed the topic's policy (ignored for a topic no client holds)."""
        topic = self.by_name.get(name)
        if topic is not None:
            self._set_policy(topic, policy)

    def _set_policy(self, topic: Topic, policy: DeliveryPolicy) -> None:
        """The topic's policy, applied at once to its subscriptions."""
        if not topic.set_policy(policy):
            return
        for sub in list(topic.receiving.values()):
            if sub.set_policy(policy):
                self._attend(sub, topic)
            if sub.session.has_output:
                self._with_output[sub.client_id] = sub.session

    # ------------------------------------------------------------ data

    def deliver(
        self, topic: bytes, epoch: int, offset: int, payload: Payload, now: float | None = None
    ) -> int:
        """Fan one message out to the topic's confirmed subscribers; returns to how many.

        Each subscription's lane queues, holds or skips the frame under the topic's policy. A
        subscriber skips messages at or before the position its ``subscribed`` announced in the
        same epoch. ``now`` (seconds) drives rate limits; without it the last time given is used,
        and no rate limit applies before any was given.
        """
        state = self._by_wire.get(topic)
        if state is None:
            self._counters.unexpected_data += 1
            return 0
        if now is None:
            now = self._now
        else:
            self._now = now
        if epoch != state.epoch and state.epoch:
            self._new_epoch(state, epoch, offset - 1)
        missed = state.advance(epoch, offset)
        if missed is not None:
            self._missed(state, epoch, *missed)
        frame = self._frame(state.channel, offset, payload)
        with_output = self._with_output
        count = 0
        for sub in state.receiving.values():
            if offset <= sub.start_offset and epoch == sub.start_epoch:
                continue
            if sub.lane.push(frame, now):
                self._attend(sub, state)
            with_output[sub.client_id] = sub.session
            count += 1
        self._counters.delivered += count
        return count

    def _new_epoch(self, topic: Topic, epoch: int, offset: int) -> None:
        """The topic's sequence started over in ``epoch`` (the router restarted), at ``offset``:
        each subscriber of the old one is told before its next frame."""
        for sub in topic.receiving.values():
            sub.lane.restarted(epoch)
            self._with_output[sub.client_id] = sub.session
        topic.epoch, topic.offset = epoch, offset

    def _missed(self, topic: Topic, epoch: int, first: int, last: int) -> None:
        """Offsets ``first`` to ``last`` of ``epoch`` never reached the edge: a ``reliable`` topic's
        subscribers get them from the history, the others a skip that says so (from after the
        position each one's ``subscribed`` announced)."""
        if topic.reliable:
            for sub in self._catch_up.gap(topic.receiving.values(), epoch, first, last):
                self._with_output[sub.client_id] = sub.session
            return
        for sub in topic.receiving.values():
            start = max(first, sub.start_offset + 1) if sub.start_epoch == epoch else first
            if start <= last:
                sub.lane.missed(start, last)

    def _attend(self, sub: Subscription, topic: Topic) -> None:
        """A subscription asked to be looked at: it holds a frame for later, fell behind, or its
        client is too slow."""
        if sub.session.too_slow:
            self.too_slow.append(sub.session)
        if sub.held:
            self._held[sub] = None
        if sub.lane_behind:
            self._catch_up.fell_behind(sub, topic.epoch)

    def tick(self, now: float) -> float | None:
        """Time passed: queue the rate-limited ``latest`` frames whose token came. Returns when
        to call again, or ``None`` when no frame is held."""
        self._now = now
        if not self._held:
            return None
        due = math.inf
        for sub in list(self._held):
            again = sub.release(now)
            session = sub.session
            if session.too_slow:
                self.too_slow.append(session)
            if again is not None:
                due = min(due, again)
                continue
            del self._held[sub]
            if session.has_output:
                self._with_output[session.client_id] = session
        return None if due == math.inf else max(due, now)
