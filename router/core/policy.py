"""Delivery policies: how a topic's messages reach clients that cannot keep up."""

from __future__ import annotations

from typing import Literal

import msgspec

PolicyKind = Literal["best_effort", "latest", "reliable"]
SlowClientAction = Literal["drop_oldest", "drop_newest", "disconnect"]


class DeliveryPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """How one topic is delivered. Set per topic in the registry or at runtime.

    ``kind`` picks the delivery guarantee, ``priority`` orders topics inside one client's queue
    (higher first), ``max_rate`` caps messages per second (``None``: no cap), and the ``queue_*``
    and ``slow_client`` fields bound what a client may fall behind and what happens then.
    """

    kind: PolicyKind = "best_effort"
    priority: int = 0
    max_rate: float | None = None
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
        if min(self.history_max_messages, self.history_max_bytes, self.history_max_age) < 0:
            raise ValueError("history limits cannot be negative")


DEFAULT_POLICY = DeliveryPolicy()
