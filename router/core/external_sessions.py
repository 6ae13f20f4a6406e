"""External sessions: a session service of the user's own decides who a client is.

Rules of this module (``docs/session-service.md`` has the wire format):

- Only ``authenticate`` goes to the service. Its answer names the user and the topic patterns the
  user may read; :meth:`ExternalSessions.authorize` decides every subscribe from those patterns.
- Decisions, refusals included, are cached by a hash of the token (:mod:`decision_cache`). On a
  miss, :meth:`ExternalSessions.authenticate` queues one request per token (drain them with
  :meth:`~ExternalSessions.requests_to_send`) and raises :class:`DecisionPending`; the caller
  parks the request and asks again once :meth:`~ExternalSessions.answer` or
  :meth:`~ExternalSessions.fail` has decided, at the same ``now``.
- Nothing here has a clock, a socket or a timeout: the caller times requests out with ``fail``.
- A reply that cannot be understood refuses the client (fail closed). No token is ever kept or
  logged in clear; a refusal's reason never contains it.
"""

from __future__ import annotations

from typing import Final, Literal

import msgspec

from router.core.clients import ClientInfo
from router.core.decision_cache import Decision, DecisionCache, token_key
from router.core.errors import ErrorCode, RefusedError
from router.core.sessions import DecisionPending, Identity
from router.core.topics import check_pattern, pattern_matches

__all__ = ["MAX_IN_FLIGHT", "DecisionPending", "ExternalSessions", "ServiceReply", "ServiceRequest"]

MAX_IN_FLIGHT: Final = 1024
"""The most tokens waiting for the service at once; more are refused (``session service busy``)."""
MAX_PATTERNS: Final = 1024
BAD_REPLY: Final = "the session service gave a bad answer"


# ---------------------------------------------------------------- wire format


class ClientRef(msgspec.Struct, frozen=True, kw_only=True):
    edge: str
    protocol: str
    remote: str


class ServiceRequest(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    kind: Literal["authenticate"] = "authenticate"
    token: str | None
    client: ClientRef


class ServiceReply(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    allow: bool
    user: str = ""
    topics: list[str] = []
    ttl: float | None = None
    expires_at: float | None = None
    reason: str = "refused by the session service"


_encode = msgspec.json.Encoder().encode
_decode_reply = msgspec.json.Decoder(ServiceReply).decode


class _ReplyId(msgspec.Struct):
    id: int


_decode_id = msgspec.json.Decoder(_ReplyId).decode


# ---------------------------------------------------------------- sessions


class ExternalSessions:
    """A :class:`~router.core.sessions.SessionManager` that asks a session service (module
    docstring). ``cache_ttl`` bounds how long a decision is reused, ``cache_size`` how many are."""

    def __init__(self, cache_ttl: float = 60.0, cache_size: int = 10_000) -> None:
        self.cache = DecisionCache(cache_size, cache_ttl)
        self._next_id = 1
        self._asking: dict[str, int] = {}
        """Request id by token key, for the tokens the service has been asked about."""
        self._keys: dict[int, str] = {}
        self._outbox: list[tuple[str, bytes]] = []

    def authenticate(self, client: ClientInfo, token: str | None, now: float) -> Identity:
        """The cached identity, or ``RefusedError(UNAUTHORIZED)``; on a miss, raise
        :class:`DecisionPending` (the service is asked once per token)."""
        key = token_key(token)
        decision = self.cache.get(key, now)
        if decision is None:
            self._ask(key, client, token)
            raise DecisionPending(key)
        if decision.identity is None:
            raise RefusedError(ErrorCode.UNAUTHORIZED, decision.reason)
        return decision.identity

    def authorize(self, identity: Identity, topic: str) -> bool:
        return any(pattern_matches(pattern, topic) for pattern in identity.allowed_patterns)

    def requests_to_send(self) -> list[tuple[str, bytes]]:
        """The requests queued since the last call, as ``(token key, JSON body)``."""
        out, self._outbox = self._outbox, []
        return out

    def answer(self, body: bytes, now: float) -> str | None:
        """Record the service's reply; returns the token key it decided, or ``None`` for a reply
        to no request in flight (late, after a timeout) or with no readable ``id``."""
        try:
            request_id = _decode_id(body).id
        except (msgspec.ValidationError, msgspec.DecodeError):
            return None
        key = self._keys.pop(request_id, None)
        if key is None:
            return None
        del self._asking[key]
        decision, ttl = _decision(body, now)
        self.cache.put(key, decision, now, self.cache.max_ttl if ttl is None else ttl)
        return key

    def fail(self, key: str, reason: str, now: float) -> None:
        """Decide ``key`` as refused with ``reason`` (timeout, service down), for lookups at
        ``now`` only: the next request with the token asks the service again."""
        request_id = self._asking.pop(key, None)
        if request_id is not None:
            del self._keys[request_id]
        self.cache.put(key, Decision(None, reason), now, 0.0)

    @property
    def in_flight(self) -> int:
        return len(self._asking)

    def _ask(self, key: str, client: ClientInfo, token: str | None) -> None:
        if key in self._asking:
            return
        if len(self._asking) >= MAX_IN_FLIGHT:
            raise RefusedError(ErrorCode.UNAUTHORIZED, "session service busy")
        request_id = self._next_id
        self._next_id += 1
        self._asking[key] = request_id
        self._keys[request_id] = key
        ref = ClientRef(edge=client.edge_id, protocol=client.protocol, remote=client.remote)
        self._outbox.append((key, _encode(ServiceRequest(id=request_id, token=token, client=ref))))


def _decision(body: bytes, now: float) -> tuple[Decision, float | None]:
    """The decision a reply gives and its time-to-live (``None``: the configured maximum)."""
    try:
        reply = _decode_reply(body)
        if reply.ttl is not None and not 0 <= reply.ttl < 1e9:
            raise ValueError("ttl is a number of seconds, 0 or more")
        if not reply.allow:
            return Decision(None, reply.reason[:200] or "refused by the session service"), reply.ttl
        identity = _identity(reply)
    except (msgspec.ValidationError, msgspec.DecodeError, ValueError) as error:
        return Decision(None, f"{BAD_REPLY}: {str(error)[:200]}"), 0.0
    if identity.expires_at is not None and identity.expires_at <= now:
        return Decision(None, "session expired"), 0.0
    return Decision(identity), reply.ttl


def _identity(reply: ServiceReply) -> Identity:
    if not reply.user:
        raise ValueError("an accepting reply names the user")
    if len(reply.topics) > MAX_PATTERNS:
        raise ValueError(f"at most {MAX_PATTERNS} topic patterns")
    for pattern in reply.topics:
        check_pattern(pattern)
    if reply.expires_at is not None and not 0 < reply.expires_at < 1e13:
        raise ValueError("expires_at is seconds since the Unix epoch")
    return Identity(user=reply.user, allowed_patterns=tuple(reply.topics), expires_at=reply.expires_at)
