"""Who a client is and what it may subscribe to.

The router asks its :class:`SessionManager` when a client registers or refreshes its token
(authenticate the token) and at every subscribe (authorize the topic). :class:`AllowAllSessions`
accepts everyone and is meant for local use only; :class:`~router.core.jwt_sessions.JwtSessions`
checks JSON Web Tokens.

A manager whose decision may need something the router fetches (an answer of a session service,
keys from a JWKS URL) is a :class:`DeferringSessions`: ``authenticate`` raises
:class:`DecisionPending`, and the :class:`~router.core.session_gate.SessionGate` holds the request
until the router has what it needs, or gives up (:meth:`DeferringSessions.fail`).
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


class DecisionPending(Exception):  # noqa: N818 - a signal, not an error
    """``authenticate`` cannot decide yet: park the request until ``key`` is decided."""

    def __init__(self, key: str) -> None:
        super().__init__("waiting for a session decision")
        self.key = key


class DeferringSessions(SessionManager, Protocol):
    """A session manager whose ``authenticate`` may raise :class:`DecisionPending`."""

    def fail(self, key: str, reason: str, now: float) -> None:
        """Stop waiting for ``key`` (a timeout): ``authenticate`` asked again at the same ``now``
        refuses what waited for it, with ``reason`` or a more precise one, instead of deferring."""
        ...


ANONYMOUS = Identity(user="anonymous")


class AllowAllSessions:
    """Every client is ``anonymous`` and may subscribe to every topic."""

    def authenticate(self, client: ClientInfo, token: str | None, now: float) -> Identity:
        return ANONYMOUS

    def authorize(self, identity: Identity, topic: str) -> bool:
        return True
