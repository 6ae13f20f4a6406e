"""The admin API's JSON bodies. These shapes are documented in ``docs/operations.md``: fields may
be added, never renamed or removed. Times are seconds since the Unix epoch."""

from __future__ import annotations

from typing import Literal

import msgspec

from router.core import DeliveryPolicy

__all__ = [
    "ClientList",
    "ClientRow",
    "ClusterReply",
    "ClusterRouterRow",
    "DrainReply",
    "EdgeList",
    "EdgeRow",
    "ErrorBody",
    "ErrorReply",
    "HistoryRow",
    "KickReply",
    "NoCluster",
    "PolicyReply",
    "RedisState",
    "ShardRow",
    "TopicList",
    "TopicRow",
]


class ClientRow(msgspec.Struct, kw_only=True):
    client_id: str
    edge_id: str
    protocol: str
    remote: str
    user: str
    subscriptions: list[str]
    connected_at: float
    queued_messages: int | None
    """Data frames waiting at its edge; this and the next two are ``null`` until the edge reported."""
    queued_bytes: int | None
    drops: int | None
    """Messages it did not get since it connected (queue full, conflated, rate limited, ...)."""


class ClientList(msgspec.Struct, kw_only=True):
    clients: list[ClientRow]


class HistoryRow(msgspec.Struct, kw_only=True):
    messages: int
    bytes: int
    first_offset: int
    last_offset: int


class TopicRow(msgspec.Struct, kw_only=True):
    topic: str
    subscribers: int
    messages: int
    bytes: int
    rate: float
    """Messages per second accepted over the last sample (one second)."""
    drops: int
    """Messages subscribers did not get, over every edge."""
    drop_rate: float
    epoch: int
    offset: int
    policy: DeliveryPolicy
    policy_overridden: bool
    history: HistoryRow | None


class TopicList(msgspec.Struct, kw_only=True):
    topics: list[TopicRow]


class EdgeRow(msgspec.Struct, kw_only=True):
    edge_id: str
    protocol: str
    health: Literal["ok", "late"]
    """``late``: silent for over two heartbeat intervals (it is forgotten at the timeout)."""
    clients: int
    topics: int
    connected_at: float
    last_heartbeat: float
    silent_for: float
    delivered: int | None
    """From the edge's last report; this and the next three are ``null`` until it reported."""
    queued_messages: int | None
    queued_bytes: int | None
    drops: dict[str, int] | None


class EdgeList(msgspec.Struct, kw_only=True):
    edges: list[EdgeRow]


class RedisState(msgspec.Struct, kw_only=True):
    where: str
    """The server as the router names it, never with a password."""
    available: bool
    """The router's last round of reading and renewing the leases reached it."""
    unavailable_rounds: int


class ClusterRouterRow(msgspec.Struct, kw_only=True):
    router_id: str
    live: bool
    """Shares the shards: announced and connected to Redis. An announced router whose connection
    closed (its process died) is listed, not live, until its announcement runs out."""
    endpoints: dict[str, str]
    """What it announced: ``control``, ``xpub``, ``pull``, ``xsub``, maybe ``events``."""
    shards_served: int


class ShardRow(msgspec.Struct, kw_only=True):
    shard: int
    owner: str | None
    """The router holding its lease; ``null`` while nobody does."""
    token: int | None
    lease_ms_left: int | None
    """Milliseconds, at least, before the lease runs out unless renewed; ``null`` when unknown."""
    degraded: bool
    """The answering router's serving time ran out and nobody else holds the lease yet."""


class ClusterReply(msgspec.Struct, kw_only=True):
    cluster: bool = True
    router_id: str
    """The router that answered."""
    shard_count: int
    lease_time: float
    redis: RedisState
    routers: list[ClusterRouterRow]
    shards: list[ShardRow]
    changes: dict[str, int]
    """Shards this router gained and lost since it started: ``gained``, ``handed_over``,
    ``taken``, ``expired``."""


class NoCluster(msgspec.Struct, kw_only=True):
    """The answer of a router outside cluster mode."""

    cluster: bool = False


class PolicyReply(msgspec.Struct, kw_only=True):
    topic: str
    policy: DeliveryPolicy
    overridden: bool
    edges_told: list[str] = []


class KickReply(msgspec.Struct, kw_only=True):
    client_id: str
    edge_id: str


class DrainReply(msgspec.Struct, kw_only=True):
    edge_id: str
    clients: list[str]


class ErrorBody(msgspec.Struct, kw_only=True):
    code: str
    message: str


class ErrorReply(msgspec.Struct, kw_only=True):
    error: ErrorBody
