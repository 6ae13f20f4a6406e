"""A deliberately simple reference model of what ConnectionManager must hold.

Plain dicts, sets and lists, no cleverness: who is on which edge, who watches which topic, where
each topic's sequence stands, what each reliable topic's history holds (a list, trimmed from the
front), each rate-capped topic's token bucket, and which request the limits refuse. Each
``check_*`` method returns the :class:`ErrorCode` the manager must refuse with (or ``None``), in
the manager's documented order; each ``apply_*`` method changes the model and returns the actions
the manager must emit.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from router.core import (
    DEFAULT_POLICY,
    Action,
    ClientDropped,
    DeliveryPolicy,
    DemandChanged,
    ErrorCode,
    HistoryEntry,
    HistoryLimits,
    HistoryView,
    Limits,
    Missing,
    PolicyChanged,
    Recovery,
    RecoveryStatus,
    Resume,
    UnwatchTopic,
    WatchTopic,
    Window,
)
from router.core.history import ENTRY_OVERHEAD, MAX_ENTRY_BYTES


@dataclass(frozen=True)
class Declared:
    """What the registry says about a topic the model may be asked about."""

    max_subscribers: int | None = None
    max_payload_bytes: int | None = None
    content_type: str = "application/octet-stream"
    policy: DeliveryPolicy = DEFAULT_POLICY


@dataclass
class Bucket:
    """A topic's ``ingest_max_rate`` as docs/policies.md states it: ``rate`` tokens a second, at
    most one second's worth (and at least one), full at the start, one token per message."""

    rate: float
    tokens: float = field(init=False)
    stamp: float | None = None
    accepted: list[float] = field(default_factory=list)
    """When each message it let through arrived, oldest first."""

    def __post_init__(self) -> None:
        self.tokens = self.burst

    @property
    def burst(self) -> float:
        return max(1.0, self.rate)

    def token_due(self) -> float | None:
        """When the bucket holds a whole token again (``None`` before its first message)."""
        if self.stamp is None:
            return None
        return self.stamp + max(0.0, 1 - self.tokens) / self.rate

    def take(self, now: float) -> bool:
        if self.stamp is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        self.accepted.append(now)
        return True


TopicFate = Declared | ErrorCode
"""A declared topic, or the code resolving it must fail with (bad_topic, unknown_topic)."""


@dataclass
class History:
    """A topic's history as a plain list: it holds every message after ``start`` up to ``last``."""

    limits: HistoryLimits
    start: int
    last: int
    kept: list[tuple[float, HistoryEntry]] = field(default_factory=list)
    """(time recorded, message), oldest first."""

    def size(self) -> int:
        return sum(len(entry.header) + len(entry.payload) for _, entry in self.kept)

    def view(self) -> HistoryView:
        return HistoryView(self.start, self.last, [entry for _, entry in self.kept])

    def drop_oldest(self) -> None:
        _, entry = self.kept.pop(0)
        self.start = entry.offset

    def restart(self, offset: int) -> None:
        self.kept = []
        self.start = self.last = offset

    def expire(self, now: float) -> None:
        while self.kept and self.kept[0][0] < now - self.limits.max_age:
            self.drop_oldest()

    def trim(self) -> None:
        while len(self.kept) > self.limits.max_messages or self.size() > self.limits.max_bytes:
            self.drop_oldest()

    def record(self, entry: HistoryEntry, now: float) -> None:
        """Age out, break the run if ``entry`` does not follow, keep it unless it is too large."""
        self.expire(now)
        if entry.offset != self.last + 1:
            self.restart(entry.offset - 1)
        if len(entry.header) + len(entry.payload) > min(self.limits.max_bytes, MAX_ENTRY_BYTES):
            self.restart(entry.offset)
            return
        self.kept.append((now, entry))
        self.last = entry.offset
        self.trim()

    def read(self, after: int, upto: int | None = None, budget: int | None = None) -> Window | Missing:
        end = self.last if upto is None else min(upto, self.last)
        if after > self.last or end < after:
            raise ValueError("not a range of this history")
        if after < self.start:
            return Missing(self.start)
        wanted = [entry for _, entry in self.kept if after < entry.offset <= end]
        taken = wanted if budget is None else within_budget(wanted, budget)
        return Window(taken, len(taken) < len(wanted))


@dataclass
class Model:
    limits: Limits
    catalogue: Mapping[str, TopicFate]
    guest_prefix: str
    """Guests may only subscribe to topics starting with this prefix."""
    edge_timeout: float

    edges: dict[str, float] = field(default_factory=dict)
    """edge id -> last time it was heard from."""
    clients: dict[str, str] = field(default_factory=dict)
    """client id -> edge id."""
    guests: set[str] = field(default_factory=set)
    users: dict[str, str] = field(default_factory=dict)
    """client id -> the user its token names (``guest``, else the client id)."""
    subscribers: dict[str, set[str]] = field(default_factory=dict)
    """Every topic the router holds state for (watched or idle) -> its subscribers."""
    positions: dict[str, tuple[int | None, int]] = field(default_factory=dict)
    """topic -> (epoch, last offset); the epoch is None until the manager first reports it."""
    idle: list[str] = field(default_factory=list)
    """Held topics without subscribers, in the order they became idle (evicted first to last)."""
    policies: dict[str, DeliveryPolicy] = field(default_factory=dict)
    histories: dict[str, History] = field(default_factory=dict)
    """Held topics whose policy is reliable -> their history."""
    buckets: dict[str, Bucket] = field(default_factory=dict)
    """Held topics whose policy has an ``ingest_max_rate`` -> their token bucket."""
    used_epochs: set[int] = field(default_factory=set)
    drops: Counter[str] = field(default_factory=Counter)
    messages_in: int = 0
    bytes_in: int = 0
    messages_routed: int = 0
    deliveries: int = 0
    shards: int = 0
    """Cluster mode: the shard count (0: off) and the shards served."""
    served: set[int] = field(default_factory=set)
    rates: dict[str, dict[str, float | None]] = field(default_factory=dict)
    """topic -> each subscriber's own max_rate (None: none)."""
    demands: dict[str, float] = field(default_factory=dict)
    """topic -> the demand last told, when not 0."""

    # ------------------------------------------------------------ views

    def topics_of(self, client_id: str) -> set[str]:
        return {topic for topic, clients in self.subscribers.items() if client_id in clients}

    def clients_of(self, edge_id: str) -> set[str]:
        return {client for client, edge in self.clients.items() if edge == edge_id}

    def watched(self) -> set[str]:
        return {topic for topic, clients in self.subscribers.items() if clients}

    def subscription_count(self) -> int:
        return sum(len(clients) for clients in self.subscribers.values())

    def cap(self, topic: str) -> int:
        declared = self._declared(topic)
        if declared.max_subscribers is not None:
            return declared.max_subscribers
        return self.limits.max_subscribers_per_topic

    def max_payload(self, topic: str) -> int:
        declared = self._declared(topic)
        if declared.max_payload_bytes is not None:
            return declared.max_payload_bytes
        return self.limits.max_payload_bytes

    def policy(self, topic: str) -> DeliveryPolicy:
        return self.policies.get(topic, self._declared(topic).policy)

    def content_type(self, topic: str) -> str:
        return self._declared(topic).content_type

    def _declared(self, topic: str) -> Declared:
        fate = self.catalogue[topic]
        assert isinstance(fate, Declared), f"{topic!r} is not a declared topic"
        return fate

    def _resolve_refusal(self, topic: str) -> ErrorCode | None:
        fate = self.catalogue[topic]
        return fate if isinstance(fate, ErrorCode) else None

    def _owner_refusal(self, topic: str) -> ErrorCode | None:
        if not self.shards or self.shard(topic) in self.served:
            return None
        return ErrorCode.NOT_OWNER

    def shard(self, topic: str) -> int:
        """FNV-1a 32-bit, written out again from docs/cluster.md."""
        value = 0x811C9DC5
        for byte in topic.encode():
            value = ((value ^ byte) * 0x01000193) % 2**32
        return value % self.shards

    def apply_shard_lost(self, shard: int) -> list[Action]:
        """The shard's topics are forgotten; their demand is the next owner's to tell."""
        self.served.discard(shard)
        actions: list[Action] = []
        for topic in sorted(t for t in self.subscribers if self.shard(t) == shard):
            for client_id in sorted(self.subscribers[topic]):
                actions += [a for a in self._remove(client_id, topic) if not isinstance(a, DemandChanged)]
            self.demands.pop(topic, None)
            self.idle.remove(topic)
            del self.subscribers[topic]
            del self.positions[topic]
            self.histories.pop(topic, None)
            self.buckets.pop(topic, None)
        return actions

    def observe_epoch(self, topic: str, epoch: int) -> None:
        """Record the epoch the manager reported; a topic (re)created must get a never-seen one."""
        known, offset = self.positions[topic]
        if known is None:
            assert epoch not in self.used_epochs, f"{topic!r} reuses epoch {epoch}"
            self.used_epochs.add(epoch)
            self.positions[topic] = (epoch, offset)
        else:
            assert epoch == known, f"{topic!r} changed epoch {known} -> {epoch} while held"

    # ------------------------------------------------------------ edges

    def check_hello(self, edge_id: str) -> ErrorCode | None:
        if edge_id not in self.edges and len(self.edges) >= self.limits.max_edges:
            return ErrorCode.LIMIT_EXCEEDED
        return None

    def apply_hello(self, edge_id: str, now: float) -> list[Action]:
        actions = self.apply_edge_lost(edge_id, "edge restarted")
        self.edges[edge_id] = now
        return actions

    def check_heartbeat(self, edge_id: str) -> ErrorCode | None:
        return None if edge_id in self.edges else ErrorCode.UNKNOWN_EDGE

    def apply_heartbeat(self, edge_id: str, now: float) -> None:
        self.edges[edge_id] = now

    def apply_edge_lost(self, edge_id: str, reason: str) -> list[Action]:
        if self.edges.pop(edge_id, None) is None:
            return []
        actions: list[Action] = []
        for client_id in sorted(self.clients_of(edge_id)):
            actions += self._drop_client(client_id)
            actions.append(ClientDropped(client_id, edge_id, reason))
        return actions

    def silent_edges(self, now: float) -> list[str]:
        return [edge for edge, seen in self.edges.items() if seen < now - self.edge_timeout]

    def apply_expire(self, now: float) -> list[Action]:
        actions: list[Action] = []
        for edge_id in self.silent_edges(now):
            actions += self.apply_edge_lost(edge_id, "edge heartbeat timeout")
        return actions

    # ------------------------------------------------------------ clients

    def check_register(self, client_id: str, edge_id: str, token: str | None) -> ErrorCode | None:
        if edge_id not in self.edges:
            return ErrorCode.UNKNOWN_EDGE
        if client_id in self.clients:
            return ErrorCode.DUPLICATE_CLIENT
        if len(self.clients) >= self.limits.max_clients:
            return ErrorCode.LIMIT_EXCEEDED
        if token == "bad":
            return ErrorCode.UNAUTHORIZED
        most = self.limits.max_connections_per_user
        user = _user(client_id, token)
        if most is not None and list(self.users.values()).count(user) >= most:
            return ErrorCode.LIMIT_EXCEEDED
        return None

    def apply_register(self, client_id: str, edge_id: str, token: str | None) -> None:
        self.clients[client_id] = edge_id
        self.users[client_id] = _user(client_id, token)
        if token == "guest":
            self.guests.add(client_id)

    def check_unregister(self, client_id: str) -> ErrorCode | None:
        return None if client_id in self.clients else ErrorCode.UNKNOWN_CLIENT

    def apply_unregister(self, client_id: str) -> list[Action]:
        return self._drop_client(client_id)

    def _drop_client(self, client_id: str) -> list[Action]:
        actions: list[Action] = []
        for topic in sorted(self.topics_of(client_id)):
            actions += self._remove(client_id, topic)
        del self.clients[client_id]
        del self.users[client_id]
        self.guests.discard(client_id)
        return actions

    # ------------------------------------------------------------ subscriptions

    def check_subscribe(self, client_id: str, topic: str) -> ErrorCode | None:
        if client_id not in self.clients:
            return ErrorCode.UNKNOWN_CLIENT
        refusal = self._resolve_refusal(topic) or self._owner_refusal(topic)
        if refusal is not None:
            return refusal
        if client_id in self.guests and not topic.startswith(self.guest_prefix):
            return ErrorCode.FORBIDDEN
        held = self.subscribers.get(topic)
        if held is not None and client_id in held:
            return None
        if len(self.topics_of(client_id)) >= self.limits.max_subscriptions_per_client:
            return ErrorCode.LIMIT_EXCEEDED
        if len(held or ()) >= self.cap(topic):
            return ErrorCode.LIMIT_EXCEEDED
        if held is None and len(self.subscribers) >= self.limits.max_topics and not self.idle:
            return ErrorCode.LIMIT_EXCEEDED
        return None

    def apply_subscribe(self, client_id: str, topic: str, max_rate: float | None = None) -> list[Action]:
        if topic not in self.subscribers:
            self._create(topic)
        self.rates.setdefault(topic, {})[client_id] = max_rate
        held = self.subscribers[topic]
        if client_id in held:
            return self._demand_change(topic)
        held.add(client_id)
        if len(held) == 1:
            self.idle.remove(topic)
            return [WatchTopic(topic), *self._demand_change(topic)]
        return self._demand_change(topic)

    def demand(self, topic: str) -> float:
        """The highest rate a subscriber wants, under the policy's cap, by brute force."""
        held = self.subscribers.get(topic)
        if not held:
            return 0.0
        policy = self.policy(topic)
        if policy.kind == "reliable":
            return math.inf
        cap = math.inf if policy.max_rate is None else policy.max_rate
        wanted = [self.rates[topic][client] for client in held]
        return max(min(cap, math.inf if rate is None else rate) for rate in wanted)

    def _demand_change(self, topic: str) -> list[Action]:
        demand = self.demand(topic)
        if demand == self.demands.get(topic, 0.0):
            return []
        self.demands[topic] = demand
        return [DemandChanged(topic, demand)]

    def check_unsubscribe(self, client_id: str, topic: str) -> ErrorCode | None:
        if client_id not in self.clients:
            return ErrorCode.UNKNOWN_CLIENT
        if client_id not in self.subscribers.get(topic, set()):
            return ErrorCode.NOT_SUBSCRIBED
        return None

    def apply_unsubscribe(self, client_id: str, topic: str) -> list[Action]:
        return self._remove(client_id, topic)

    def _remove(self, client_id: str, topic: str) -> list[Action]:
        held = self.subscribers[topic]
        held.remove(client_id)
        del self.rates[topic][client_id]
        demand = self._demand_change(topic)
        if held:
            return demand
        self.idle.append(topic)
        return [*demand, UnwatchTopic(topic)]

    # ------------------------------------------------------------ topics and routing

    def _create(self, topic: str) -> None:
        if len(self.subscribers) >= self.limits.max_topics:
            evicted = self.idle.pop(0)
            del self.subscribers[evicted]
            del self.positions[evicted]
            self.histories.pop(evicted, None)
            self.buckets.pop(evicted, None)
        self.subscribers[topic] = set()
        self.positions[topic] = (None, 0)
        self.idle.append(topic)
        self._sync_history(topic)
        self._sync_bucket(topic)

    def check_route(self, topic: str, size: int) -> ErrorCode | None:
        if topic not in self.subscribers:
            refusal = self._resolve_refusal(topic) or self._owner_refusal(topic)
            if refusal is not None:
                return refusal
        if size > self.max_payload(topic):
            return ErrorCode.TOO_LARGE
        full = len(self.subscribers) >= self.limits.max_topics and not self.idle
        if topic not in self.subscribers and full:
            return ErrorCode.LIMIT_EXCEEDED
        return None

    def refuse_route(self, code: ErrorCode) -> None:
        """A refused message is a drop, but one of another router's shard: that router may get it."""
        if code is not ErrorCode.NOT_OWNER:
            self.drops[code.value] += 1

    def apply_route(self, topic: str, size: int, now: float) -> tuple[int, frozenset[str], bool]:
        """Place one message; returns its offset, who must receive it and whether to record it.

        A message over the topic's rate gets offset 0, nobody and no record, and is a drop.
        """
        if topic not in self.subscribers:
            self._create(topic)
        bucket = self.buckets.get(topic)
        if bucket is not None and not bucket.take(now):
            self.drops["rate_limited"] += 1
            return 0, frozenset(), False
        epoch, offset = self.positions[topic]
        self.positions[topic] = (epoch, offset + 1)
        receivers = frozenset(self.subscribers[topic])
        self.messages_in += 1
        self.bytes_in += size
        if receivers:
            self.messages_routed += 1
            self.deliveries += len(receivers)
        return offset + 1, receivers, topic in self.histories

    def _sync_bucket(self, topic: str) -> None:
        """A new rate starts a full bucket; the same rate keeps the bucket it has."""
        rate = self.policy(topic).ingest_max_rate
        if rate is None:
            self.buckets.pop(topic, None)
        elif topic not in self.buckets or self.buckets[topic].rate != rate:
            self.buckets[topic] = Bucket(rate)

    # ------------------------------------------------------------ history

    def history_limits(self, topic: str) -> HistoryLimits | None:
        policy = self.policy(topic)
        if policy.kind != "reliable":
            return None
        return HistoryLimits(
            policy.history_max_messages or self.limits.default_history_messages,
            policy.history_max_bytes or self.limits.default_history_bytes,
            policy.history_max_age or self.limits.default_history_age,
        )

    def history_bytes(self) -> int:
        return sum(history.size() for history in self.histories.values())

    def apply_record(self, topic: str, entry: HistoryEntry, now: float) -> int:
        """Record a message; returns how many messages the bound on all histories evicted."""
        self.histories[topic].record(entry, now)
        evicted = 0
        while self.history_bytes() > self.limits.max_history_bytes:
            largest = max(self.histories, key=lambda name: (self.histories[name].size(), name))
            self.histories[largest].drop_oldest()
            evicted += 1
        return evicted

    def apply_expire_history(self, now: float) -> None:
        for history in self.histories.values():
            history.expire(now)

    def history_start(self, topic: str) -> int:
        """How far back recovery reaches: nowhere if the newest message was not recorded."""
        history = self.histories[topic]
        offset = self.positions[topic][1]
        return history.start if history.last == offset else offset

    def _sync_history(self, topic: str) -> None:
        limits = self.history_limits(topic)
        if limits is None:
            self.histories.pop(topic, None)
        elif topic not in self.histories:
            offset = self.positions[topic][1]
            self.histories[topic] = History(limits, offset, offset)
        else:
            self.histories[topic].limits = limits
            self.histories[topic].trim()

    def _edge_holds(self, edge_id: str, topic: str) -> bool:
        return any(self.clients[client] == edge_id for client in self.subscribers.get(topic, ()))

    def check_recover(
        self, edge_id: str, topic: str, epoch: int, after: int, upto: int | None
    ) -> ErrorCode | None:
        if edge_id not in self.edges:
            return ErrorCode.UNKNOWN_EDGE
        refusal = self._resolve_refusal(topic) or self._owner_refusal(topic)
        if refusal is not None:
            return refusal
        if after < 0 or (upto is not None and upto < after):
            return ErrorCode.BAD_REQUEST
        if not self._edge_holds(edge_id, topic):
            return ErrorCode.NOT_SUBSCRIBED
        return self._check_position(topic, epoch, after)

    def _check_position(self, topic: str, epoch: int, after: int) -> ErrorCode | None:
        """bad_request for an offset beyond the newest of the same sequence."""
        if topic not in self.histories:
            return None
        known, offset = self.positions[topic]
        return ErrorCode.BAD_REQUEST if epoch == known and after > offset else None

    def _status(self, topic: str, epoch: int, after: int, now: float) -> RecoveryStatus:
        if topic not in self.subscribers:
            return RecoveryStatus("not_reliable" if self.history_limits(topic) is None else "epoch_changed")
        if topic not in self.histories:
            return RecoveryStatus("not_reliable")
        if epoch != self.positions[topic][0]:
            return RecoveryStatus("epoch_changed")
        self.histories[topic].expire(now)
        return RecoveryStatus("ok" if after >= self.history_start(topic) else "history_exceeded")

    def apply_recover(
        self, topic: str, epoch: int, after: int, upto: int | None, now: float, budget: int
    ) -> Recovery:
        status = self._status(topic, epoch, after, now)
        if topic not in self.histories:
            known = self.positions[topic][0] if topic in self.positions else None
            return Recovery(status, known or 0, 0, [], False)
        known, offset = self.positions[topic]
        assert known is not None
        start = self.history_start(topic)
        if status != "ok":
            return Recovery(status, known, start, [], False)
        end = offset if upto is None else min(upto, offset)
        wanted = [entry for _, entry in self.histories[topic].kept if after < entry.offset <= end]
        taken = within_budget(wanted, budget)
        return Recovery(status, known, start, taken, len(taken) < len(wanted))

    def check_resume(self, topic: str, epoch: int, after: int) -> ErrorCode | None:
        if after < 0:
            return ErrorCode.BAD_REQUEST
        return self._check_position(topic, epoch, after) if topic in self.subscribers else None

    def resume(self, topic: str, epoch: int, after: int, now: float) -> Resume:
        """Judge a resume position, before the subscription it comes with is applied."""
        status = self._status(topic, epoch, after, now)
        if status in ("epoch_changed", "not_reliable"):
            return Resume(status, 0, 0)
        offset = self.positions[topic][1]
        return Resume(status, after if status == "ok" else self.history_start(topic), offset)

    # ------------------------------------------------------------ policies

    def check_set_policy(self, topic: str) -> ErrorCode | None:
        return self._resolve_refusal(topic)

    def apply_set_policy(self, topic: str, policy: DeliveryPolicy) -> list[Action]:
        self.policies[topic] = policy
        if topic in self.subscribers:
            self._sync_history(topic)
            self._sync_bucket(topic)
        edges = frozenset(self.clients[c] for c in self.subscribers.get(topic, set()))
        demand = self._demand_change(topic)
        return [PolicyChanged(topic, policy, edges), *demand] if edges else demand


def _user(client_id: str, token: str | None) -> str:
    return "guest" if token == "guest" else client_id


def within_budget(entries: list[HistoryEntry], budget: int) -> list[HistoryEntry]:
    """The longest prefix whose cost fits ``budget``, but never less than one message."""
    taken: list[HistoryEntry] = []
    for entry in entries:
        cost = sum(len(e.header) + len(e.payload) + ENTRY_OVERHEAD for e in [*taken, entry])
        if taken and cost > budget:
            break
        taken.append(entry)
    return taken
