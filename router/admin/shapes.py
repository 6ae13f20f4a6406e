"""The admin API's JSON bodies. These shapes are documented in ``docs/operations.md``: fields may
be added, never renamed or removed. Times are seconds since the Unix epoch."""

from __future__ import annotations

from typing import Literal

import msgspec

from router.core import DeliveryPolicy

__all__ = [
    "ClientList",
    "ClientRow",
    "DrainReply",
    "EdgeList",
    "EdgeRow",
    "ErrorBody",
    "ErrorReply",
    "HistoryRow",
    "KickReply",
    "PolicyReply",
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
