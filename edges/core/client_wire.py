"""The client protocol ``switchboard.v1``, with no I/O: JSON control messages, binary data frames
and the skipped frames that explain a gap.

The same messages run over a WebSocket (subprotocol :data:`SUBPROTOCOL`) and, later, a WebRTC data
channel. ``docs/protocol.md`` (section 4) describes them for client authors. Rules for evolving them:
new fields get defaults, and decoders skip fields they do not know, so either side may be newer.
"""

from __future__ import annotations

import struct
from enum import IntEnum, IntFlag
from typing import Annotated, Final, NamedTuple

import msgspec

from router.core.errors import ErrorCode

__all__ = [
    "CLIENT_ERROR_CODES",
    "DATA_HEADER",
    "DEFAULT_URL",
    "FRAME_DATA",
    "FRAME_RESTARTED",
    "FRAME_SKIPPED",
    "MAX_CLOSE_REASON_BYTES",
    "MAX_MESSAGE_BYTES",
    "MAX_WINDOW",
    "RECORD_LENGTH",
    "SKIPPED_FRAME",
    "SUBPROTOCOL",
    "Ack",
    "ClientMessage",
    "ClientProtocolError",
    "CloseCode",
    "Closing",
    "Connect",
    "Connected",
    "DataFrame",
    "ErrorReply",
    "Ping",
    "Pong",
    "Refresh",
    "Refreshed",
    "Resume",
    "ServerMessage",
    "SkipReason",
    "SkippedFrame",
    "Subscribe",
    "Subscribed",
    "Track",
    "Unsubscribe",
    "Unsubscribed",
    "client_error_code",
    "close_reason",
    "decode_client_message",
    "encode_data_frame",
    "encode_restarted_frame",
    "encode_server_message",
    "encode_skipped_frame",
    "frame_type",
    "parse_data_frame",
    "parse_restarted_frame",
    "parse_skipped_frame",
    "split_batch",
]

SUBPROTOCOL: Final = "switchboard.v1"
DEFAULT_URL: Final = "ws://127.0.0.1:7780/"
MAX_MESSAGE_BYTES: Final = 64 * 1024
_MAX_DETAIL = 200

RequestId = Annotated[int, msgspec.Meta(ge=0, le=2**53 - 1)]
"""A client's request id: echoed in the reply; small enough for a JavaScript number."""
Position = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
MAX_WINDOW: Final = 1024
Window = Annotated[int, msgspec.Meta(ge=1, le=MAX_WINDOW)]
Channel = Annotated[int, msgspec.Meta(ge=0, le=2**32 - 1)]
MaxRate = Annotated[float, msgspec.Meta(gt=0)]
"""Messages per second: JSON has no NaN or infinity, and a number too large for a float is
refused as out of range, so a decoded one is finite."""

CLIENT_ERROR_CODES: Final = frozenset(
    code.value
    for code in (
        ErrorCode.BAD_REQUEST,
        ErrorCode.UNAUTHORIZED,
        ErrorCode.FORBIDDEN,
        ErrorCode.UNKNOWN_TOPIC,
        ErrorCode.BAD_TOPIC,
        ErrorCode.LIMIT_EXCEEDED,
        ErrorCode.TOO_LARGE,
        ErrorCode.NOT_SUBSCRIBED,
        ErrorCode.RATE_LIMITED,
        ErrorCode.UNAVAILABLE,
        ErrorCode.INTERNAL,
    )
)
RETRY_LATER: Final = frozenset(
    {ErrorCode.UNKNOWN_CLIENT.value, ErrorCode.UNKNOWN_EDGE.value, ErrorCode.NOT_OWNER.value}
)
"""Router codes that mean the router lost this edge's or client's session for a while (the edge
registers them again), or that the topic's shard is moving: the client is told to retry
(``unavailable``)."""


def client_error_code(router_code: str) -> str:
    """The code a client sees for a router error: itself if clients know it, ``unavailable`` for
    a session the router is being given again, else ``internal``."""
    if router_code in RETRY_LATER:
        return ErrorCode.UNAVAILABLE.value
    return router_code if router_code in CLIENT_ERROR_CODES else ErrorCode.INTERNAL.value


class CloseCode(IntEnum):
    """Why the edge closes a client: the WebSocket close code, also sent in ``closing``."""

    NORMAL = 1000
    GOING_AWAY = 1001
    POLICY_VIOLATION = 1008
    INTERNAL_ERROR = 1011
    REFUSED = 4001
    """The router refused ``connect``; the ``error`` just before says why."""
    DROPPED = 4002
    """The router ended the client's session (for example, its token expired)."""
    TOO_SLOW = 4003
    """A topic with ``slow_client = "disconnect"`` had no room left in the client's queue."""
    RATE_LIMITED = 4004
    """The client went on sending after ``request_burst`` of its messages were refused as
    ``rate_limited`` in a row."""
    CONNECT_TIMEOUT = 4005
    """The client sent no ``connect`` within the edge's connect timeout of opening."""
    UNANSWERED = 4006
    """No router answered the client's ``connect`` within the edge's request timeout (the ``error``
    just before says so): connect again later."""


MAX_CLOSE_REASON_BYTES: Final = 123


def close_reason(reason: str) -> str:
    """``reason`` cut to what a WebSocket close frame can carry."""
    return reason.encode(errors="replace")[:MAX_CLOSE_REASON_BYTES].decode(errors="ignore")


class ClientProtocolError(ValueError):
    """A client message the edge cannot accept. ``code`` is ``bad_request`` or ``too_large``."""

    def __init__(self, code: str, message: str, request_id: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.request_id = request_id


# ---------------------------------------------------------------- client -> edge


class _ClientOp(msgspec.Struct, kw_only=True, tag_field="op"):
    pass


class Connect(_ClientOp, tag="connect"):
    """Must be the first message. ``token`` is checked by the router's session manager; ``batch``
    asks for binary messages that each carry several frames (``docs/protocol.md``, 4.4.5)."""

    token: str | None = None
    batch: bool = False


class Resume(msgspec.Struct, kw_only=True):
    """The last position a client saw on a topic, from ``subscribed`` and its data frames."""

    epoch: Position
    offset: Position


class Subscribe(_ClientOp, tag="subscribe"):
    """``window``: at most this many data frames of the topic in flight, each one until the
    client acknowledges it with :class:`Ack` (``None``: no limit). ``max_rate``: at most this
    many messages of the topic per second for this client, under the topic's own ``max_rate``
    (``None``: as many as the policy lets through); ignored on a ``reliable`` topic."""

    id: RequestId
    topic: str
    resume: Resume | None = None
    window: Window | None = None
    max_rate: MaxRate | None = None


class Unsubscribe(_ClientOp, tag="unsubscribe"):
    id: RequestId
    topic: str


class Ping(_ClientOp, tag="ping"):
    id: RequestId


class Refresh(_ClientOp, tag="refresh"):
    """A new token for the open session, for the same user; checked like ``connect``'s."""

    id: RequestId
    token: str


class Ack(_ClientOp, tag="ack"):
    """The client is done with every frame of ``channel`` up to ``offset``: on a subscription
    with a ``window``, as many frames may follow. No reply."""

    channel: Channel
    offset: Position


ClientMessage = Connect | Subscribe | Unsubscribe | Ping | Refresh | Ack


class _IdProbe(msgspec.Struct):
    id: RequestId | None = None


_decoder: Final[msgspec.json.Decoder[ClientMessage]] = msgspec.json.Decoder(ClientMessage)
_id_probe: Final = msgspec.json.Decoder(_IdProbe)


def decode_client_message(text: str, max_bytes: int = MAX_MESSAGE_BYTES) -> ClientMessage:
    """Decode one text message from a client, or raise :class:`ClientProtocolError` (only that).

    When the message is well-formed JSON with a valid ``id``, the error carries it, so the
    client can match the refusal to its request.
    """
    if len(text) > max_bytes:
        raise ClientProtocolError(ErrorCode.TOO_LARGE, f"a message is at most {max_bytes} bytes")
    try:
        data = text.encode()
    except UnicodeEncodeError:
        raise ClientProtocolError(ErrorCode.BAD_REQUEST, "the message is not valid UTF-8") from None
    if len(data) > max_bytes:
        raise ClientProtocolError(ErrorCode.TOO_LARGE, f"a message is at most {max_bytes} bytes")
    try:
        return _decoder.decode(data)
    except msgspec.ValidationError as error:
        raise ClientProtocolError(ErrorCode.BAD_REQUEST, _detail(error), _probe_id(data)) from None
    except (msgspec.DecodeError, RecursionError) as error:
        raise ClientProtocolError(ErrorCode.BAD_REQUEST, _detail(error)) from None


def _probe_id(data: bytes) -> int | None:
    try:
        return _id_probe.decode(data).id
    except (msgspec.DecodeError, RecursionError):
        return None


def _detail(error: Exception) -> str:
    return str(error)[:_MAX_DETAIL]


# ---------------------------------------------------------------- edge -> client (JSON)


class _ServerOp(msgspec.Struct, kw_only=True, tag_field="op"):
    pass


class Connected(_ServerOp, tag="connected", omit_defaults=True):
    """``batch``: binary messages are batches of frames from now on (the client asked, and the
    transport batches); left out when they are not."""

    client_id: str
    user: str
    batch: bool = False


class Subscribed(_ServerOp, tag="subscribed"):
    """``epoch`` and ``offset`` are the topic's position now: data frames follow with larger offsets.

    ``channel`` is the number this edge puts in the topic's data frames; ``policy`` is the topic's
    delivery policy kind (``best_effort``, ``latest`` or ``reliable``). ``resume`` answers the
    subscribe's ``resume``: ``none``, ``ok`` (the frames after the client's position follow, then
    live ones), ``history_exceeded`` (they follow from ``resume_from + 1``; those before are lost),
    ``epoch_changed`` or ``not_reliable`` (data starts after ``offset``).
    """

    id: int
    topic: str
    channel: int
    epoch: int
    offset: int
    content_type: str
    policy: str
    resume: str = "none"
    resume_from: int = 0


class Unsubscribed(_ServerOp, tag="unsubscribed"):
    id: int
    topic: str


class Pong(_ServerOp, tag="pong"):
    id: int


class Refreshed(_ServerOp, tag="refreshed"):
    """The new token is accepted: the session now ends at ``expires_at`` (seconds since the Unix
    epoch), or never (``None``)."""

    id: int
    expires_at: float | None


class ErrorReply(_ServerOp, tag="error", omit_defaults=True):
    """A refusal. ``id`` is the request's id, or null when there was none (or it was unreadable).

    ``topic`` is set when a subscription the client held was lost without a request of its own.
    """

    id: int | None
    code: str
    message: str
    topic: str | None = None


class Track(_ServerOp, tag="track"):
    """WebRTC only: the video transceiver ``mid`` of the client's offer now carries ``topic``
    (``channel``), whose data frames no longer come on the data channels (section 4.9.3)."""

    topic: str
    channel: int
    mid: str


class Closing(_ServerOp, tag="closing"):
    """Sent just before the edge closes the connection; ``code`` is a :class:`CloseCode`."""

    code: int
    reason: str


ServerMessage = Connected | Subscribed | Unsubscribed | Pong | Refreshed | ErrorReply | Track | Closing

_encoder: Final = msgspec.json.Encoder()


def encode_server_message(message: ServerMessage) -> str:
    """The JSON text of one edge -> client message."""
    return _encoder.encode(message).decode()


# ---------------------------------------------------------------- edge -> client (binary)

FRAME_DATA: Final = 0x01
DATA_HEADER: Final = struct.Struct("!BBIQ")
"""Frame type, flags, channel, offset: 14 bytes, big-endian, then the payload."""


class DataFrame(NamedTuple):
    kind: int
    flags: int
    channel: int
    offset: int
    payload: bytes


def encode_data_frame(channel: int, offset: int, payload: bytes) -> bytes:
    """One data frame; identical for every client of the topic, so build it once."""
    return DATA_HEADER.pack(FRAME_DATA, 0, channel, offset) + payload


def parse_data_frame(frame: bytes) -> DataFrame:
    """Inverse of :func:`encode_data_frame` (for clients and tests). Raises ``ValueError``."""
    if len(frame) < DATA_HEADER.size:
        raise ValueError(f"a data frame has at least {DATA_HEADER.size} bytes, not {len(frame)}")
    kind, flags, channel, offset = DATA_HEADER.unpack_from(frame)
    return DataFrame(kind, flags, channel, offset, frame[DATA_HEADER.size :])


FRAME_SKIPPED: Final = 0x02
FRAME_RESTARTED: Final = 0x03
RESTARTED_FRAME: Final = struct.Struct("!BBIQ")
"""Frame type, flags, channel, the new epoch: 14 bytes, big-endian."""
SKIPPED_FRAME: Final = struct.Struct("!BBIQQI")
"""Frame type, reasons, channel, first offset, last offset, count: 26 bytes, big-endian."""
_MAX_COUNT: Final = 2**32 - 1


class SkipReason(IntFlag):
    """Why the edge did not send messages on purpose; a skipped frame carries one or more."""

    CONFLATED = 0x01
    """A newer message of a ``latest`` topic replaced it."""
    RATE_LIMITED = 0x02
    """Over the topic's ``max_rate``, or the client's own (its ``subscribe``'s), for this client."""
    QUEUE_FULL = 0x04
    """The client's queue had no room (or the message alone is over the queue's byte bound)."""
    BEHIND = 0x08
    """A ``reliable`` topic's queue was full and the edge could not refill it from the history."""
    NOT_RECEIVED = 0x10
    """The edge never received it from the router (not a ``reliable`` topic): lost between the
    router and the edge, or not sent while the router did not know this client (the edge was
    registering its clients again). Not a loss upstream of the router."""


class SkippedFrame(NamedTuple):
    kind: int
    reasons: SkipReason
    channel: int
    first: int
    last: int
    skipped: int
    """How many messages the edge skipped between ``first`` and ``last``."""


def encode_skipped_frame(channel: int, reasons: int, first: int, last: int, count: int) -> bytes:
    """The frame that goes just before a channel's next data frame when messages were skipped.

    ``first`` and ``last`` are the offsets of the first and last skipped message; ``count`` (capped
    at 2**32 - 1) is how many the edge skipped between them. An offset gap that no skipped frame
    covers is real loss upstream of the edge.
    """
    return SKIPPED_FRAME.pack(FRAME_SKIPPED, reasons, channel, first, last, min(count, _MAX_COUNT))


def encode_restarted_frame(channel: int, epoch: int) -> bytes:
    """The frame that goes just before a channel's first data frame of a new ``epoch``: the
    topic's sequence started over (the router restarted), and what was published in between is
    lost."""
    return RESTARTED_FRAME.pack(FRAME_RESTARTED, 0, channel, epoch)


def parse_restarted_frame(frame: bytes) -> tuple[int, int]:
    """``(channel, epoch)`` of a restarted frame (for clients and tests). Raises ``ValueError``."""
    if len(frame) != RESTARTED_FRAME.size or frame[0] != FRAME_RESTARTED:
        raise ValueError(f"a restarted frame is {RESTARTED_FRAME.size} bytes of type {FRAME_RESTARTED}")
    _, _, channel, epoch = RESTARTED_FRAME.unpack(frame)
    return channel, epoch


def parse_skipped_frame(frame: bytes) -> SkippedFrame:
    """Inverse of :func:`encode_skipped_frame` (for clients and tests). Raises ``ValueError``."""
    if len(frame) != SKIPPED_FRAME.size or frame[0] != FRAME_SKIPPED:
        raise ValueError(f"a skipped frame is {SKIPPED_FRAME.size} bytes of type {FRAME_SKIPPED}")
    kind, reasons, channel, first, last, skipped = SKIPPED_FRAME.unpack(frame)
    return SkippedFrame(kind, SkipReason(reasons), channel, first, last, skipped)


RECORD_LENGTH: Final = struct.Struct("!I")
"""The length before each frame of a batch (``docs/protocol.md``, 4.4.5)."""


def split_batch(message: bytes) -> list[bytes]:
    """The frames of a batch, in order (for clients and tests). Raises ``ValueError`` for a
    record that runs past the message."""
    frames: list[bytes] = []
    at = 0
    while at < len(message):
        if len(message) - at < RECORD_LENGTH.size:
            raise ValueError(f"{len(message) - at} bytes left at {at}: not a record")
        (length,) = RECORD_LENGTH.unpack_from(message, at)
        at += RECORD_LENGTH.size
        if at + length > len(message):
            raise ValueError(f"a record of {length} bytes at {at} runs past the message")
        frames.append(message[at : at + length])
        at += length
    return frames


def frame_type(frame: bytes) -> int:
    """The type byte of a binary frame (:data:`FRAME_DATA` or :data:`FRAME_SKIPPED`)."""
    if not frame:
        raise ValueError("an empty binary frame")
    return frame[0]
