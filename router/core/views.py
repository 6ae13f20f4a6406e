"""Read-only views of what the router holds, for the admin API: edges, clients, topics, and in
cluster mode the cluster.

Each is a snapshot built on request, by :class:`~router.core.ConnectionManager` or, for the
cluster, by the router's ``ClusterNode``; times are the router's monotonic clock, as the manager
received them.
"""

from __future__ import annotations

from collections import Counter
from typing import NamedTuple

from router.core.clients import ClientInfo
from router.core.edge_reports import ClientFigures, EdgeTotals
from router.core.policy import DeliveryPolicy
from router.core.shards import Holder

__all__ = ["ClientView", "ClusterView", "EdgeView", "HistorySize", "ShardView", "TopicView"]


class EdgeView(NamedTuple):
    edge_id: str
    protocol: str
    connected_at: float
    last_seen: float
    clients: int
    topics: int
    """Topics at least one of its clients is subscribed to."""
    totals: EdgeTotals | None
    """What the edge reported last, ``None`` before its first report (or from an edge that does
    not report)."""
    reported_at: float | None


class ClientView(NamedTuple):
    info: ClientInfo
    user: str
    topics: tuple[str, ...]
    figures: ClientFigures | None
    """Its queue and drops as its edge reported them last; ``None`` until it did."""


class HistorySize(NamedTuple):
    messages: int
    bytes: int
    start: int
    """The history holds every message after this offset up to ``last``."""
    last: int


class TopicView(NamedTuple):
    topic: str
    epoch: int
    offset: int
    subscribers: int
    messages: int
    """Messages accepted since the router created the topic's state."""
    bytes: int
    policy: DeliveryPolicy
    overridden: bool
    """The policy was set at runtime, not taken from the configuration."""
    history: HistorySize | None
    edge_drops: int
    """Messages of this topic that subscribed clients did not get, over all edges, as they
    reported them last."""


class ShardView(NamedTuple):
    shard: int
    holder: Holder | None
    """Who holds its lease, as last read from Redis (this router's own leases as it knows them)."""
    lease_left: float | None
    """Seconds, at least, before the lease runs out unless renewed; ``None``: free, or not known."""
    degraded: bool = False
    """This router's serving time ran out and nobody else holds the lease yet: the shard's topics
    flow from memory only, without history (``router/core/shards.py``)."""


class ClusterView(NamedTuple):
    router_id: str
    lease_time: float
    redis: str
    """The server, as messages name it (no password)."""
    available: bool
    """Whether the last round of reading and renewing the leases reached Redis."""
    unavailable_rounds: int
    routers: dict[str, dict[str, str]]
    """The routers announced, this one included, by id: their endpoints (``control``, ``xpub``, ...)."""
    live: frozenset[str]
    """The routers that share the shards: announced and connected to Redis, and this one."""
    shards: list[ShardView]
    changes: dict[str, int]
    """Shards gained (``gained``) and lost (``handed_over``, ``taken``, ``expired``) since the start."""
    forwarded: int = 0
    """Producer messages of other routers' shards passed on to them."""
    parked: int = 0
    """Of those, messages held at some time while their shard had no owner that could take them."""
    parked_now: int = 0
    """Those held now."""
    history_pending: int = 0
    """Reliable messages waiting to be written to Redis."""
    history_written: int = 0

    def served(self) -> Counter[str]:
        """How many shards each router serves: those whose lease it holds, but the degraded ones."""
        return Counter(shard.holder.router_id for shard in self.shards if shard.holder and not shard.degraded)
