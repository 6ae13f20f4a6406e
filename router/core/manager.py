"""ConnectionManager: every edge, client, subscription and policy the router knows of.

It is a plain object: no sockets, no clock, no event loop. Each method takes its inputs (the time
among them when it matters) and either returns what must happen next — actions for the process
around it to carry out — or raises :class:`~router.core.errors.RefusedError` and changes nothing.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import msgspec

from router.core.clients import ClientInfo
from router.core.edge_reports import (
    ClientFigures,
    DropIncrease,
    EdgeFigures,
    EdgeTotals,
    add_totals,
    drop_increases,
)
from router.core.errors import ErrorCode, RecoveryStatus, RefusedError
from router.core.history import (
    RECOVER_BATCH_BYTES,
    HistoryEntry,
    HistoryLimits,
    HistoryTotal,
    Missing,
    TopicHistory,
)
from router.core.policy import DeliveryPolicy
from router.core.sessions import AllowAllSessions, Identity, SessionManager
from router.core.shards import shard_of
from router.core.token_bucket import TokenBucket
from router.core.topics import TopicRegistry, TopicSpec, decode_topic
from router.core.views import ClientView, EdgeView, HistorySize, TopicView

__all__ = [
    "RATE_LIMITED",
    "SESSION_EXPIRED",
    "Action",
    "ClientDropped",
    "ConnectionManager",
    "ConnectionStats",
    "DemandChanged",
    "EdgeStatus",
    "HistoryView",
    "Limits",
    "PolicyChanged",
    "Recovery",
    "RecoveryStatus",
    "Resume",
    "Route",
    "Subscribed",
    "TokenRefresh",
    "TopicCounters",
    "UnwatchTopic",
    "WatchTopic",
]


# ---------------------------------------------------------------- limits and results


class Limits(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Bounds on what the router holds. Every one is configurable (``[limits]`` in the config)."""

    max_edges: int = 1_000
    max_clients: int = 100_000
    max_subscriptions_per_client: int = 256
    max_subscribers_per_topic: int = 100_000
    max_connections_per_user: int | None = None
    """Clients registered at once under one user name (``anonymous`` is one user); ``None``: no cap."""
    max_topics: int = 100_000
    max_payload_bytes: int = 16 * 1024 * 1024
    max_history_bytes: int = 256 * 1024 * 1024
    """Header and payload bytes kept in every topic's history together."""
    default_history_messages: int = 10_000
    """A reliable topic's history bound when its policy leaves ``history_max_messages`` at 0."""
    default_history_bytes: int = 64 * 1024 * 1024
    default_history_age: float = 300.0

    def __post_init__(self) -> None:
        if min(self.max_history_bytes, self.default_history_messages, self.default_history_bytes) < 1:
            raise ValueError("history limits must be at least 1")
        if not self.default_history_age > 0:
            raise ValueError("default_history_age must be positive")
        if self.max_connections_per_user is not None and self.max_connections_per_user < 0:
            raise ValueError("max_connections_per_user must not be negative")

    def history_limits(self, policy: DeliveryPolicy) -> HistoryLimits | None:
        """The bounds of a topic's history under ``policy``: ``None`` unless it is reliable, and
        each bound the policy leaves at 0 takes its ``default_history_*`` value."""
        if policy.kind != "reliable":
            return None
        return HistoryLimits(
            policy.history_max_messages or self.default_history_messages,
            policy.history_max_bytes or self.default_history_bytes,
            policy.history_max_age or self.default_history_age,
        )


class WatchTopic(NamedTuple):
    """The topic gained its first subscriber: ask producers for it upstream."""

    topic: str


class UnwatchTopic(NamedTuple):
    """The topic lost its last subscriber: producers may stop sending it."""

    topic: str


class ClientDropped(NamedTuple):
    """The router dropped a client without its edge asking: its edge was lost, or its session
    ended (reason :data:`SESSION_EXPIRED`)."""

    client_id: str
    edge_id: str
    reason: str


class PolicyChanged(NamedTuple):
    """A topic's policy changed: tell these edges, which hold its subscribers."""

    topic: str
    policy: DeliveryPolicy
    edge_ids: frozenset[str]


class DemandChanged(NamedTuple):
    """The most messages per second any subscriber of the topic wants changed: tell producers.
    ``rate`` is 0 when nobody watches the topic, and ``math.inf`` when some subscriber takes
    every message (:meth:`ConnectionManager.get_demand`)."""

    topic: str
    rate: float


Action = WatchTopic | UnwatchTopic | ClientDropped | PolicyChanged | DemandChanged


class Resume(NamedTuple):
    """Whether a subscriber's position can be resumed, and what can be recovered now: the messages
    after ``after`` up to ``upto`` (both 0 unless the status is ``ok`` or ``history_exceeded``)."""

    status: RecoveryStatus
    after: int
    upto: int


class Subscribed(NamedTuple):
    """A granted subscription: where the topic's sequence stands now, and how it is delivered.

    ``resume`` answers the position the subscriber asked to resume from, if it asked.
    """

    topic: str
    epoch: int
    offset: int
    policy: DeliveryPolicy
    content_type: str
    actions: list[Action]
    resume: Resume | None = None


class Recovery(NamedTuple):
    """The answer to :meth:`ConnectionManager.recover`.

    With status ``ok``, ``messages`` are the messages asked for, in order; ``more`` says the byte
    budget stopped them early and the rest comes from asking again after the last one. Otherwise
    ``messages`` is empty. ``start`` is the smallest ``from_offset`` the history answers now (for
    ``history_exceeded``: how far back it still reaches). ``epoch`` is the topic's epoch now.
    """

    status: RecoveryStatus
    epoch: int
    start: int
    messages: list[HistoryEntry]
    more: bool


SESSION_EXPIRED = "token expired"
"""The reason of a :class:`ClientDropped` whose session ended at its identity's ``expires_at``."""


class TokenRefresh(NamedTuple):
    """A client's new identity after :meth:`ConnectionManager.refresh_client`. ``revoked``: its
    subscriptions the new identity does not allow, which ended; ``actions`` come with them."""

    identity: Identity
    revoked: tuple[str, ...]
    actions: list[Action]


RATE_LIMITED = "rate_limited"
"""The drop reason of a message over its topic's ``ingest_max_rate``."""


class Route(NamedTuple):
    """Where one message goes: its place in the topic's sequence and who receives it.

    ``keeps_history``: hand the message to :meth:`ConnectionManager.record` too. Offset 0 means
    the message was dropped for the topic's ``ingest_max_rate``: it has no place in the sequence
    and goes to nobody.
    """

    topic: str
    epoch: int
    offset: int
    clients: frozenset[str]
    keeps_history: bool = False

    @property
    def accepted(self) -> bool:
        return self.offset > 0


class HistoryView(NamedTuple):
    """What a topic's history holds: every message after ``start`` up to ``last``."""

    start: int
    last: int
    entries: list[HistoryEntry]


class ConnectionStats(msgspec.Struct, kw_only=True):
    """Counters over the router's whole life, and the current sizes."""

    edges: int
    clients: int
    topics: int
    subscriptions: int
    messages_in: int
    bytes_in: int
    messages_routed: int
    deliveries: int
    drops: dict[str, int]
    history_messages: int = 0
    history_bytes: int = 0
    edge_delivered: int = 0
    """The rest adds up what the edges reported last (:mod:`router.core.edge_reports`)."""
    edge_queued_messages: int = 0
    edge_queued_bytes: int = 0
    edge_drops: dict[str, int] = {}


class TopicCounters(NamedTuple):
    """One topic's messages and payload bytes accepted since the router created its state."""

    topic: str
    messages_in: int
    bytes_in: int
    subscribers: int


class EdgeStatus(NamedTuple):
    """One known edge: its clients now, and when it was last heard from (the router's clock)."""

    edge_id: str
    protocol: str
    clients: int
    last_seen: float


# ---------------------------------------------------------------- internal state


@dataclass(eq=False)
class _Topic:
    name: str
    spec: TopicSpec
    epoch: int
    max_payload: int
    offset: int = 0
    subscribers: set[str] = field(default_factory=set)
    snapshot: frozenset[str] = frozenset()
    messages: int = 0
    bytes: int = 0
    history: TopicHistory | None = None
    keeps_history: bool = False
    bucket: TokenBucket | None = None
    """Applies the policy's ``ingest_max_rate``; ``None`` without one."""
    shard: int = 0
    """The topic's shard in cluster mode (:meth:`ConnectionManager.serve_shards`), else 0."""
    deferred: int = 0
    """Routed messages whose recording waits (:meth:`ConnectionManager.defer_record`)."""
    client_rates: dict[str, float] = field(default_factory=dict)
    """Each subscriber's own ``max_rate`` (``math.inf`` without one)."""
    wanted: Counter[float] = field(default_factory=Counter)
    """How many subscribers want each rate: the demand is the highest, under the policy's cap."""
    demand: float = 0.0
    """The demand last told to producers."""

    @property
    def published(self) -> int:
        """The last offset clients can have: those deferred are not published yet."""
        return self.offset - self.deferred

    def resnapshot(self) -> None:
        self.snapshot = frozenset(self.subscribers)


@dataclass(eq=False)
class _Client:
    info: ClientInfo
    identity: Identity
    topics: set[str] = field(default_factory=set)


@dataclass(eq=False)
class _Edge:
    edge_id: str
    protocol: str
    last_seen: float
    connected_at: float
    clients: set[str] = field(default_factory=set)
    topics: dict[str, int] = field(default_factory=dict)
    """topic -> how many of this edge's clients are subscribed to it (never 0)."""
    figures: EdgeFigures = field(default_factory=EdgeFigures)


def _too_large(topic: str, most: int) -> RefusedError:
    return RefusedError(ErrorCode.TOO_LARGE, f"payload over {most} bytes on {topic!r}")


def _check_range(after: int, upto: int | None) -> None:
    if after < 0:
        raise RefusedError(ErrorCode.BAD_REQUEST, f"offset {after} is negative")
    if upto is not None and upto < after:
        raise RefusedError(ErrorCode.BAD_REQUEST, f"a range cannot end at {upto}, before {after}")


# ---------------------------------------------------------------- the manager


class ConnectionManager:
    """The router's single source of truth for clients, subscriptions and policies."""

    def __init__(
        self,
        registry: TopicRegistry | None = None,
        sessions: SessionManager | None = None,
        limits: Limits | None = None,
        *,
        new_epoch: Callable[[], int] | None = None,
    ) -> None:
        """``new_epoch`` gives each new topic state its epoch (1 to 2**32 - 1). The router process
        passes a random one, so that a restart shows as a new epoch; by default epochs count from
        1, which only suits a manager that lives as long as its clients."""
        self.registry = registry or TopicRegistry.open()
        self.sessions: SessionManager = sessions or AllowAllSessions()
        self.limits = limits or Limits()
        self._new_epoch = new_epoch or itertools.count(1).__next__
        self._edges: dict[str, _Edge] = {}
        self._clients: dict[str, _Client] = {}
        self._users: Counter[str] = Counter()
        """user -> how many of its clients are registered (never 0)."""
        self._expiries: list[tuple[float, int, _Client]] = []
        """A heap of sessions by ``expires_at``; an entry is stale once its client is gone or has
        another identity, and is then skipped."""
        self._expiry_order = itertools.count()
        self._topics: dict[str, _Topic] = {}
        self._wire_topics: dict[bytes, _Topic] = {}
        self._idle_topics: dict[str, None] = {}
        self._histories: dict[str, TopicHistory] = {}
        self._history_total = HistoryTotal()
        self._policies: dict[str, DeliveryPolicy] = {}
        self._drops: Counter[str] = Counter()
        self._messages_in = 0
        self._bytes_in = 0
        self._messages_routed = 0
        self._deliveries = 0
        self._served: bytearray | None = None
        """Cluster mode: 1 for each shard this router serves; ``None``: every topic is served."""

    # ------------------------------------------------------------ edges

    def edge_hello(self, edge_id: str, protocol: str, now: float) -> list[Action]:
        """An edge (re)introduced itself. A known edge saying hello again starts afresh: the
        clients it had are dropped, since it is about to register the ones it still has."""
        actions: list[Action] = []
        if edge_id in self._edges:
            actions = self.edge_lost(edge_id, "edge restarted")
        elif len(self._edges) >= self.limits.max_edges:
            raise RefusedError(ErrorCode.LIMIT_EXCEEDED, f"at most {self.limits.max_edges} edges")
        self._edges[edge_id] = _Edge(edge_id, protocol, now, now)
        return actions

    def edge_heartbeat(self, edge_id: str, now: float) -> None:
        """The edge is alive. Raises ``unknown_edge`` when it must say hello first."""
        self._edge(edge_id).last_seen = now

    def is_edge_known(self, edge_id: str) -> bool:
        return edge_id in self._edges

    def edge_ids(self) -> list[str]:
        return list(self._edges)

    def edge_lost(self, edge_id: str, reason: str) -> list[Action]:
        """Forget an edge and every client on it."""
        edge = self._edges.pop(edge_id, None)
        if edge is None:
            return []
        actions: list[Action] = []
        for client_id in sorted(edge.clients):
            actions += self._drop_client(client_id)
            actions.append(ClientDropped(client_id, edge_id, reason))
        return actions

    def expire_edges(self, now: float, timeout: float) -> list[Action]:
        """Forget every edge silent for longer than ``timeout`` seconds."""
        deadline = now - timeout
        silent = [e.edge_id for e in self._edges.values() if e.last_seen < deadline]
        actions: list[Action] = []
        for edge_id in silent:
            actions += self.edge_lost(edge_id, "edge heartbeat timeout")
        return actions

    def _edge(self, edge_id: str) -> _Edge:
        edge = self._edges.get(edge_id)
        if edge is None:
            raise RefusedError(ErrorCode.UNKNOWN_EDGE, f"edge {edge_id!r} must say hello first")
        return edge

    # ------------------------------------------------------------ clients

    def register_client(self, info: ClientInfo, token: str | None = None, unix_time: float = 0.0) -> Identity:
        """Authenticate and add a client of a known edge; returns who it is.

        ``unix_time`` (seconds since the Unix epoch) is what the session manager checks token
        lifetimes against; the router process always gives it.
        """
        edge = self._edge(info.edge_id)
        if info.client_id in self._clients:
            raise RefusedError(ErrorCode.DUPLICATE_CLIENT, f"{info.client_id!r} is registered")
        if len(self._clients) >= self.limits.max_clients:
            raise RefusedError(ErrorCode.LIMIT_EXCEEDED, f"at most {self.limits.max_clients} clients")
        identity = self.sessions.authenticate(info, token, unix_time)
        self._check_user_limit(identity.user)
        client = self._clients[info.client_id] = _Client(info, identity)
        self._users[identity.user] += 1
        edge.clients.add(info.client_id)
        self._schedule_expiry(client)
        return identity

    def _check_user_limit(self, user: str) -> None:
        most = self.limits.max_connections_per_user
        if most is not None and self._users[user] >= most:
            raise RefusedError(ErrorCode.LIMIT_EXCEEDED, f"at most {most} connections per user")

    def refresh_client(self, client_id: str, token: str, unix_time: float) -> TokenRefresh:
        """Give a client the identity of a new token, which must name the same user (else
        ``unauthorized``). Its subscriptions that the new identity does not allow end."""
        client = self._client(client_id)
        identity = self.sessions.authenticate(client.info, token, unix_time)
        if identity.user != client.identity.user:
            raise RefusedError(ErrorCode.UNAUTHORIZED, "the new token is for another user")
        revoked = tuple(sorted(t for t in client.topics if not self.sessions.authorize(identity, t)))
        actions: list[Action] = []
        for topic in revoked:
            actions += self._remove_subscriber(self._topics[topic], client)
        client.identity = identity
        self._schedule_expiry(client)
        return TokenRefresh(identity, revoked, actions)

    def expire_sessions(self, unix_time: float) -> list[Action]:
        """End every client whose identity's ``expires_at`` is at or before ``unix_time``, with its
        subscriptions; each gets a :class:`ClientDropped` (reason :data:`SESSION_EXPIRED`)."""
        actions: list[Action] = []
        heap = self._expiries
        while heap and heap[0][0] <= unix_time:
            expires_at, _, client = heapq.heappop(heap)
            client_id = client.info.client_id
            if self._clients.get(client_id) is client and client.identity.expires_at == expires_at:
                actions += self.unregister_client(client_id)
                actions.append(ClientDropped(client_id, client.info.edge_id, SESSION_EXPIRED))
        return actions

    def _schedule_expiry(self, client: _Client) -> None:
        expires_at = client.identity.expires_at
        if expires_at is None:
            return
        if len(self._expiries) > 2 * len(self._clients) + 64:
            self._expiries = [
                (c.identity.expires_at, next(self._expiry_order), c)
                for c in self._clients.values()
                if c.identity.expires_at is not None and c is not client
            ]
            heapq.heapify(self._expiries)
        heapq.heappush(self._expiries, (expires_at, next(self._expiry_order), client))

    def unregister_client(self, client_id: str) -> list[Action]:
        """Remove a client and all its subscriptions."""
        client = self._client(client_id)
        actions = self._drop_client(client_id)
        edge = self._edges.get(client.info.edge_id)
        if edge is not None:
            edge.clients.discard(client_id)
        return actions

    def get_active_clients(self, edge_id: str | None = None) -> list[ClientInfo]:
        """Every registered client, or only those of one edge."""
        return [c.info for c in self._clients.values() if edge_id is None or c.info.edge_id == edge_id]

    def client_edge(self, client_id: str) -> str | None:
        """The edge a client is on, or ``None`` for an unknown client."""
        client = self._clients.get(client_id)
        return client.info.edge_id if client is not None else None

    def get_client_topics(self, client_id: str) -> frozenset[str]:
        return frozenset(self._client(client_id).topics)

    def _client(self, client_id: str) -> _Client:
        client = self._clients.get(client_id)
        if client is None:
            raise RefusedError(ErrorCode.UNKNOWN_CLIENT, f"no client {client_id!r}")
        return client

    def _drop_client(self, client_id: str) -> list[Action]:
        client = self._clients.pop(client_id)
        user = client.identity.user
        self._users[user] -= 1
        if not self._users[user]:
            del self._users[user]
        edge = self._edges.get(client.info.edge_id)
        if edge is not None:
            edge.figures.forget_client(client_id)
        actions: list[Action] = []
        for topic in sorted(client.topics):
            actions += self._remove_subscriber(self._topics[topic], client)
        return actions

    # ------------------------------------------------------------ subscriptions

    def subscribe(
        self,
        client_id: str,
        topic: str,
        resume: tuple[int, int] | None = None,
        now: float = 0.0,
        max_rate: float | None = None,
    ) -> Subscribed:
        """Subscribe a client to one exact topic. Subscribing again is harmless, and replaces the
        subscriber's ``max_rate``.

        ``resume`` is the ``(epoch, offset)`` of the last message the subscriber has; the answer's
        ``resume`` then says whether the messages after it can be recovered (``now`` ages the
        history first). A resume offset that is negative, or beyond the topic's last offset in
        the same epoch, is refused as ``bad_request``. ``max_rate``: the most messages per second
        the subscriber wants (its edge applies it); it counts in the topic's demand.
        """
        if max_rate is not None and not 0 < max_rate < math.inf:
            raise RefusedError(ErrorCode.BAD_REQUEST, f"max_rate must be a positive number, not {max_rate}")
        client = self._client(client_id)
        spec = self.registry.resolve(topic)
        shard = self._check_served(topic)
        if not self.sessions.authorize(client.identity, topic):
            raise RefusedError(ErrorCode.FORBIDDEN, f"{client.identity.user!r} may not read {topic!r}")
        state = self._topics.get(topic)
        joining = state is None or client_id not in state.subscribers
        if joining:
            self._check_subscribe_limits(client, spec, state)
        resumed = self._resume(topic, state, resume, now) if resume is not None else None
        actions: list[Action] = []
        if joining:
            state = state or self._create_topic(topic, spec, shard)
            actions = self._add_subscriber(state, client)
        assert state is not None
        self._want(state, client_id, math.inf if max_rate is None else max_rate)
        actions += self._demand_changes(state)
        policy = self.get_delivery_policy(topic)
        return Subscribed(topic, state.epoch, state.published, policy, spec.content_type, actions, resumed)

    def _resume(self, topic: str, state: _Topic | None, resume: tuple[int, int], now: float) -> Resume:
        epoch, after = resume
        _check_range(after, None)
        status = self._position_status(topic, state, epoch, after, now)
        if state is None or status in (RecoveryStatus.EPOCH_CHANGED, RecoveryStatus.NOT_RELIABLE):
            return Resume(status, 0, 0)
        start = self._history_start(state)
        return Resume(status, after if status is RecoveryStatus.OK else start, state.published)

    def unsubscribe(self, client_id: str, topic: str) -> list[Action]:
        """End one subscription of a client."""
        client = self._client(client_id)
        if topic not in client.topics:
            raise RefusedError(ErrorCode.NOT_SUBSCRIBED, f"{client_id!r} is not on {topic!r}")
        return self._remove_subscriber(self._topics[topic], client)

    def get_clients_for_topic(self, topic: str) -> frozenset[str]:
        """The clients subscribed to exactly ``topic``."""
        state = self._topics.get(topic)
        return state.snapshot if state is not None else frozenset()

    def watched_topics(self) -> list[str]:
        """Topics with at least one subscriber: what producers are asked for upstream."""
        return [name for name, state in self._topics.items() if state.subscribers]

    def _check_subscribe_limits(self, client: _Client, spec: TopicSpec, state: _Topic | None) -> None:
        most = self.limits.max_subscriptions_per_client
        if len(client.topics) >= most:
            raise RefusedError(ErrorCode.LIMIT_EXCEEDED, f"at most {most} subscriptions per client")
        cap = spec.max_subscribers
        if cap is None:
            cap = self.limits.max_subscribers_per_topic
        if len(state.subscribers if state is not None else ()) >= cap:
            raise RefusedError(ErrorCode.LIMIT_EXCEEDED, f"at most {cap} subscribers on this topic")
        if state is None and len(self._topics) >= self.limits.max_topics and not self._idle_topics:
            raise RefusedError(ErrorCode.LIMIT_EXCEEDED, f"at most {self.limits.max_topics} topics")

    def _add_subscriber(self, state: _Topic, client: _Client) -> list[Action]:
        first = not state.subscribers
        state.subscribers.add(client.info.client_id)
        state.resnapshot()
        client.topics.add(state.name)
        topics = self._edges[client.info.edge_id].topics
        topics[state.name] = topics.get(state.name, 0) + 1
        if first:
            self._idle_topics.pop(state.name, None)
            return [WatchTopic(state.name)]
        return []

    def _remove_subscriber(self, state: _Topic, client: _Client) -> list[Action]:
        state.subscribers.discard(client.info.client_id)
        state.resnapshot()
        client.topics.discard(state.name)
        edge = self._edges.get(client.info.edge_id)
        if edge is not None:
            edge.topics[state.name] -= 1
            if not edge.topics[state.name]:
                del edge.topics[state.name]
        self._unwant(state, client.info.client_id)
        demand = self._demand_changes(state)
        if state.subscribers:
            return demand
        self._idle_topics[state.name] = None
        return [*demand, UnwatchTopic(state.name)]

    # ------------------------------------------------------------ demand

    def get_demand(self, topic: str) -> float:
        """The most messages per second any subscriber of ``topic`` wants: the highest of their
        own ``max_rate``, capped by the policy's ``max_rate``; ``math.inf`` when one of them takes
        every message (no cap, or a ``reliable`` topic, which has no rate); 0 when nobody
        watches."""
        state = self._topics.get(topic)
        return 0.0 if state is None else state.demand

    def demands(self) -> list[tuple[str, float]]:
        """Every watched topic's demand."""
        return [(name, state.demand) for name, state in self._topics.items() if state.subscribers]

    def _want(self, state: _Topic, client_id: str, rate: float) -> None:
        self._unwant(state, client_id)
        state.client_rates[client_id] = rate
        state.wanted[rate] += 1

    def _unwant(self, state: _Topic, client_id: str) -> None:
        rate = state.client_rates.pop(client_id, None)
        if rate is not None:
            state.wanted[rate] -= 1
            if not state.wanted[rate]:
                del state.wanted[rate]

    def _demand_changes(self, state: _Topic) -> list[Action]:
        demand = 0.0
        if state.wanted:
            policy = self.get_delivery_policy(state.name)
            demand = max(state.wanted)
            if policy.kind == "reliable":
                demand = math.inf
            elif policy.max_rate is not None:
                demand = min(demand, policy.max_rate)
        if demand == state.demand:
            return []
        state.demand = demand
        return [DemandChanged(state.name, demand)]

    # ------------------------------------------------------------ topics and routing

    def _create_topic(self, name: str, spec: TopicSpec, shard: int) -> _Topic:
        """A new topic state, in ``shard`` (which :meth:`_check_served` gave)."""
        if len(self._topics) >= self.limits.max_topics:
            self._evict_idle_topic()
        state = _Topic(name, spec, self._new_epoch(), self._max_payload(spec), shard=shard)
        self._topics[name] = state
        self._wire_topics[name.encode()] = state
        self._idle_topics[name] = None
        self._sync_history(state)
        self._sync_rate(state)
        return state

    def _max_payload(self, spec: TopicSpec) -> int:
        most = spec.max_payload_bytes
        return most if most is not None else self.limits.max_payload_bytes

    def _evict_idle_topic(self) -> None:
        self._forget_topic(self._topics[next(iter(self._idle_topics))])

    def _forget_topic(self, state: _Topic) -> None:
        """Forget an idle topic's state: its sequence and history."""
        del self._idle_topics[state.name]
        self._drop_history(self._topics.pop(state.name))
        del self._wire_topics[state.name.encode()]

    def route_data(self, topic: str, payload: bytes, header: bytes = b"", now: float = 0.0) -> Route:
        """Place one message from a producer in its topic's sequence, and record it in the topic's
        history if it keeps one: :meth:`route_wire` and :meth:`record` in one call."""
        route = self.route_wire(topic.encode("utf-8", "surrogatepass"), len(payload), now)
        if route.keeps_history:
            self.record(route.topic, route.offset, header, payload, now)
        return route

    def route_wire(self, raw_topic: bytes, size: int, now: float = 0.0) -> Route:
        """Route a message of ``size`` payload bytes whose topic is still the producer's bytes,
        received at time ``now`` (seconds of a monotonic clock; only a rate-capped topic uses it).

        This is the router's hot path: a known topic costs one dict look-up.

        Raises ``bad_topic``, ``unknown_topic``, ``too_large`` or ``limit_exceeded``; each such
        refusal is counted as a drop under its code. In cluster mode it also raises ``not_owner``,
        not counted: the caller forwards the message to the shard's owner, or counts the drop. A
        message over the topic's
        ``ingest_max_rate`` is not an error: it is counted as a ``rate_limited`` drop and its
        route has offset 0, no clients and no history, so a caller that sends to ``clients`` and
        records when ``keeps_history`` needs nothing more.
        """
        state = self._wire_topics.get(raw_topic)
        try:
            if state is None:
                state = self._topic_for_producer(raw_topic, size)
            elif size > state.max_payload:
                raise _too_large(state.name, state.max_payload)
        except RefusedError as refused:
            if refused.code is not ErrorCode.NOT_OWNER:
                self._drops[refused.code.value] += 1
            raise
        if state.bucket is not None and not state.bucket.take(now):
            self._drops[RATE_LIMITED] += 1
            return Route(state.name, state.epoch, 0, frozenset())
        state.offset += 1
        state.messages += 1
        state.bytes += size
        self._messages_in += 1
        self._bytes_in += size
        if state.snapshot:
            self._messages_routed += 1
            self._deliveries += len(state.snapshot)
        return Route(state.name, state.epoch, state.offset, state.snapshot, state.keeps_history)

    def _topic_for_producer(self, raw_topic: bytes, size: int) -> _Topic:
        name = decode_topic(raw_topic)
        spec = self.registry.resolve(name)
        shard = self._check_served(name)
        if size > self._max_payload(spec):
            raise _too_large(name, self._max_payload(spec))
        if len(self._topics) >= self.limits.max_topics and not self._idle_topics:
            raise RefusedError(ErrorCode.LIMIT_EXCEEDED, f"at most {self.limits.max_topics} topics")
        return self._create_topic(name, spec, shard)

    def topic_position(self, topic: str) -> tuple[int, int] | None:
        """The topic's current ``(epoch, offset)``, or ``None`` if the router holds no state."""
        state = self._topics.get(topic)
        return (state.epoch, state.offset) if state is not None else None

    # ------------------------------------------------------------ history

    def record(self, topic: str, offset: int, header: bytes, payload: bytes, now: float) -> None:
        """Keep a message in its topic's history. Call it right after :meth:`route_wire`, with the
        route's offset, whenever the route says ``keeps_history``; a message not recorded breaks
        the history's run, and everything older becomes unrecoverable.

        Then, while all histories together hold more than ``max_history_bytes``, the oldest
        message of the history holding the most bytes is evicted (ties: the larger topic name).
        """
        history = self._histories.get(topic)
        if history is None:
            return
        history.append(HistoryEntry(offset, header, payload), now)
        while self._history_total.bytes > self.limits.max_history_bytes:
            self._histories[max(self._histories, key=self._history_weight)].evict_oldest()

    def defer_record(self, topic: str) -> int | None:
        """The message just routed on ``topic`` is recorded later, once durable elsewhere (cluster
        mode, ``router/cluster/history.py``): until then it is not published, and the topic's
        position in replies (``subscribed``, a resume's range, recovery) stays before it. Each
        deferred message is then :meth:`record_deferred` or :meth:`drop_deferred`, in offset
        order. Returns the topic's shard, ``None`` for a topic not held."""
        state = self._topics.get(topic)
        if state is None:
            return None
        state.deferred += 1
        return state.shard

    def record_deferred(self, topic: str, offset: int, header: bytes, payload: bytes, now: float) -> None:
        """:meth:`record` a deferred message, the next one in offset order: it is published now."""
        state = self._topics.get(topic)
        if state is not None and state.deferred:
            state.deferred -= 1
        self.record(topic, offset, header, payload, now)

    def drop_deferred(self, topic: str, offset: int) -> None:
        """A deferred message will never be recorded: the history's run breaks there, so a
        recovery across it says ``history_exceeded`` rather than skip it silently. A topic no
        longer held is ignored."""
        state = self._topics.get(topic)
        if state is None or not state.deferred:
            return
        state.deferred -= 1
        if state.history is not None:
            state.history.clear(offset)

    def recover(
        self,
        topic: str,
        from_offset: int,
        epoch: int,
        now: float,
        *,
        to_offset: int | None = None,
        edge_id: str | None = None,
        max_bytes: int = RECOVER_BATCH_BYTES,
    ) -> Recovery:
        """The messages of ``topic`` after ``from_offset`` (exclusive) up to ``to_offset``
        (inclusive; default, and at most: the newest), in sequence ``epoch``, at most about
        ``max_bytes`` of them (see :meth:`router.core.history.TopicHistory.read`).

        Otherwise the status says why not: ``not_reliable`` (the topic keeps no history),
        ``epoch_changed`` (the router holds another sequence of the topic, or none) or
        ``history_exceeded`` (the history no longer reaches back to ``from_offset``).

        Raises ``unknown_edge``, ``bad_topic``, ``unknown_topic``, ``bad_request`` (a negative or
        reversed range, or a ``from_offset`` beyond the newest message of ``epoch``), and, with
        ``edge_id``, ``not_subscribed`` unless one of that edge's clients is on the topic.
        """
        edge = self._edge(edge_id) if edge_id is not None else None
        self.registry.resolve(topic)
        self._check_served(topic)
        _check_range(from_offset, to_offset)
        if edge is not None and topic not in edge.topics:
            raise RefusedError(ErrorCode.NOT_SUBSCRIBED, f"no client of {edge_id!r} is on {topic!r}")
        state = self._topics.get(topic)
        status = self._position_status(topic, state, epoch, from_offset, now)
        if state is None or state.history is None:
            return Recovery(status, state.epoch if state is not None else 0, 0, [], False)
        start = self._history_start(state)
        if status is not RecoveryStatus.OK or from_offset >= state.published:
            return Recovery(status, state.epoch, start, [], False)
        window = state.history.read(from_offset, to_offset, max_bytes)
        assert not isinstance(window, Missing)
        return Recovery(status, state.epoch, start, window.entries, window.more)

    def expire_history(self, now: float) -> None:
        """Evict every history's messages older than its age bound (call it now and then)."""
        for history in self._histories.values():
            history.expire(now)

    def history_view(self, topic: str) -> HistoryView | None:
        """What the topic's history holds, or ``None`` if it keeps none."""
        history = self._histories.get(topic)
        if history is None:
            return None
        return HistoryView(history.start, history.last, history.entries())

    def _position_status(
        self, topic: str, state: _Topic | None, epoch: int, after: int, now: float
    ) -> RecoveryStatus:
        if state is None:
            reliable = self.limits.history_limits(self.get_delivery_policy(topic)) is not None
            return RecoveryStatus.EPOCH_CHANGED if reliable else RecoveryStatus.NOT_RELIABLE
        if state.history is None:
            return RecoveryStatus.NOT_RELIABLE
        if state.epoch != epoch:
            return RecoveryStatus.EPOCH_CHANGED
        if after > state.offset:
            raise RefusedError(ErrorCode.BAD_REQUEST, f"offset {after} is beyond {topic!r}'s {state.offset}")
        state.history.expire(now)
        if after >= self._history_start(state):
            return RecoveryStatus.OK
        return RecoveryStatus.HISTORY_EXCEEDED

    @staticmethod
    def _history_start(state: _Topic) -> int:
        """The smallest offset after which the history holds every message up to the newest."""
        history = state.history
        if history is None or history.last != state.published:
            return state.published
        return history.start

    def _history_weight(self, name: str) -> tuple[int, str]:
        return self._histories[name].bytes, name

    def _sync_history(self, state: _Topic) -> None:
        """Give the topic the history its policy asks for: a new one, new bounds, or none."""
        limits = self.limits.history_limits(self.get_delivery_policy(state.name))
        if limits is None:
            self._drop_history(state)
        elif state.history is None:
            history = TopicHistory(limits, state.offset, self._history_total)
            state.history = self._histories[state.name] = history
            state.keeps_history = True
        else:
            state.history.limits = limits
            state.history.trim()

    def _drop_history(self, state: _Topic) -> None:
        if state.history is not None:
            state.history.clear(state.offset)
            del self._histories[state.name]
            state.history = None
            state.keeps_history = False

    # ------------------------------------------------------------ cluster shards

    def serve_shards(self, shards: int) -> None:
        """Turn cluster mode on: from now on only the topics of the shards given to
        :meth:`shard_gained` are served. The others are refused as ``not_owner``: a producer's
        message (counted as a drop of that reason), a ``subscribe`` and a ``recover``."""
        if self._topics:
            raise ValueError("cluster mode starts before the first topic")
        self._served = bytearray(shards)

    def shard_gained(self, shard: int) -> None:
        """This router serves ``shard`` from now on."""
        self._cluster()[shard] = 1

    def shards_lost(self, shards: Collection[int]) -> list[Action]:
        """This router serves ``shards`` no more: their topics' subscriptions end without a word
        to the edges, which move them to the new owner, and their state is forgotten, since the
        next owner continues (reliable topics) or starts (the others) their sequences; so does
        their demand, which the next owner tells. One pass over the topics, however many shards
        went."""
        served = self._cluster()
        for shard in shards:
            served[shard] = 0
        actions: list[Action] = []
        for state in [state for state in self._topics.values() if not served[state.shard]]:
            for client_id in sorted(state.subscribers):
                removed = self._remove_subscriber(state, self._clients[client_id])
                actions += [action for action in removed if not isinstance(action, DemandChanged)]
            self._forget_topic(state)
        return actions

    def adopt_topic(
        self, topic: str, epoch: int, last_offset: int, entries: Sequence[HistoryEntry], now: float
    ) -> None:
        """Cluster mode: continue a reliable topic's sequence where the router that served its
        shard before left it: its epoch, its last offset and the newest messages of its history
        (oldest first, the last one at ``last_offset``, ages counted from ``now``). Call it after
        :meth:`shard_gained` and before any message of the topic; a topic held already is kept.
        Raises :class:`RefusedError` for a topic this router does not serve or know."""
        if topic in self._topics:
            return
        spec = self.registry.resolve(topic)
        state = self._create_topic(topic, spec, self._check_served(topic))
        state.epoch, state.offset = epoch, last_offset
        if state.history is None:
            return
        state.history.clear(entries[0].offset - 1 if entries else last_offset)
        for entry in entries:
            self.record(topic, entry.offset, entry.header, entry.payload, now)
        if state.history.last != last_offset:
            state.history.clear(last_offset)

    def history_limits(self, topic: str) -> HistoryLimits | None:
        """The bounds of the topic's history under its policy now; ``None`` if it keeps none."""
        return self.limits.history_limits(self.get_delivery_policy(topic))

    def served_shards(self) -> list[int] | None:
        """The shards this router serves, in cluster mode; ``None`` outside it."""
        if self._served is None:
            return None
        return [shard for shard, served in enumerate(self._served) if served]

    def shard_of(self, topic: str) -> int | None:
        """The topic's shard in cluster mode; ``None`` outside it."""
        return None if self._served is None else shard_of(topic.encode(), len(self._served))

    def _cluster(self) -> bytearray:
        if self._served is None:
            raise ValueError("not in cluster mode: call serve_shards first")
        return self._served

    def _check_served(self, topic: str) -> int:
        """The topic's shard (0 outside cluster mode). Raises ``not_owner`` if it is not served."""
        served = self._served
        if served is None:
            return 0
        state = self._topics.get(topic)
        shard = state.shard if state is not None else shard_of(topic.encode(), len(served))
        if not served[shard]:
            raise RefusedError(
                ErrorCode.NOT_OWNER, f"{topic!r} is in shard {shard}, served by another router"
            )
        return shard

    # ------------------------------------------------------------ policies

    def set_delivery_policy(self, topic: str, policy: DeliveryPolicy) -> list[Action]:
        """Override a topic's policy at runtime; edges holding its subscribers are told.

        A topic that becomes reliable starts an empty history; one that stops being reliable drops
        its history; new bounds apply at once (count and bytes) or at the next use (age). A new
        ``ingest_max_rate`` starts a full token bucket; an unchanged one keeps its bucket.
        """
        self.registry.resolve(topic)
        self._policies[topic] = policy
        state = self._topics.get(topic)
        if state is not None:
            self._sync_history(state)
            self._sync_rate(state)
        subscribers = state.subscribers if state is not None else set()
        edges = frozenset(self._clients[c].info.edge_id for c in subscribers)
        demand = self._demand_changes(state) if state is not None else []
        return [PolicyChanged(topic, policy, edges), *demand] if edges else demand

    def _sync_rate(self, state: _Topic) -> None:
        rate = self.get_delivery_policy(state.name).ingest_max_rate
        if rate is None:
            state.bucket = None
        elif state.bucket is None or state.bucket.rate != rate:
            state.bucket = TokenBucket(rate)

    def get_delivery_policy(self, topic: str) -> DeliveryPolicy:
        """The policy in force: a runtime override, else the registry's."""
        override = self._policies.get(topic)
        return override if override is not None else self.registry.resolve(topic).policy

    # ------------------------------------------------------------ statistics

    def count_drop(self, reason: str, count: int = 1) -> None:
        """Count input the process around the core refused (malformed frames, bad messages)."""
        self._drops[reason] += count

    def get_connection_stats(self) -> ConnectionStats:
        edges = add_totals(e.figures.totals for e in self._edges.values())
        return ConnectionStats(
            edges=len(self._edges),
            clients=len(self._clients),
            topics=len(self._topics),
            subscriptions=sum(len(c.topics) for c in self._clients.values()),
            messages_in=self._messages_in,
            bytes_in=self._bytes_in,
            messages_routed=self._messages_routed,
            deliveries=self._deliveries,
            drops=dict(self._drops),
            history_messages=sum(len(h) for h in self._histories.values()),
            history_bytes=self._history_total.bytes,
            edge_delivered=edges.delivered,
            edge_queued_messages=edges.queued_messages,
            edge_queued_bytes=edges.queued_bytes,
            edge_drops=edges.dropped,
        )

    def topic_counters(self) -> list[TopicCounters]:
        """Every topic the router holds state for. A topic whose state is dropped (``max_topics``)
        starts again from 0 if it comes back."""
        return [TopicCounters(t.name, t.messages, t.bytes, len(t.subscribers)) for t in self._topics.values()]

    def edge_statuses(self) -> list[EdgeStatus]:
        return [EdgeStatus(e.edge_id, e.protocol, len(e.clients), e.last_seen) for e in self._edges.values()]

    def client_ids(self) -> Iterable[str]:
        return self._clients.keys()

    # ------------------------------------------------------------ edge reports and views

    def edge_report(
        self,
        edge_id: str,
        totals: EdgeTotals,
        topic_drops: dict[str, int],
        clients: Iterable[ClientFigures],
        now: float,
    ) -> list[DropIncrease]:
        """Keep what an edge reported (:class:`~router.core.edge_reports.EdgeFigures`). Figures
        of clients that are not this edge's, and drops of topics none of its clients holds, are
        ignored. Returns how each topic's drops grew since the edge's previous report (nothing
        for its first one, whose counts may be older)."""
        edge = self._edge(edge_id)
        before, since = dict(edge.figures.topic_drops), edge.figures.reported_at
        edge.figures.update(totals, topic_drops, clients, edge.clients, now)
        edge.figures.keep_topics(edge.topics)
        if since is None:
            return []
        return drop_increases(before, edge.figures.topic_drops, topic_drops, now - since)

    def edge_views(self) -> list[EdgeView]:
        return [
            EdgeView(
                edge.edge_id,
                edge.protocol,
                edge.connected_at,
                edge.last_seen,
                len(edge.clients),
                len(edge.topics),
                edge.figures.totals if edge.figures.reported_at is not None else None,
                edge.figures.reported_at,
            )
            for edge in self._edges.values()
        ]

    def client_views(self, edge_id: str | None = None) -> list[ClientView]:
        """Every registered client, or only those of one edge."""
        views = []
        for client in self._clients.values():
            info = client.info
            if edge_id is None or info.edge_id == edge_id:
                edge = self._edges[info.edge_id]
                figures = edge.figures.clients.get(info.client_id)
                views.append(ClientView(info, client.identity.user, tuple(sorted(client.topics)), figures))
        return views

    def topic_views(self) -> list[TopicView]:
        """Every topic the router holds state for."""
        drops: Counter[str] = Counter()
        for edge in self._edges.values():
            drops.update(edge.figures.topic_drops)
        return [
            TopicView(
                name,
                state.epoch,
                state.offset,
                len(state.subscribers),
                state.messages,
                state.bytes,
                self.get_delivery_policy(name),
                name in self._policies,
                _history_size(state.history),
                drops[name],
            )
            for name, state in self._topics.items()
        ]


def _history_size(history: TopicHistory | None) -> HistorySize | None:
    if history is None:
        return None
    return HistorySize(len(history), history.bytes, history.start, history.last)
