"""Who a client is and what it may subscribe to.

The router asks its :class:`SessionManager` when a client registers or refreshes its token
(authenticate the token) and at every subscribe (authorize the topic). :class:`AllowAllSessions`
accepts everyone and is meant for local use only; :class:`~router.core.jwt_sessions.JwtSessions`
checks JSON Web Tokens.
"""

from __future__ import annotations

from typing import Protocol

import msgspec

from router.core.clients import ClientInfo


class Identity(msgspec.Struct, frozen=True, kw_only=True):
    """An authenticated client: a user name, the topic patterns it may subscribe to, and when its
    session ends (seconds since the Unix epoch; ``None``: never)."""

    user: str
    allowed_patterns: tuple[str, ...] = ("/**",)
    expires_at: float | None = None


class SessionManager(Protocol):
    """Authentication and authorization, asked by the core. Implementations must not block."""

    def authenticate(self, client: ClientInfo, token: str | None, now: float) -> Identity:
        """Return the client's identity, or raise ``RefusedError(UNAUTHORIZED, ...)``.

        ``now`` is the time in seconds since the Unix epoch, what token lifetimes are measured in.
        """
        ...

    def authorize(self, identity: Identity, topic: str) -> bool:
        """Whether ``identity`` may subscribe to ``topic``."""
        ...


ANONYMOUS = Identity(user="anonymous")


class AllowAllSessions:
    """Every client is ``anonymous`` and may subscribe to every topic."""

    def authenticate(self, client: ClientInfo, token: str | None, now: float) -> Identity:
        return ANONYMOUS

    def authorize(self, identity: Identity, topic: str) -> bool:
        return True
