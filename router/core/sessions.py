"""Who a client is and what it may subscribe to.

The router asks its :class:`SessionManager` twice: once when a client registers (authenticate its
token) and at every subscribe (authorize the topic). :class:`AllowAllSessions` accepts everyone
and is meant for local use only.
"""

from __future__ import annotations

from typing import Protocol

import msgspec

from router.core.clients import ClientInfo


class Identity(msgspec.Struct, frozen=True, kw_only=True):
    """An authenticated client: a user name and the topic patterns it may subscribe to."""

    user: str
    allowed_patterns: tuple[str, ...] = ("/**",)
    expires_at: float | None = None


class SessionManager(Protocol):
    """Authentication and authorization, asked by the core. Implementations must not block."""

    def authenticate(self, client: ClientInfo, token: str | None) -> Identity:
        """Return the client's identity, or raise ``RefusedError(UNAUTHORIZED, ...)``."""
        ...

    def authorize(self, identity: Identity, topic: str) -> bool:
        """Whether ``identity`` may subscribe to ``topic``."""
        ...


ANONYMOUS = Identity(user="anonymous")


class AllowAllSessions:
    """Every client is ``anonymous`` and may subscribe to every topic."""

    def authenticate(self, client: ClientInfo, token: str | None) -> Identity:
        return ANONYMOUS

    def authorize(self, identity: Identity, topic: str) -> bool:
        return True
