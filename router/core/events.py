"""What happens to clients and edges, as events for users' hooks. No I/O.

The :class:`~router.core.control.ControlPlane` builds an event where it handles the matching message or
core action and hands it to every listener of its :class:`EventHooks`. The router process
publishes each one on its events PUB socket (``docs/protocol.md``, section 5) as two frames, the
event's name and its JSON (:func:`event_frames`); embedders add Python callables with
``RouterServer.add_event_listener``.

Every event names itself in ``event`` (``client.connected``, ...), so a subscriber filters by
prefix (``client.``, ``edge.``, ``shard.``), and carries ``time``, the Unix time it happened at, in seconds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import msgspec

from router.logs import ThrottledLog

__all__ = [
    "ClientConnected",
    "ClientDisconnected",
    "ClientRefused",
    "EdgeDown",
    "EdgeUp",
    "Event",
    "EventHooks",
    "EventListener",
    "ShardChanged",
    "SlowClientDrops",
    "SubscribeRefused",
    "Subscribed",
    "decode_event",
    "event_frames",
]

log = logging.getLogger("switchboard.router")


class _Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="event"):
    time: float
    """Unix time, in seconds."""


class ClientConnected(_Event, frozen=True, tag="client.connected"):
    """The router registered a client: its edge accepted it and the session manager let it in."""

    client_id: str
    edge_id: str
    protocol: str
    user: str
    remote: str


class ClientRefused(_Event, frozen=True, tag="client.refused"):
    """The router refused a client's ``register``: ``code`` is the error code its edge got
    (``unauthorized``, ``limit_exceeded``, ...), ``reason`` the error's words."""

    client_id: str
    edge_id: str
    code: str
    reason: str


class ClientDisconnected(_Event, frozen=True, tag="client.disconnected"):
    """A registered client is gone; ``reason`` says why: the edge's reason when it unregistered
    the client (:data:`CLIENT_CLOSED` if it gave none), otherwise what the router or an operator
    ended it for."""

    client_id: str
    edge_id: str
    reason: str


class Subscribed(_Event, frozen=True, tag="client.subscribed"):
    client_id: str
    topic: str


class SubscribeRefused(_Event, frozen=True, tag="client.subscribe_refused"):
    """The router refused a subscribe; ``code`` is the error code the edge got."""

    client_id: str
    topic: str
    code: str


class SlowClientDrops(_Event, frozen=True, tag="edge.slow_client_drops"):
    """An edge reported ``count`` more messages of ``topic`` that its clients did not get, over
    the ``window`` seconds since its previous report."""

    edge_id: str
    topic: str
    count: int
    window: float


class EdgeUp(_Event, frozen=True, tag="edge.up"):
    edge_id: str
    protocol: str


class EdgeDown(_Event, frozen=True, tag="edge.down"):
    edge_id: str
    reason: str


class ShardChanged(_Event, frozen=True, tag="shard.changed"):
    """Cluster mode: this router started serving a shard (``reason`` ``gained``) or stopped
    (``handed_over``, ``taken``, ``expired``); ``token`` is the fencing token of its lease."""

    shard: int
    token: int
    reason: str


Event = (
    ClientConnected
    | ClientRefused
    | ClientDisconnected
    | Subscribed
    | SubscribeRefused
    | SlowClientDrops
    | EdgeUp
    | EdgeDown
    | ShardChanged
)
EventListener = Callable[[Event], None]

CLIENT_CLOSED = "closed by its edge"
"""The reason of a :class:`ClientDisconnected` when the edge unregistered its client without one."""

_encoder = msgspec.json.Encoder()
_decoder: msgspec.json.Decoder[Event] = msgspec.json.Decoder(Event)


def event_frames(event: Event) -> list[bytes]:
    """The two frames of ``event`` on the events socket: its name, then its JSON."""
    return [event.__struct_config__.tag.encode(), _encoder.encode(event)]  # type: ignore[union-attr]


def decode_event(body: bytes) -> Event:
    """An event from its JSON frame; raises ``msgspec.DecodeError`` (or ``ValidationError``)."""
    return _decoder.decode(body)


class EventHooks:
    """The listeners of one control plane. A listener is called synchronously, in the router's
    loop, so it must not block; what it raises is logged and never reaches the router."""

    def __init__(self) -> None:
        self._listeners: list[EventListener] = []
        self._log = ThrottledLog(log)

    def add(self, listener: EventListener) -> None:
        self._listeners.append(listener)

    def remove(self, listener: EventListener) -> None:
        self._listeners.remove(listener)

    def __bool__(self) -> bool:
        return bool(self._listeners)

    def emit(self, event: Event) -> None:
        """Give every listener ``event``. Callers check ``if hooks:`` first, so that nothing is
        built when no one listens, and stamp the event with the Unix time their caller gave."""
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception as error:
                self._failed(listener, event, error)

    def _failed(self, listener: EventListener, event: Event, error: Exception) -> None:
        """Log a listener's failure (one line per listener every 5 s of event time; the traceback
        at debug)."""
        name = getattr(listener, "__qualname__", repr(listener))
        kind = event.__struct_config__.tag
        line = "event listener %s failed on %s: %r"
        self._log.log(logging.ERROR, f"listener-{name}", line, name, kind, error, now=event.time)
        log.debug("event listener %s failed", name, exc_info=error)
