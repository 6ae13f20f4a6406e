"""ConnectionManager: every edge, client, subscription and policy the router knows of.

It is a plain object: no sockets, no clock, no event loop. Each method takes its inputs (the time
among them when it matters) and either returns what must happen next — actions for the process
around it to carry out — or raises :class:`~router.core.errors.RefusedError` and changes nothing.
"""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

import msgspec

from router.core.clients import ClientInfo
from router.core.errors import ErrorCode, RefusedError
from router.core.policy import DeliveryPolicy
from router.core.sessions import AllowAllSessions, Identity, SessionManager
from router.core.topics import TopicRegistry, TopicSpec, decode_topic

__all__ = [
    "Action",
    "ClientDropped",
    "ConnectionManager",
    "ConnectionStats",
    "Limits",
    "PolicyChanged",
    "Route",
    "Subscribed",
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
    max_topics: int = 100_000
    max_payload_bytes: int = 16 * 1024 * 1024


class WatchTopic(NamedTuple):
    """The topic gained its first subscriber: ask producers for it upstream."""

    topic: str


class UnwatchTopic(NamedTuple):
    """The topic lost its last subscriber: producers may stop sending it."""

    topic: str


class ClientDropped(NamedTuple):
    """The router dropped a client without its edge asking (its edge was lost)."""

    client_id: str
    edge_id: str
    reason: str


class PolicyChanged(NamedTuple):
    """A topic's policy changed: tell these edges, which hold its subscribers."""

    topic: str
    policy: DeliveryPolicy
    edge_ids: frozenset[str]


Action = WatchTopic | UnwatchTopic | ClientDropped | PolicyChanged


class Subscribed(NamedTuple):
    """A granted subscription: where the topic's sequence stands now, and how it is delivered."""

    topic: str
    epoch: int
    offset: int
    policy: DeliveryPolicy
    content_type: str
    actions: list[Action]


class Route(NamedTuple):
    """Where one message goes: its place in the topic's sequence and who receives it."""

    topic: str
    epoch: int
    offset: int
    clients: frozenset[str]


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
    clients: set[str] = field(default_factory=set)


def _too_large(topic: str, most: int) -> RefusedError:
    return RefusedError(ErrorCode.TOO_LARGE, f"payload over {most} bytes on {topic!r}")


def _random_epoch() -> int:
    return secrets.randbits(32) or 1


# ---------------------------------------------------------------- the manager


class ConnectionManager:
    """The router's single source of truth for clients, subscriptions and policies."""

    def __init__(
        self,
        registry: TopicRegistry | None = None,
        sessions: SessionManager | None = None,
        limits: Limits | None = None,
        *,
        new_epoch: Callable[[], int] = _random_epoch,
    ) -> None:
        self.registry = registry or TopicRegistry.open()
        self.sessions: SessionManager = sessions or AllowAllSessions()
        self.limits = limits or Limits()
        self._new_epoch = new_epoch
        self._edges: dict[str, _Edge] = {}
        self._clients: dict[str, _Client] = {}
        self._topics: dict[str, _Topic] = {}
        self._wire_topics: dict[bytes, _Topic] = {}
        self._idle_topics: dict[str, None] = {}
        self._policies: dict[str, DeliveryPolicy] = {}
        self._drops: Counter[str] = Counter()
        self._messages_in = 0
        self._bytes_in = 0
        self._messages_routed = 0
        self._deliveries = 0

    # ------------------------------------------------------------ edges

    def edge_hello(self, edge_id: str, protocol: str, now: float) -> list[Action]:
        """An edge (re)introduced itself. A known edge saying hello again starts afresh: the
        clients it had are dropped, since it is about to register the ones it still has."""
        actions: list[Action] = []
        if edge_id in self._edges:
            actions = self.edge_lost(edge_id, "edge restarted")
        elif len(self._edges) >= self.limits.max_edges:
            raise RefusedError(ErrorCode.LIMIT_EXCEEDED, f"at most {self.limits.max_edges} edges")
        self._edges[edge_id] = _Edge(edge_id, protocol, now)
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

    def register_client(self, info: ClientInfo, token: str | None = None) -> Identity:
        """Authenticate and add a client of a known edge; returns who it is."""
        edge = self._edge(info.edge_id)
        if info.client_id in self._clients:
            raise RefusedError(ErrorCode.DUPLICATE_CLIENT, f"{info.client_id!r} is registered")
        if len(self._clients) >= self.limits.max_clients:
            raise RefusedError(ErrorCode.LIMIT_EXCEEDED, f"at most {self.limits.max_clients} clients")
        identity = self.sessions.authenticate(info, token)
        self._clients[info.client_id] = _Client(info, identity)
        edge.clients.add(info.client_id)
        return identity

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
        actions: list[Action] = []
        for topic in sorted(client.topics):
            actions += self._remove_subscriber(self._topics[topic], client)
        return actions

    # ------------------------------------------------------------ subscriptions

    def subscribe(self, client_id: str, topic: str) -> Subscribed:
        """Subscribe a client to one exact topic. Subscribing again is harmless."""
        client = self._client(client_id)
        spec = self.registry.resolve(topic)
        if not self.sessions.authorize(client.identity, topic):
            raise RefusedError(ErrorCode.FORBIDDEN, f"{client.identity.user!r} may not read {topic!r}")
        state = self._topics.get(topic)
        actions: list[Action] = []
        if state is None or client_id not in state.subscribers:
            self._check_subscribe_limits(client, spec, state)
            state = state or self._create_topic(topic, spec)
            actions = self._add_subscriber(state, client)
        return Subscribed(
            topic,
            state.epoch,
            state.offset,
            self.get_delivery_policy(topic),
            spec.content_type,
            actions,
        )

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
        if first:
            self._idle_topics.pop(state.name, None)
            return [WatchTopic(state.name)]
        return []

    def _remove_subscriber(self, state: _Topic, client: _Client) -> list[Action]:
        state.subscribers.discard(client.info.client_id)
        state.resnapshot()
        client.topics.discard(state.name)
        if state.subscribers:
            return []
        self._idle_topics[state.name] = None
        return [UnwatchTopic(state.name)]

    # ------------------------------------------------------------ topics and routing

    def _create_topic(self, name: str, spec: TopicSpec) -> _Topic:
        if len(self._topics) >= self.limits.max_topics:
            self._evict_idle_topic()
        state = _Topic(name, spec, self._new_epoch(), self._max_payload(spec))
        self._topics[name] = state
        self._wire_topics[name.encode()] = state
        self._idle_topics[name] = None
        return state

    def _max_payload(self, spec: TopicSpec) -> int:
        most = spec.max_payload_bytes
        return most if most is not None else self.limits.max_payload_bytes

    def _evict_idle_topic(self) -> None:
        name = next(iter(self._idle_topics))
        del self._idle_topics[name]
        del self._topics[name]
        del self._wire_topics[name.encode()]

    def route_data(self, topic: str, payload: bytes) -> Route:
        """Place one message from a producer in its topic's sequence; see :meth:`route_wire`."""
        return self.route_wire(topic.encode("utf-8", "surrogatepass"), len(payload))

    def route_wire(self, raw_topic: bytes, size: int) -> Route:
        """Route a message of ``size`` payload bytes whose topic is still the producer's bytes.

        This is the router's hot path: a known topic costs one dict look-up.

        Raises ``bad_topic``, ``unknown_topic``, ``too_large`` or ``limit_exceeded``; each such
        refusal is counted as a drop under its code.
        """
        state = self._wire_topics.get(raw_topic)
        try:
            if state is None:
                state = self._topic_for_producer(raw_topic, size)
            elif size > state.max_payload:
                raise _too_large(state.name, state.max_payload)
        except RefusedError as refused:
            self._drops[refused.code.value] += 1
            raise
        state.offset += 1
        state.messages += 1
        state.bytes += size
        self._messages_in += 1
        self._bytes_in += size
        if state.snapshot:
            self._messages_routed += 1
            self._deliveries += len(state.snapshot)
        return Route(state.name, state.epoch, state.offset, state.snapshot)

    def _topic_for_producer(self, raw_topic: bytes, size: int) -> _Topic:
        name = decode_topic(raw_topic)
        spec = self.registry.resolve(name)
        if size > self._max_payload(spec):
            raise _too_large(name, self._max_payload(spec))
        if len(self._topics) >= self.limits.max_topics and not self._idle_topics:
            raise RefusedError(ErrorCode.LIMIT_EXCEEDED, f"at most {self.limits.max_topics} topics")
        return self._create_topic(name, spec)

    def topic_position(self, topic: str) -> tuple[int, int] | None:
        """The topic's current ``(epoch, offset)``, or ``None`` if the router holds no state."""
        state = self._topics.get(topic)
        return (state.epoch, state.offset) if state is not None else None

    # ------------------------------------------------------------ policies

    def set_delivery_policy(self, topic: str, policy: DeliveryPolicy) -> list[Action]:
        """Override a topic's policy at runtime; edges holding its subscribers are told."""
        self.registry.resolve(topic)
        self._policies[topic] = policy
        state = self._topics.get(topic)
        subscribers = state.subscribers if state is not None else set()
        edges = frozenset(self._clients[c].info.edge_id for c in subscribers)
        return [PolicyChanged(topic, policy, edges)] if edges else []

    def get_delivery_policy(self, topic: str) -> DeliveryPolicy:
        """The policy in force: a runtime override, else the registry's."""
        override = self._policies.get(topic)
        return override if override is not None else self.registry.resolve(topic).policy

    # ------------------------------------------------------------ statistics

    def count_drop(self, reason: str, count: int = 1) -> None:
        """Count input the process around the core refused (malformed frames, bad messages)."""
        self._drops[reason] += count

    def get_connection_stats(self) -> ConnectionStats:
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
        )

    def client_ids(self) -> Iterable[str]:
        return self._clients.keys()
