"""The topics an edge's clients hold: each one's channel number, subscriptions and position. No I/O.

A topic is in the index from the moment its first local client asks for it until its last one
leaves, and has a channel number for that long; freed channel numbers are reused lowest first.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from edges.core.subscription import Subscription
from router.core.policy import DeliveryPolicy

__all__ = ["Topic", "TopicIndex"]


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
        """A message at ``epoch``:``offset`` arrived. Returns the offsets of a ``reliable`` topic
        that were skipped on the way (never received), if any."""
        if epoch != self.epoch:
            self.epoch, self.offset = epoch, offset
            return None
        if offset <= self.offset:
            return None
        missed = (self.offset + 1, offset - 1) if offset > self.offset + 1 and self.reliable else None
        self.offset = offset
        return missed

    def set_policy(self, policy: DeliveryPolicy) -> bool:
        """Whether ``policy`` is new for the topic."""
        if self.policy == policy:
            return False
        self.policy = policy
        self.reliable = policy.kind == "reliable"
        return True


class TopicIndex:
    """Topics by name and by their UTF-8 bytes (as data frames name them)."""

    def __init__(self) -> None:
        self.by_name: dict[str, Topic] = {}
        self.by_wire: dict[bytes, Topic] = {}
        self._free_channels: list[int] = []
        self._next_channel = 0

    def __len__(self) -> int:
        return len(self.by_name)

    def add(self, name: str) -> Topic:
        if self._free_channels:
            channel = heapq.heappop(self._free_channels)
        else:
            channel, self._next_channel = self._next_channel, self._next_channel + 1
        topic = self.by_name[name] = self.by_wire[name.encode()] = Topic(name, channel)
        return topic

    def remove(self, topic: Topic) -> None:
        del self.by_name[topic.name]
        del self.by_wire[topic.name.encode()]
        heapq.heappush(self._free_channels, topic.channel)
