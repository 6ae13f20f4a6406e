"""Delivery policies: how a topic's messages reach clients that cannot keep up."""

from __future__ import annotations

import math
from typing import Literal

import msgspec

PolicyKind = Literal["best_effort", "latest", "reliable"]
SlowClientAction = Literal["drop_oldest", "drop_newest", "disconnect"]


class DeliveryPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """How one topic is delivered. Set per topic in the registry or at runtime.

    ``kind`` picks the delivery guarantee, ``priority`` orders topics inside one client's queue
    (higher first), ``max_rate`` caps the messages per second each client gets (``None``: no cap;
    the edge applies it), and the ``queue_*`` and ``slow_client`` fields bound what a client may
    fall behind and what happens then.

    ``ingest_max_rate`` is the one field the router applies itself: the messages per second it
    accepts on the topic from all producers together (``None``: no cap). It is a token bucket of
    ``ingest_max_rate`` tokens a second holding at most ``max(1, ingest_max_rate)`` (one second's
    worth), full at the start; a message that finds no token is dropped before it gets an offset,
    and counted as ``rate_limited``.
    """

    kind: PolicyKind = "best_effort"
    priority: int = 0
    max_rate: float | None = None
    ingest_max_rate: float | None = None
    queue_max_messages: int = 1024
    queue_max_bytes: int = 8 * 1024 * 1024
    slow_client: SlowClientAction = "drop_oldest"
    history_max_messages: int = 0
    history_max_bytes: int = 0
    history_max_age: float = 0.0

    def __post_init__(self) -> None:
        if self.queue_max_messages < 1 or self.queue_max_bytes < 1:
            raise ValueError("queue limits must be at least 1")
        if self.max_rate is not None and self.max_rate <= 0:
            raise ValueError("max_rate must be positive")
        rate = self.ingest_max_rate
        if rate is not None and not (math.isfinite(rate) and rate > 0):
            raise ValueError("ingest_max_rate must be positive and finite")
        if min(self.history_max_messages, self.history_max_bytes, self.history_max_age) < 0:
            raise ValueError("history limits cannot be negative")


DEFAULT_POLICY = DeliveryPolicy()
