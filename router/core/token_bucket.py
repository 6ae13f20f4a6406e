"""A token bucket: the one rate limit of the router and the edges. No clock: time is passed in.

The bucket gains ``rate`` tokens a second up to ``burst`` and is full at the start. Each
:meth:`TokenBucket.take` at time ``now`` (seconds, any monotonic clock) first adds the tokens earned
since the latest time it was given, then takes one if a whole one is there. A ``now`` earlier than
the latest counts as the latest, so a clock that steps back never earns tokens twice.

It limits a topic's ingest at the router (``ingest_max_rate``), a topic's messages per client at the
edge (``max_rate``), and a client's requests at the edge (``max_requests_per_second``).
"""

from __future__ import annotations

import math

__all__ = ["TokenBucket"]


class TokenBucket:
    """``rate`` tokens a second (positive), holding at most ``burst``, full at the start."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float | None = None) -> None:
        """``burst`` defaults to one second's worth of tokens, and at least one."""
        if not rate > 0:
            raise ValueError("a token bucket's rate must be positive")
        self.rate = rate
        self.burst = float(max(1.0, rate) if burst is None else burst)
        self.tokens = self.burst
        self.stamp = -math.inf
        """The latest time given; tokens are counted up to it."""

    def __repr__(self) -> str:
        return f"<TokenBucket {self.tokens:g}/{self.burst:g} at {self.rate:g}/s>"

    def take(self, now: float) -> bool:
        """Take one token at ``now`` if there is a whole one; False leaves the bucket as it was
        (its tokens brought up to ``now``)."""
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True

    def next_token_at(self) -> float:
        """When :meth:`take` finds a token next: ``-inf`` if one is there now."""
        if self.tokens >= 1:
            return -math.inf
        return self.stamp + (1 - self.tokens) / self.rate
