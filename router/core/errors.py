"""The refusals the core can give, each with a stable code that travels on the wire."""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """Stable error codes. Clients and edges match on these strings; never rename one."""

    BAD_REQUEST = "bad_request"
    BAD_TOPIC = "bad_topic"
    UNKNOWN_TOPIC = "unknown_topic"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    LIMIT_EXCEEDED = "limit_exceeded"
    TOO_LARGE = "too_large"
    UNKNOWN_CLIENT = "unknown_client"
    DUPLICATE_CLIENT = "duplicate_client"
    UNKNOWN_EDGE = "unknown_edge"
    EDGE_ID_IN_USE = "edge_id_in_use"
    """A ``hello`` for an edge id that a live edge, or another Curve key, holds."""
    NOT_SUBSCRIBED = "not_subscribed"
    UNSUPPORTED_VERSION = "unsupported_version"
    INTERNAL = "internal"
    UNAVAILABLE = "unavailable"
    """Told to clients only: the router does not know the client right now (its edge is
    registering its clients again, after a router restart or a lost link). Retry shortly."""
    NOT_OWNER = "not_owner"
    """Cluster mode: the topic's shard is served by another router (the edge's shard map is
    behind); send the request to the owner in the newest ``shards`` message."""
    RATE_LIMITED = "rate_limited"
    """A client's message over its rate at the edge (also a router drop reason: ``ingest_max_rate``)."""


class RecoveryStatus(StrEnum):
    """Whether a position in a topic's sequence can be recovered from its history: ``ok``, or why
    not. A ``subscribe`` with ``resume`` answers it in ``resume``; a refused ``recover`` carries it
    as its error code. Stable strings, like :class:`ErrorCode`'s."""

    OK = "ok"
    HISTORY_EXCEEDED = "history_exceeded"
    """The history no longer reaches back to the position."""
    EPOCH_CHANGED = "epoch_changed"
    """The topic's sequence started again (a router restart): the position means nothing now."""
    NOT_RELIABLE = "not_reliable"
    """The topic keeps no history."""


class RefusedError(Exception):
    """A request the core refused. The state is exactly as it was before the call."""

    def __init__(self, code: ErrorCode, detail: str) -> None:
        super().__init__(f"{code.value}: {detail}")
        self.code = code
        self.detail = detail
