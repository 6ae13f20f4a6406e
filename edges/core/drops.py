"""Why an edge dropped a message: the reasons its counters and its metrics' ``reason`` label use."""

from __future__ import annotations

from enum import StrEnum
from typing import Final

__all__ = ["LOSS_REASONS", "NOT_DROPS", "DropReason"]


class DropReason(StrEnum):
    """A reason in :attr:`~edges.core.session.ClientSession.dropped` (and ``bad_input``)."""

    QUEUE_FULL = "queue_full"
    """The client's queue had no room (``best_effort``)."""
    OVERSIZE = "oversize"
    """The message alone is over the queue's byte bound, or over what the transport can send."""
    TOO_SLOW = "too_slow"
    """A ``disconnect`` topic found the queue full: the client is closed."""
    BEHIND = "behind"
    """A ``reliable`` topic's messages the edge could not refill from the router's history."""
    NOT_RECEIVED = "not_received"
    """Never received from the router: dropped between the router and the edge (its queue for
    the edge was full), or not sent while the router did not know the edge's client."""
    CONFLATED = "conflated"
    """A newer message of a ``latest`` topic took its place."""
    RATE_LIMITED = "rate_limited"
    """Over the topic's ``max_rate`` for this client (as a metric label, also the client's own
    messages over ``max_requests_per_second``)."""
    UNSUBSCRIBED = "unsubscribed"
    """Still queued when the client left the topic."""
    CLOSED = "closed"
    """Still queued when the client was closed."""
    BAD_INPUT = "bad_input"
    """A client message refused as malformed or out of place (a metric label only)."""


LOSS_REASONS: Final = (
    DropReason.QUEUE_FULL,
    DropReason.OVERSIZE,
    DropReason.TOO_SLOW,
    DropReason.BEHIND,
    DropReason.NOT_RECEIVED,
)
"""The drops a client suffered against the topic's policy: not conflation or a rate limit it asked
for, and not frames it no longer wanted."""
NOT_DROPS: Final = frozenset({DropReason.CLOSED, DropReason.UNSUBSCRIBED})
"""Reasons not counted among a client's drops: the frames were not wanted any more."""
