"""One client's protocol state and outgoing queue, with no I/O.

Rules of this module: every change of a client's lifecycle state goes through :data:`TRANSITIONS`,
and an event the table does not allow raises :class:`InvalidTransitionError` and changes nothing. The
session knows nothing of topics or the router: :class:`~edges.hub.EdgeHub` decides what a request
means and hands the session the replies and data frames to send.

The shell feeds client input to the hub, then drains :meth:`ClientSession.data_to_send` and writes
everything it returns in one write; ``str`` items are text messages, ``bytes`` items binary ones.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Mapping
from enum import StrEnum
from typing import Final, NamedTuple

import msgspec

from edges.client_wire import (
    MAX_MESSAGE_BYTES,
    ClientProtocolError,
    CloseCode,
    Closing,
    Connect,
    Connected,
    ErrorReply,
    Ping,
    Pong,
    ServerMessage,
    Subscribe,
    Unsubscribe,
    close_reason,
    decode_client_message,
    encode_server_message,
)
from router.core.errors import ErrorCode

__all__ = [
    "TRANSITIONS",
    "ClientRequest",
    "ClientSession",
    "CloseRequest",
    "EdgeLimits",
    "Event",
    "InvalidTransitionError",
    "State",
    "next_state",
]


class EdgeLimits(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Bounds on what one edge holds per client. The queue bounds apply to data frames."""

    max_message_bytes: int = MAX_MESSAGE_BYTES
    max_subscriptions: int = 256
    queue_max_messages: int = 1024
    queue_max_bytes: int = 8 * 1024 * 1024
    max_pending_replies: int = 1024
    """Control replies are never dropped; a client that lets more pile up unread is closed."""

    def __post_init__(self) -> None:
        fields = (
            self.max_message_bytes,
            self.max_subscriptions,
            self.queue_max_messages,
            self.queue_max_bytes,
            self.max_pending_replies,
        )
        if min(fields) < 1:
            raise ValueError("edge limits must be at least 1")


# ---------------------------------------------------------------- the lifecycle table


class State(StrEnum):
    AWAITING_CONNECT = "awaiting_connect"
    REGISTERING = "registering"
    READY = "ready"
    CLOSING = "closing"
    CLOSED = "closed"


class Event(StrEnum):
    CONNECT = "connect"
    """The client sent ``connect``."""
    REQUEST = "request"
    """The client sent ``subscribe``, ``unsubscribe`` or ``ping``."""
    REGISTERED = "registered"
    """The router accepted the client."""
    CLOSE = "close"
    """The edge decided to close the client (a refusal, a drop, a shutdown)."""
    CONNECTION_LOST = "connection_lost"
    """The transport is closed, whoever closed it."""


TRANSITIONS: Final[Mapping[State, Mapping[Event, State]]] = {
    State.AWAITING_CONNECT: {
        Event.CONNECT: State.REGISTERING,
        Event.CLOSE: State.CLOSING,
        Event.CONNECTION_LOST: State.CLOSED,
    },
    State.REGISTERING: {
        Event.REGISTERED: State.READY,
        Event.CLOSE: State.CLOSING,
        Event.CONNECTION_LOST: State.CLOSED,
    },
    State.READY: {
        Event.REQUEST: State.READY,
        Event.CLOSE: State.CLOSING,
        Event.CONNECTION_LOST: State.CLOSED,
    },
    State.CLOSING: {Event.CONNECTION_LOST: State.CLOSED},
    State.CLOSED: {},
}


class InvalidTransitionError(RuntimeError):
    """An event the current state does not allow. Nothing was changed."""

    def __init__(self, state: State, event: Event) -> None:
        super().__init__(f"{event.value!r} is not allowed in state {state.value!r}")
        self.state = state
        self.event = event


def next_state(state: State, event: Event) -> State:
    """The state after ``event``, or :class:`InvalidTransitionError`."""
    try:
        return TRANSITIONS[state][event]
    except KeyError:
        raise InvalidTransitionError(state, event) from None


_WHY_NOT: Final[Mapping[State, str]] = {
    State.AWAITING_CONNECT: "the first message must be connect",
    State.REGISTERING: "wait for connected before sending requests",
    State.READY: "already connected",
}


class CloseRequest(NamedTuple):
    code: int
    reason: str


ClientRequest = Connect | Subscribe | Unsubscribe
"""What :meth:`ClientSession.receive_text` hands to the hub; pings are answered by the session."""


# ---------------------------------------------------------------- the session


class ClientSession:
    """One client: its lifecycle state, its counters and its bounded outgoing queue.

    Control replies wait in their own list, are never dropped and are written ahead of data.
    Data frames wait in a queue bounded by ``queue_max_messages`` and ``queue_max_bytes``; when a
    new frame does not fit, the oldest go first, and every frame that leaves unsent is counted in
    :attr:`dropped` under its reason.
    """

    def __init__(self, client_id: str, remote: str = "", limits: EdgeLimits | None = None) -> None:
        self.client_id = client_id
        self.remote = remote
        self.limits = limits or EdgeLimits()
        self.state = State.AWAITING_CONNECT
        self.user: str | None = None
        self.token: str | None = None
        self.close_request: CloseRequest | None = None
        self.dropped: Counter[str] = Counter()
        self.bad_messages = 0
        self._control: list[bytes | str] = []
        self._data: deque[tuple[int, bytes]] = deque()
        self._data_bytes = 0

    def __repr__(self) -> str:
        return f"<ClientSession {self.client_id} {self.state.value}>"

    # ------------------------------------------------------------ state

    def _advance(self, event: Event) -> None:
        self.state = next_state(self.state, event)

    @property
    def is_open(self) -> bool:
        """Whether the edge still serves this client (not closing, not closed)."""
        return self.state not in (State.CLOSING, State.CLOSED)

    # ------------------------------------------------------------ input from the client

    def receive_text(self, text: str) -> ClientRequest | None:
        """Decode one text message. Returns the request the hub must act on, if any.

        Bad input is answered here with an ``error`` reply and changes nothing else; so is a
        request the current state does not allow. Input after the edge started closing is ignored.
        """
        if not self.is_open:
            return None
        try:
            message = decode_client_message(text, self.limits.max_message_bytes)
        except ClientProtocolError as error:
            self._refuse(error.request_id, error.code, error.message)
            return None
        request_id = None if isinstance(message, Connect) else message.id
        event = Event.CONNECT if isinstance(message, Connect) else Event.REQUEST
        try:
            self._advance(event)
        except InvalidTransitionError:
            self._refuse(request_id, ErrorCode.BAD_REQUEST, _WHY_NOT[self.state])
            return None
        if isinstance(message, Ping):
            self.send(Pong(id=message.id))
            return None
        if isinstance(message, Connect):
            self.token = message.token
        return message

    def receive_binary(self, data: bytes) -> None:
        """Clients send no binary messages: answer ``bad_request``."""
        if self.is_open:
            self._refuse(None, ErrorCode.BAD_REQUEST, "clients send text messages only")

    def _refuse(self, request_id: int | None, code: str, message: str) -> None:
        self.bad_messages += 1
        self.send_error(request_id, code, message)

    # ------------------------------------------------------------ input from the hub

    def registered(self, user: str) -> None:
        """The router accepted the client: it is ready, and told so with ``connected``."""
        self._advance(Event.REGISTERED)
        self.user = user
        self.send(Connected(client_id=self.client_id, user=user))

    def send(self, message: ServerMessage) -> None:
        """Queue a control message, ahead of all data. Too many unread ones close the client."""
        self._control.append(encode_server_message(message))
        if len(self._control) > self.limits.max_pending_replies and self.is_open:
            self.close(CloseCode.POLICY_VIOLATION, "too many unread replies")

    def send_error(self, request_id: int | None, code: str, message: str, topic: str | None = None) -> None:
        self.send(ErrorReply(id=request_id, code=code, message=message, topic=topic))

    def push_data(self, channel: int, frame: bytes) -> bool:
        """Queue one data frame, dropping the oldest ones if it does not fit. False: dropped."""
        size = len(frame)
        if size > self.limits.queue_max_bytes:
            self.dropped["oversize"] += 1
            return False
        data = self._data
        while data and (
            len(data) >= self.limits.queue_max_messages
            or self._data_bytes + size > self.limits.queue_max_bytes
        ):
            self._data_bytes -= len(data.popleft()[1])
            self.dropped["queue_full"] += 1
        data.append((channel, frame))
        self._data_bytes += size
        return True

    def purge_channel(self, channel: int) -> int:
        """Drop the queued frames of one channel (the client left the topic); returns how many."""
        kept = deque(item for item in self._data if item[0] != channel)
        purged = len(self._data) - len(kept)
        if purged:
            self._data = kept
            self._data_bytes = sum(len(frame) for _, frame in kept)
            self.dropped["unsubscribed"] += purged
        return purged

    def close(self, code: int, reason: str) -> None:
        """Start closing: queued data is dropped and ``closing`` is queued after pending replies.

        The shell writes what :meth:`data_to_send` returns, then closes with ``code`` and
        ``reason`` (:attr:`close_request`).
        """
        self._advance(Event.CLOSE)
        self._discard_data()
        reason = close_reason(reason)
        self.close_request = CloseRequest(code, reason)
        self.send(Closing(code=code, reason=reason))

    def connection_lost(self) -> None:
        """The transport is gone: nothing more will be written."""
        self._advance(Event.CONNECTION_LOST)
        self._discard_data()
        self._control = []

    def _discard_data(self) -> None:
        if self._data:
            self.dropped["closed"] += len(self._data)
            self._data.clear()
            self._data_bytes = 0

    # ------------------------------------------------------------ output

    def data_to_send(self) -> list[bytes | str]:
        """Everything to write now, in order: control replies first, then data frames."""
        out, self._control = self._control, []
        if self._data:
            out.extend(frame for _, frame in self._data)
            self._data.clear()
            self._data_bytes = 0
        return out

    @property
    def has_output(self) -> bool:
        return bool(self._control or self._data)

    @property
    def queued_messages(self) -> int:
        """Data frames waiting (control replies not counted)."""
        return len(self._data)

    @property
    def queued_bytes(self) -> int:
        return self._data_bytes

    @property
    def pending_replies(self) -> int:
        return len(self._control)
