"""The edge's half of the control link to the router, with no I/O.

Rules of this module: every change of the link's lifecycle state goes through :data:`TRANSITIONS`,
and an event the table does not allow raises :class:`InvalidTransitionError` and changes nothing.
The time comes from the caller: ``now`` (seconds of a monotonic clock) on every call.

:class:`LinkProtocol` says ``hello`` and waits for ``welcome``, keeps heartbeats going, and notices
that the router is gone or has restarted: silence past the heartbeat timeout, a heartbeat with a
new ``router_id``, or an ``unknown_edge`` error. It then says ``hello`` again. After each
``welcome`` it sends what :attr:`LinkProtocol.resync` returns (every client and subscription the
edge still has), and after each heartbeat what :attr:`LinkProtocol.report` returns (``edge_stats``).

The shell feeds every control message from the router to :meth:`LinkProtocol.receive`, calls
:meth:`LinkProtocol.tick` again at the time it returns, and after each call sends what
:meth:`LinkProtocol.data_to_send` returns, in order (``docs/protocol.md``, 3.3).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Mapping, Sequence
from enum import StrEnum
from typing import Final

from router.core.errors import ErrorCode
from router.wire import (
    EdgeMessage,
    Error,
    Heartbeat,
    Hello,
    RouterMessage,
    Welcome,
    WireError,
    decode_router_message,
)

__all__ = [
    "TRANSITIONS",
    "InvalidTransitionError",
    "LinkEvent",
    "LinkProtocol",
    "LinkState",
    "next_state",
]

log = logging.getLogger("switchboard.edge")

TIMEOUT_INTERVALS: Final = 5
"""Heartbeat intervals of silence after which the router counts as gone, until a ``welcome`` says."""
UNANSWERED_LOG_INTERVAL: Final = 60.0
"""Seconds between warnings that ``hello`` goes unanswered, while it does."""


# ---------------------------------------------------------------- the lifecycle table


class LinkState(StrEnum):
    STARTING = "starting"
    """Nothing sent yet: the first :meth:`LinkProtocol.tick` says hello."""
    GREETING = "greeting"
    """``hello`` sent; no ``welcome`` since. ``hello`` again every heartbeat interval."""
    CONNECTED = "connected"
    """Welcomed, and the router not known to be lost: heartbeats and reports go out."""
    CLOSED = "closed"


class LinkEvent(StrEnum):
    HELLO = "hello"
    """The edge says ``hello``: the first time, or again while no ``welcome`` came."""
    WELCOME = "welcome"
    """The router welcomed the edge."""
    ROUTER_LOST = "router_lost"
    """The router went silent past the timeout, restarted (a new ``router_id``), or no longer
    knows the edge (``unknown_edge``): the edge says ``hello`` again."""
    CLOSE = "close"


TRANSITIONS: Final[Mapping[LinkState, Mapping[LinkEvent, LinkState]]] = {
    LinkState.STARTING: {
        LinkEvent.HELLO: LinkState.GREETING,
        LinkEvent.CLOSE: LinkState.CLOSED,
    },
    LinkState.GREETING: {
        LinkEvent.HELLO: LinkState.GREETING,
        LinkEvent.WELCOME: LinkState.CONNECTED,
        LinkEvent.CLOSE: LinkState.CLOSED,
    },
    LinkState.CONNECTED: {
        LinkEvent.WELCOME: LinkState.CONNECTED,
        LinkEvent.ROUTER_LOST: LinkState.GREETING,
        LinkEvent.CLOSE: LinkState.CLOSED,
    },
    LinkState.CLOSED: {},
}


class InvalidTransitionError(RuntimeError):
    """An event the current state does not allow. Nothing was changed."""

    def __init__(self, state: LinkState, event: LinkEvent) -> None:
        super().__init__(f"{event.value!r} is not allowed in state {state.value!r}")
        self.state = state
        self.event = event


def next_state(state: LinkState, event: LinkEvent) -> LinkState:
    """The state after ``event``, or :class:`InvalidTransitionError`."""
    try:
        return TRANSITIONS[state][event]
    except KeyError:
        raise InvalidTransitionError(state, event) from None


# ---------------------------------------------------------------- the protocol


class LinkProtocol:
    """One edge's side of the control protocol: hello, welcome, heartbeats, restarts, resync.

    ``heartbeat_interval`` applies until the first ``welcome``, which gives the router's interval
    and timeout. :attr:`resync` and :attr:`report` default to nothing to send.
    """

    def __init__(self, edge_id: str, protocol: str, heartbeat_interval: float = 1.0) -> None:
        self.edge_id = edge_id
        self.protocol = protocol
        self.state = LinkState.STARTING
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = TIMEOUT_INTERVALS * heartbeat_interval
        self.router_id = ""
        """The id of the router that sent the last ``welcome``; ``""`` before one."""
        self.welcomes = 0
        self.resync: Callable[[], Sequence[EdgeMessage]] = list
        """The messages to send after each ``welcome``, to rebuild the edge's state at the router."""
        self.report: Callable[[], Sequence[EdgeMessage]] = list
        """The messages to send after each heartbeat (``edge_stats``)."""
        self._request_ids = itertools.count(1)
        self._last_heard: float | None = None
        self._due: float | None = None
        self._warned_at: float | None = None
        """When the last warning that the router is silent was logged, since the last ``welcome``."""
        self._outgoing: list[EdgeMessage] = []
        self._session = ""
        """The ``session`` of the last ``welcome``: a new connection's ``hello`` shows it."""
        self._new_connection_at: float | None = None
        self._new_connection_due = False
        self._refused_at: float | None = None
        self._start_over = False

    def __repr__(self) -> str:
        return f"<LinkProtocol {self.edge_id} {self.state.value}>"

    @property
    def connected(self) -> bool:
        """Whether the router welcomed this edge and is not known to be lost since."""
        return self.state is LinkState.CONNECTED

    def next_request_id(self) -> int:
        """A request id not used before on this link (1, 2, ...)."""
        return next(self._request_ids)

    def silent_for(self, now: float) -> float:
        """Seconds since the router was last heard (any control message counts), or since the
        link started; 0 before it started."""
        return 0.0 if self._last_heard is None else now - self._last_heard

    # ------------------------------------------------------------ output

    def take_new_connection(self) -> bool:
        """Whether the shell must replace its control socket now (before sending what
        :meth:`data_to_send` returns): the router has been silent past the heartbeat timeout
        since the link started or last asked, so the connection may be wedged where ZeroMQ
        would never notice (a peer gone without closing it)."""
        due, self._new_connection_due = self._new_connection_due, False
        return due

    def start_over_when_caught_up(self) -> None:
        """The shell could not hold a control message for the router (too many wait already):
        once it has sent what it holds, :meth:`caught_up` says hello again, so the ``welcome``
        brings everything again and nothing stays lost."""
        self._start_over = True

    def caught_up(self) -> bool:
        """The shell has sent every control message it held. Returns whether there is something
        to send now (a ``hello``, after :meth:`start_over_when_caught_up`)."""
        if not (self._start_over and self.connected):
            return False
        self._start_over = False
        log.warning("control messages were refused while the router caught up; saying hello again")
        self._hello_again()
        return True

    def data_to_send(self) -> list[EdgeMessage]:
        """What must go to the router now, in order. Call after every other method."""
        outgoing, self._outgoing = self._outgoing, []
        return outgoing

    # ------------------------------------------------------------ input

    def tick(self, now: float) -> float | None:
        """Time passed: say hello or send a heartbeat when one is due.

        Returns when to call again; ``None`` once closed.
        """
        if self.state is LinkState.CLOSED:
            return None
        if self._due is not None and now < self._due:
            return self._due
        if self._last_heard is None:
            self._last_heard = now
        self._beat(now)
        self._due = now + self.heartbeat_interval
        return self._due

    def receive(self, body: bytes, now: float) -> RouterMessage | None:
        """One control message from the router, received at ``now``.

        Returns the message when the edge's application must see it (replies, errors, notices,
        including ``unknown_edge``); ``None`` when the link took it (``welcome``, ``heartbeat``),
        when it does not decode, or once closed.
        """
        if self.state is LinkState.CLOSED:
            return None
        self._last_heard = now
        try:
            message = decode_router_message(body)
        except WireError as error:
            log.warning("bad control message from the router: %s", error)
            return None
        match message:
            case Welcome():
                self._welcome(message)
                return None
            case Heartbeat(router_id=router_id):
                if router_id and router_id != self.router_id and self.state is not LinkState.STARTING:
                    log.warning("the router restarted (%s -> %s)", self.router_id, router_id)
                    self._hello_again()
                return None
            case Error(code=ErrorCode.UNKNOWN_EDGE) if self.connected:
                log.warning("the router does not know this edge; saying hello again")
                self._hello_again()
            case Error(code=ErrorCode.EDGE_ID_IN_USE, message=why) if not self.connected:
                self._warn_refused(now, why)
                return None
        return message

    def close(self) -> None:
        """Stop: nothing more goes out, and what comes in is ignored. Closing twice is allowed."""
        if self.state is not LinkState.CLOSED:
            self._change(LinkEvent.CLOSE)
            self._outgoing.clear()

    # ------------------------------------------------------------ transitions

    def _change(self, event: LinkEvent) -> None:
        self.state = next_state(self.state, event)

    def _beat(self, now: float) -> None:
        silent_for = self.silent_for(now)
        self._ask_new_connection(now, silent_for)
        if not self.connected:
            self._warn_unanswered(now, silent_for)
            self._hello(LinkEvent.HELLO)
            return
        if silent_for > self.heartbeat_timeout:
            log.warning("router silent for %.1f s; saying hello again", silent_for)
            self._warned_at = now
            self._hello(LinkEvent.ROUTER_LOST)
            return
        self._outgoing.append(Heartbeat())
        self._outgoing += self.report()

    def _warn_unanswered(self, now: float, silent_for: float) -> None:
        """Say so when ``hello`` has gone unanswered past the timeout, then once a minute: an edge
        waiting for its router is not silent about it."""
        if silent_for <= self.heartbeat_timeout:
            return
        if self._warned_at is not None and now - self._warned_at < UNANSWERED_LOG_INTERVAL:
            return
        self._warned_at = now
        log.warning(
            "no welcome from the router for %.1f s; still saying hello (is it running, and is"
            " --control its control endpoint?)",
            silent_for,
        )

    def _ask_new_connection(self, now: float, silent_for: float) -> None:
        """Ask for a new control socket once the router has been silent past the timeout, and
        again after every further timeout of silence."""
        if silent_for <= self.heartbeat_timeout:
            return
        since = self._new_connection_at
        if since is None or now - since > self.heartbeat_timeout:
            self._new_connection_at = now
            self._new_connection_due = True

    def _warn_refused(self, now: float, why: str) -> None:
        """The router refused this edge's id (``edge_id_in_use``); hello goes on, and may be
        welcomed once the router forgets the edge that holds the id. Logged once a minute."""
        if self._refused_at is not None and now - self._refused_at < UNANSWERED_LOG_INTERVAL:
            return
        self._refused_at = now
        log.warning("the router refused this edge's hello: %s; still saying hello", why)

    def _hello_again(self) -> None:
        self._hello(LinkEvent.ROUTER_LOST if self.connected else LinkEvent.HELLO)

    def _hello(self, event: LinkEvent) -> None:
        self._change(event)
        self._outgoing.append(Hello(edge_id=self.edge_id, protocol=self.protocol, session=self._session))

    def _welcome(self, welcome: Welcome) -> None:
        if LinkEvent.WELCOME not in TRANSITIONS[self.state]:
            log.warning("ignored a welcome before any hello")
            return
        self._change(LinkEvent.WELCOME)
        self.router_id = welcome.router_id
        self._session = welcome.session
        self._refused_at = None
        self.heartbeat_interval = welcome.heartbeat_interval
        self.heartbeat_timeout = welcome.heartbeat_timeout
        self.welcomes += 1
        self._warned_at = None
        log.info("welcomed by router %s", welcome.router_id)
        self._outgoing += self.resync()
