"""The control plane in front of session decisions that come later, with no I/O.

:class:`SessionGate` passes edge control messages to the :class:`~router.core.control.ControlPlane`.
When one needs a decision that is not there yet (a ``register_client`` or ``refresh_token`` raising
:class:`~router.core.sessions.DecisionPending`: an answer of an external session service, or keys
from a JWKS URL), the gate parks it, and parks after it every later message of the same client, so
a client's messages are handled in order. When the decision comes (:meth:`SessionGate.decided`), or
the wait times out (``unauthorized``, ``session service timed out``, or the session manager's own
reason) or the request cannot be sent (``session service unavailable``), the gate handles the
parked messages again, at once, so each gets its reply. Nothing here waits: the router serves
everyone else meanwhile.
"""

from __future__ import annotations

from typing import Final, NamedTuple

from router.core.control import ControlPlane, Outbound
from router.core.sessions import DecisionPending, DeferringSessions
from router.wire import WireError, decode_edge_message

__all__ = ["MAX_PARKED", "TIMED_OUT", "UNAVAILABLE", "SessionGate"]

TIMED_OUT: Final = "session service timed out"
UNAVAILABLE: Final = "session service unavailable"
MAX_PARKED: Final = 10_000
"""The most messages parked at once; beyond it, a client's later messages are not held back."""

_ClientRef = tuple[bytes, str]


class _Parked(NamedTuple):
    key: str | None
    """The token key it waits for; ``None``: it only waits behind its client's earlier messages."""
    identity: bytes
    body: bytes
    client: _ClientRef | None
    curve_key: str | None
    observer: bool


class SessionGate:
    """A :class:`ControlPlane` whose session decisions may come later (module docstring)."""

    def __init__(self, control: ControlPlane, sessions: DeferringSessions, timeout: float) -> None:
        """``timeout``: the longest a parked message waits for its decision, in seconds."""
        self.control = control
        self.sessions = sessions
        self.timeout = timeout
        self._deadlines: dict[str, float] = {}
        """Monotonic deadline of each token key asked about."""
        self._parked: list[_Parked] = []

    @property
    def parked(self) -> int:
        return len(self._parked)

    def handle(
        self,
        identity: bytes,
        body: bytes,
        now: float,
        unix_time: float | None = None,
        *,
        key: str | None = None,
        observer: bool = False,
    ) -> list[Outbound]:
        """Like :meth:`ControlPlane.handle`; a message may be parked (no reply yet)."""
        unix = now if unix_time is None else unix_time
        client = _client_of(identity, body) if self._parked else None
        if client is not None and self._is_blocked(client) and len(self._parked) < MAX_PARKED:
            self._parked.append(_Parked(None, identity, body, client, key, observer))
            return []
        return self._handle(_Parked(None, identity, body, client, key, observer), now, unix)

    def tick(
        self, now: float, unix_time: float | None = None, *, expire_edges: bool = True
    ) -> list[Outbound]:
        """:meth:`ControlPlane.tick`, and the requests past their deadline refused."""
        unix = now if unix_time is None else unix_time
        return self.control.tick(now, unix, expire_edges=expire_edges) + self.expire(now, unix)

    def next_deadline(self) -> float | None:
        """When :meth:`expire` has something to do next (monotonic), if ever."""
        return min(self._deadlines.values(), default=None)

    # ------------------------------------------------------------ decisions

    def decided(self, key: str | None, now: float, unix_time: float) -> list[Outbound]:
        """``key`` is decided (an answer of the service, keys fetched): the messages that waited
        for it handled again. ``None``, or a key nothing waits for, changes nothing."""
        if key is None or self._deadlines.pop(key, None) is None:
            return []
        return self._release(now, unix_time)

    def expire(self, now: float, unix_time: float) -> list[Outbound]:
        """Refuse the requests whose deadline has passed."""
        late = [key for key, deadline in self._deadlines.items() if deadline <= now]
        return self._fail(late, TIMED_OUT, now, unix_time)

    def unavailable(self, key: str, now: float, unix_time: float) -> list[Outbound]:
        """The request for ``key`` could not be sent: refuse what waits for it."""
        return self._fail([key], UNAVAILABLE, now, unix_time)

    def _fail(self, keys: list[str], reason: str, now: float, unix_time: float) -> list[Outbound]:
        for key in keys:
            self.sessions.fail(key, reason, unix_time)
            self._deadlines.pop(key, None)
        return self._release(now, unix_time) if keys else []

    # ------------------------------------------------------------ parking

    def _handle(self, message: _Parked, now: float, unix_time: float) -> list[Outbound]:
        identity, body = message.identity, message.body
        try:
            return self.control.handle(
                identity, body, now, unix_time, key=message.curve_key, observer=message.observer
            )
        except DecisionPending as pending:
            self._deadlines.setdefault(pending.key, now + self.timeout)
            client = _client_of(identity, body)
            self._parked.append(message._replace(key=pending.key, client=client))
            return []

    def _release(self, now: float, unix_time: float) -> list[Outbound]:
        """Handle, in order, every parked message that no longer waits for anything."""
        waiting, self._parked = self._parked, []
        out: list[Outbound] = []
        for item in waiting:
            if item.key in self._deadlines or (item.client is not None and self._is_blocked(item.client)):
                self._parked.append(item)
            else:
                out += self._handle(item, now, unix_time)
        return out

    def _is_blocked(self, client: _ClientRef) -> bool:
        return any(item.client == client for item in self._parked)


def _client_of(identity: bytes, body: bytes) -> _ClientRef | None:
    """The client a control message is about, if any (a bad message is about none)."""
    try:
        client_id = getattr(decode_edge_message(body), "client_id", None)
    except WireError:
        return None
    return (identity, client_id) if isinstance(client_id, str) else None
