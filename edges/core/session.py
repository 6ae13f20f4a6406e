"""One client's protocol state and outgoing queue, with no I/O.

Rules of this module: every change of a client's lifecycle state goes through :data:`TRANSITIONS`,
and an event the table does not allow raises :class:`InvalidTransitionError` and changes nothing. The
session knows nothing of topics or the router: :class:`~edges.core.hub.EdgeHub` decides what a request
means and hands the session the replies and data frames to send.

The shell feeds client input to the hub, then drains :meth:`ClientSession.data_to_send` and writes
everything it returns in one write: typed items (:mod:`edges.core.output`), each encoded once.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from enum import StrEnum
from typing import Final, NamedTuple

import msgspec

from edges.core.client_wire import (
    MAX_MESSAGE_BYTES,
    Ack,
    ClientMessage,
    ClientProtocolError,
    CloseCode,
    Closing,
    Connect,
    Connected,
    ErrorReply,
    Ping,
    Pong,
    Refresh,
    ServerMessage,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
    close_reason,
    decode_client_message,
)
from edges.core.delivery import DeliveryQueue, Lane
from edges.core.drops import DropReason
from edges.core.output import (
    ClientOutput,
    Framing,
    SubscriptionClosed,
    SubscriptionOpened,
    reply,
)
from router.core.errors import ErrorCode
from router.core.policy import DEFAULT_POLICY, DeliveryPolicy
from router.core.token_bucket import TokenBucket

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
    max_requests_per_second: float | None = 100.0
    """Messages a client may send per second, ``ack`` aside (a token bucket); ``None``: no cap."""
    request_burst: int = 200
    """The bucket's size: messages a client may send at once. After this many refused in a row,
    the client is closed with :attr:`CloseCode.RATE_LIMITED`."""
    connect_timeout: float = 10.0
    """Seconds a new WebSocket client has to send ``connect``; then it is closed with
    :attr:`CloseCode.CONNECT_TIMEOUT`."""
    request_timeout: float = 10.0
    """Seconds a client's ``connect`` or ``subscribe`` waits for a router's answer (none may be
    up, or a cluster's shard may have no owner); then a subscribe ends with ``unavailable`` and a
    connect closes the client with :attr:`CloseCode.UNANSWERED`."""
    batch_max_bytes: int = 64 * 1024
    """Bytes of frames one batch carries at most, for a client that asked for batches (a larger
    frame goes alone)."""

    def __post_init__(self) -> None:
        fields = (
            self.max_message_bytes,
            self.max_subscriptions,
            self.queue_max_messages,
            self.queue_max_bytes,
            self.max_pending_replies,
            self.request_burst,
            self.batch_max_bytes,
        )
        if min(fields) < 1:
            raise ValueError("edge limits must be at least 1")
        rate = self.max_requests_per_second
        if rate is not None and not 0 < rate < math.inf:
            raise ValueError("max_requests_per_second must be positive")
        if not 0 < self.connect_timeout < math.inf:
            raise ValueError("connect_timeout must be positive")
        if not 0 < self.request_timeout < math.inf:
            raise ValueError("request_timeout must be positive")


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
    """The client sent ``subscribe``, ``unsubscribe``, ``ping``, ``refresh`` or ``ack``."""
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


class RequestRate(TokenBucket):
    """A client's request bucket: ``rate`` messages a second, ``burst`` at once, full at the start.

    ``refused_in_a_row`` counts the messages refused since the last one let through.
    """

    __slots__ = ("refused_in_a_row",)

    def __init__(self, rate: float, burst: int) -> None:
        super().__init__(rate, burst)
        self.refused_in_a_row = 0

    def take(self, now: float) -> bool:
        if super().take(now):
            self.refused_in_a_row = 0
            return True
        self.refused_in_a_row += 1
        return False


class CloseRequest(NamedTuple):
    code: int
    reason: str


ClientRequest = Connect | Subscribe | Unsubscribe | Refresh
"""What :meth:`ClientSession.receive_text` hands to the hub; pings are answered by the session."""


# ---------------------------------------------------------------- the session


class ClientSession:
    """One client: its lifecycle state, its counters and its bounded outgoing queue.

    Control replies wait in their own list, are never dropped and are written ahead of data.
    Data frames wait in a :class:`~edges.core.delivery.DeliveryQueue`: one lane per channel under its
    topic's delivery policy, all bounded together by ``queue_max_messages`` and ``queue_max_bytes``.
    Every message that leaves unsent is counted in :attr:`dropped` under its reason. The queue is
    made with the first lane, so a client that never subscribed holds none.
    """

    __slots__ = (
        "_control",
        "_framing",
        "_queue",
        "_recoverable",
        "_replies",
        "bad_messages",
        "batches",
        "batching",
        "client_id",
        "close_request",
        "dropped",
        "limits",
        "rate",
        "rate_limited",
        "remote",
        "state",
        "token",
        "user",
    )

    def __init__(
        self,
        client_id: str,
        remote: str = "",
        limits: EdgeLimits | None = None,
        *,
        framing: Framing | None = None,
        recoverable: bool = False,
        batching: bool = False,
    ) -> None:
        """``framing`` and ``recoverable`` go to the data queue (see
        :class:`~edges.core.delivery.DeliveryQueue`); ``batching``: the transport can write
        batches of frames, if the client asks in ``connect``."""
        self.client_id = client_id
        self.batching = batching
        self.batches = False
        """Whether the client's binary messages are batches (``docs/protocol.md``, 4.4.5)."""
        self.remote = remote
        self.limits = limits or EdgeLimits()
        self.state = State.AWAITING_CONNECT
        self.user: str | None = None
        self.token: str | None = None
        """What the hub registers the client with after a router restart: ``connect``'s token,
        then that of each ``refresh`` the router accepted."""
        self.close_request: CloseRequest | None = None
        self.dropped: Counter[DropReason] = Counter()
        self.bad_messages = 0
        self.rate_limited = 0
        """Messages refused for :attr:`EdgeLimits.max_requests_per_second`."""
        most = self.limits.max_requests_per_second
        self.rate = RequestRate(most, self.limits.request_burst) if most is not None else None
        self._control: list[ClientOutput] = []
        """Replies, and the subscription items that follow some of them."""
        self._replies = 0
        self._queue: DeliveryQueue | None = None
        self._framing = framing
        self._recoverable = recoverable

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

    def receive_text(self, text: str, now: float | None = None) -> ClientRequest | None:
        """Decode one text message. Returns the request the hub must act on, if any.

        Bad input is answered here with an ``error`` reply and changes nothing else; so is a
        request the current state does not allow, and, when the shell gives the time ``now``, a
        message over the client's rate (``rate_limited``; too many in a row close the client).
        Input after the edge started closing is ignored.
        """
        if not self.is_open:
            return None
        try:
            message = decode_client_message(text, self.limits.max_message_bytes)
        except ClientProtocolError as error:
            if self._within_rate(now, error.request_id):
                self._refuse(error.request_id, error.code, error.message)
            return None
        return self.receive(message, now)

    def receive(self, message: ClientMessage, now: float | None = None) -> ClientRequest | None:
        """One decoded client message, as :meth:`receive_text` takes it after decoding (the WebRTC
        edge's ``connect`` comes this way, from the offer's token)."""
        if not self.is_open:
            return None
        request_id = None if isinstance(message, Connect | Ack) else message.id
        if not isinstance(message, Ack) and not self._within_rate(now, request_id):
            return None
        event = Event.CONNECT if isinstance(message, Connect) else Event.REQUEST
        try:
            self._advance(event)
        except InvalidTransitionError:
            self._refuse(request_id, ErrorCode.BAD_REQUEST, _WHY_NOT[self.state])
            return None
        if isinstance(message, Ping):
            self.send(Pong(id=message.id))
            return None
        if isinstance(message, Ack):
            lane = self.lane(message.channel)
            if lane is not None:
                lane.ack(message.offset)
            return None
        if isinstance(message, Connect):
            self.token = message.token
            self.batches = self.batching and message.batch
        return message

    def receive_binary(self, data: bytes, now: float | None = None) -> None:
        """Clients send no binary messages: answer ``bad_request`` (within the client's rate)."""
        if self.is_open and self._within_rate(now, None):
            self._refuse(None, ErrorCode.BAD_REQUEST, "clients send text messages only")

    def _within_rate(self, now: float | None, request_id: int | None) -> bool:
        """Whether a message at ``now`` is within the client's rate; if not, it is answered
        ``rate_limited``, or the client is closed once ``request_burst`` were refused in a row."""
        rate = self.rate
        if now is None or rate is None or rate.take(now):
            return True
        self.rate_limited += 1
        if rate.refused_in_a_row > rate.burst:
            self.close(CloseCode.RATE_LIMITED, "too many requests")
        else:
            self.send_error(request_id, ErrorCode.RATE_LIMITED, f"over {rate.rate:g} messages per second")
        return False

    def _refuse(self, request_id: int | None, code: str, message: str) -> None:
        self.bad_messages += 1
        self.send_error(request_id, code, message)

    # ------------------------------------------------------------ input from the hub

    def registered(self, user: str) -> None:
        """The router accepted the client: it is ready, and told so with ``connected``."""
        self._advance(Event.REGISTERED)
        self.user = user
        self.send(Connected(client_id=self.client_id, user=user, batch=self.batches))

    def send(self, message: ServerMessage) -> None:
        """Queue a control message, ahead of all data. Too many unread ones close the client.

        A ``subscribed`` is followed by :class:`~edges.core.output.SubscriptionOpened`, and an
        ``unsubscribed`` or an ``error`` naming a topic by :class:`~edges.core.output.SubscriptionClosed`.
        """
        control = self._control
        control.append(reply(message))
        match message:
            case Subscribed(channel=channel, topic=topic, content_type=content_type, policy=policy):
                control.append(SubscriptionOpened(channel, topic, content_type, policy))
            case Unsubscribed(topic=topic) | ErrorReply(topic=str() as topic):
                control.append(SubscriptionClosed(topic))
        self._replies += 1
        if self._replies > self.limits.max_pending_replies and self.is_open:
            self.close(CloseCode.POLICY_VIOLATION, "too many unread replies")

    def send_error(self, request_id: int | None, code: str, message: str, topic: str | None = None) -> None:
        self.send(ErrorReply(id=request_id, code=code, message=message, topic=topic))

    def open_lane(self, channel: int, policy: DeliveryPolicy = DEFAULT_POLICY) -> Lane:
        """The channel's lane in the data queue, made with ``policy`` if it has none."""
        queue = self._queue
        if queue is None:
            queue = self._queue = DeliveryQueue(
                self.limits.queue_max_messages,
                self.limits.queue_max_bytes,
                dropped=self.dropped,
                framing=self._framing,
                recoverable=self._recoverable,
            )
        return queue.open(channel, policy)

    def lane(self, channel: int) -> Lane | None:
        return self._queue.lane(channel) if self._queue is not None else None

    def purge_channel(self, channel: int) -> int:
        """Close one channel's lane (the client left the topic); returns how many frames it dropped."""
        return self._queue.close(channel) if self._queue is not None else 0

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
        self._replies = 0

    def _discard_data(self) -> None:
        if self._queue is not None:
            self._queue.clear(DropReason.CLOSED)
            self._queue = None

    # ------------------------------------------------------------ output

    def data_to_send(self, max_bytes: int | None = None) -> list[ClientOutput]:
        """What to write now, in order: every control reply (with the subscription items that
        follow some), then data frames.

        Data frames come by priority, topics of one priority sharing by bytes, each frame after
        the skipped frame that explains a gap before it. With ``max_bytes``, data stops once that
        many bytes are out (the last frame may go over) and the rest waits for the next call.
        """
        out, self._control = self._control, []
        self._replies = 0
        queue = self._queue
        if queue is not None and (queue.count or queue.behind_lanes):
            queue.drain(out, max_bytes)
        return out

    @property
    def has_output(self) -> bool:
        return bool(self._control or (self._queue is not None and self._queue.count))

    @property
    def queued_messages(self) -> int:
        """Data frames waiting (control replies and skipped frames not counted)."""
        return self._queue.count if self._queue is not None else 0

    @property
    def queued_bytes(self) -> int:
        return self._queue.bytes if self._queue is not None else 0

    @property
    def pending_messages(self) -> int:
        """Messages neither queued nor counted in :attr:`dropped` yet: frames held for a rate-limit
        token, and messages owed to a ``reliable`` topic that is behind."""
        return self._queue.pending if self._queue is not None else 0

    @property
    def too_slow(self) -> bool:
        """A ``disconnect`` topic found the queue full: the hub closes the client (code 4003)."""
        return self._queue is not None and self._queue.too_slow

    @property
    def recovered(self) -> int:
        """Frames queued from the router's history to refill a ``reliable`` topic."""
        return self._queue.recovered if self._queue is not None else 0

    @property
    def pending_replies(self) -> int:
        return self._replies
