"""The decisions of an external session service, kept for a while.

A :class:`DecisionCache` holds at most ``size`` decisions (the least recently used goes first),
each for the time-to-live its answer gave, bounded by the configured maximum. Decisions are keyed
by :func:`token_key`, a hash of the token: the cache never holds a token in clear.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import NamedTuple

from router.core.sessions import Identity

__all__ = ["Decision", "DecisionCache", "token_key"]


class Decision(NamedTuple):
    """An identity (the token is accepted) or, with ``identity`` ``None``, a refusal's reason."""

    identity: Identity | None
    reason: str = ""


def token_key(token: str | None) -> str:
    """The cache key of a token (no token at all has a key of its own)."""
    data = b"none" if token is None else b"token:" + token.encode("utf-8", "surrogatepass")
    return hashlib.sha256(data).hexdigest()


class DecisionCache:
    """Decisions by token key, each until its deadline, at most ``size`` of them (LRU)."""

    def __init__(self, size: int, max_ttl: float) -> None:
        if size < 1 or not max_ttl >= 0:
            raise ValueError("a decision cache holds at least one decision, for 0 seconds or more")
        self.size = size
        self.max_ttl = max_ttl
        self._entries: OrderedDict[str, tuple[Decision, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str, now: float) -> Decision | None:
        """The decision for ``key`` if it is still valid at ``now`` (its deadline included)."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        decision, until = entry
        if now > until:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return decision

    def put(self, key: str, decision: Decision, now: float, ttl: float) -> None:
        """Keep ``decision`` until ``now + ttl`` (``ttl`` bounded to ``[0, max_ttl]``) and no later
        than the identity's ``expires_at``. A ``ttl`` of 0 serves only lookups at ``now`` itself."""
        until = now + (min(ttl, self.max_ttl) if ttl > 0 else 0.0)
        if decision.identity is not None and decision.identity.expires_at is not None:
            until = min(until, decision.identity.expires_at)
        self._entries[key] = (decision, until)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
