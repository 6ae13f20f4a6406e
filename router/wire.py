"""The router's wire formats, with no I/O: producer frames, data frames to edges, control messages.

``docs/protocol.md`` describes the same formats byte by byte for other languages. Every decoder
here raises :class:`WireError` with a short reason on bad input, and nothing else.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence, Sized
from typing import Final, NamedTuple, TypeVar

import msgspec

from router.core.edge_reports import ClientFigures, EdgeTotals
from router.core.history import ENTRY_OVERHEAD, MAX_ENTRY_BYTES, RECOVER_BATCH_BYTES
from router.core.policy import DeliveryPolicy

__all__ = [
    "CLOSE_DROPPED",
    "CLOSE_GOING_AWAY",
    "CONTROL_VERSION",
    "DATA_VERSION",
    "FORWARDED",
    "DataMeta",
    "DropClient",
    "EdgeMessage",
    "EdgeStatsReport",
    "Error",
    "Heartbeat",
    "Hello",
    "PolicyUpdate",
    "ProducerHeader",
    "ProducerMessage",
    "Recover",
    "Recovered",
    "RefreshToken",
    "Refreshed",
    "RegisterClient",
    "Registered",
    "RouterEndpoints",
    "RouterMessage",
    "ShardMap",
    "Stats",
    "StatsRequest",
    "Subscribe",
    "SubscribeOk",
    "UnregisterClient",
    "Unsubscribe",
    "Unsubscribed",
    "Welcome",
    "WireError",
    "data_frame_head",
    "decode_edge_message",
    "decode_router_message",
    "encode_control",
    "parse_data_head",
    "parse_producer_frames",
]


class WireError(ValueError):
    """Bytes that do not follow the protocol. ``reason`` is a short, stable drop reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# ---------------------------------------------------------------- producer -> router

MAX_HEADER_BYTES: Final = 4096


class ProducerHeader(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The optional middle frame of a producer message: a msgpack map, every key optional.

    Unknown keys are ignored, so producers may add their own.
    """

    content_type: str | None = None
    timestamp: int | None = None
    key: str | None = None


_Frame = TypeVar("_Frame", bound=Sized)


class ProducerMessage(NamedTuple):
    topic: bytes
    header: bytes
    payload: bytes


_header_decoder = msgspec.msgpack.Decoder(ProducerHeader)
# msgspec raises UnicodeDecodeError for a str that is not UTF-8 and RecursionError for deep nesting.
_DECODE_ERRORS = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)


def parse_producer_frames(frames: Sequence[bytes]) -> ProducerMessage:
    """Split ``[topic, payload]`` or ``[topic, header, payload]``; checks the header's form."""
    topic, header, payload = split_producer_frames(frames)
    return ProducerMessage(topic, check_producer_header(header or b""), payload)


def split_producer_frames(frames: Sequence[_Frame]) -> tuple[_Frame, _Frame | None, _Frame]:
    """``(topic, header or None, payload)`` of a producer message, frames of any buffer type."""
    if len(frames) == 2:
        return frames[0], None, frames[1]
    if len(frames) == 3:
        return frames[0], frames[1], frames[2]
    raise WireError("bad_frames", f"a producer message has 2 or 3 frames, not {len(frames)}")


FORWARDED: Final = b"\0switchboard:forwarded"
"""The fourth frame of a producer message one router of a cluster passes to the shard's owner:
``[topic, header, payload, FORWARDED]``. The owner handles it like any other, but never forwards
it again."""


def demand_frame(rate: float) -> bytes:
    """The second frame of a demand message (``[topic, rate]``, router -> producers): the most
    messages per second the topic's watchers want, as ASCII: ``0`` when nobody watches, ``inf``
    when one of them takes every message, else a decimal number (``5``, ``2.5``)."""
    if rate == math.inf:
        return b"inf"
    return (str(int(rate)) if rate.is_integer() else repr(rate)).encode()


def check_producer_header(header: bytes) -> bytes:
    """Return ``header`` unchanged if it is empty or a valid header, else raise ``bad_header``."""
    if header:
        decode_producer_header(header)
    return header


def decode_producer_header(header: bytes) -> ProducerHeader:
    if len(header) > MAX_HEADER_BYTES:
        raise WireError("bad_header", f"header over {MAX_HEADER_BYTES} bytes")
    try:
        return _header_decoder.decode(header)
    except _DECODE_ERRORS as error:
        raise WireError("bad_header", f"header is not a msgpack map of known fields: {error}") from None


# ---------------------------------------------------------------- router -> edges (data)

DATA_VERSION: Final = 1
_DATA_META = struct.Struct("!BBHIQ")
DATA_META_SIZE: Final = _DATA_META.size


class DataMeta(NamedTuple):
    topic: bytes
    epoch: int
    offset: int
    header: bytes


def data_frame_head(topic: bytes, epoch: int, offset: int, header: bytes = b"") -> bytes:
    """Frame 0 of a data message on XPUB: ``topic NUL meta header``.

    The NUL after the topic makes a SUB subscription to ``topic + b"\\0"`` match exactly one
    topic, since topics never contain NUL.
    """
    return b"".join((topic, b"\0", _DATA_META.pack(DATA_VERSION, 0, 0, epoch, offset), header))


def parse_data_head(head: bytes) -> DataMeta:
    """Inverse of :func:`data_frame_head`."""
    end = head.find(b"\0")
    if end < 1:
        raise WireError("bad_data", "frame 0 has no NUL-terminated topic")
    meta_end = end + 1 + DATA_META_SIZE
    if len(head) < meta_end:
        raise WireError("bad_data", "frame 0 is shorter than its fixed header")
    version, _flags, _reserved, epoch, offset = _DATA_META.unpack_from(head, end + 1)
    if version != DATA_VERSION:
        raise WireError("bad_data", f"data version {version} is not {DATA_VERSION}")
    return DataMeta(head[:end], epoch, offset, head[meta_end:])


# ---------------------------------------------------------------- edges <-> router (control)

CONTROL_VERSION: Final = 1


class _Control(msgspec.Struct, kw_only=True, tag_field="type"):
    pass


class Hello(_Control, tag="hello"):
    """Edge -> router, first message and after any reset. Drops what the router held for it."""

    edge_id: str
    protocol: str
    version: int = CONTROL_VERSION
    session: str = ""
    """The ``session`` of the last ``welcome`` this edge process got: it proves that a new
    connection is the same edge (``router/core/edge_claims.py``)."""


class Welcome(_Control, tag="welcome"):
    """Router -> edge, the answer to hello."""

    router_id: str
    version: int
    heartbeat_interval: float
    heartbeat_timeout: float
    session: str = ""
    """A secret for this edge's next ``hello`` from a new connection, while the edge is live."""


class Heartbeat(_Control, tag="heartbeat"):
    """Both ways. From the router, ``router_id`` lets an edge notice a router restart."""

    router_id: str = ""


class RegisterClient(_Control, tag="register"):
    request_id: int
    client_id: str
    protocol: str = "websocket"
    remote: str = ""
    token: str | None = None


class Registered(_Control, tag="registered"):
    request_id: int
    client_id: str
    user: str


class RefreshToken(_Control, tag="refresh"):
    """Edge -> router: the client sent a new token for its open session."""

    request_id: int
    client_id: str
    token: str


class Refreshed(_Control, tag="refreshed"):
    """Router -> edge: the new token is accepted. ``expires_at``: when the session now ends
    (seconds since the Unix epoch; ``None``: never). ``revoked``: the client's subscriptions the
    new token does not allow, which the router ended."""

    request_id: int
    client_id: str
    user: str
    expires_at: float | None = None
    revoked: list[str] = []


class UnregisterClient(_Control, tag="unregister"):
    """No reply: the client is gone either way. ``reason`` says why, in words for people (empty
    from an edge that does not say)."""

    client_id: str
    reason: str = ""


class Subscribe(_Control, tag="subscribe"):
    """Edge -> router. With ``resume_epoch`` and ``resume_offset`` (the last message the client
    has), the reply's ``resume`` says whether the messages after it can be recovered. ``max_rate``:
    the most messages per second the client asked for (``None``: as many as the policy gives);
    the router tells producers the highest such rate of each topic (its demand)."""

    request_id: int
    client_id: str
    topic: str
    resume_epoch: int | None = None
    resume_offset: int | None = None
    max_rate: float | None = None


RESUME_NONE: Final = "none"
"""``SubscribeOk.resume`` when the subscribe asked for no resume."""


class SubscribeOk(_Control, tag="subscribed"):
    """Router -> edge. ``resume``: ``none``, ``ok``, ``history_exceeded``, ``epoch_changed`` or
    ``not_reliable``. With ``ok`` or ``history_exceeded``, :class:`Recover` with ``from_offset =
    resume_from`` and ``to_offset = resume_to`` fetches what the history holds of the gap."""

    request_id: int
    client_id: str
    topic: str
    epoch: int
    offset: int
    content_type: str
    policy: DeliveryPolicy
    resume: str = RESUME_NONE
    resume_from: int = 0
    resume_to: int = 0


class Unsubscribe(_Control, tag="unsubscribe"):
    request_id: int
    client_id: str
    topic: str


class Unsubscribed(_Control, tag="unsubscribed"):
    request_id: int
    client_id: str
    topic: str


class Error(_Control, tag="error"):
    """Router -> edge: a refused request. ``code`` is one of ``ErrorCode``'s values."""

    request_id: int
    code: str
    message: str
    client_id: str = ""


class PolicyUpdate(_Control, tag="policy"):
    topic: str
    policy: DeliveryPolicy


CLOSE_DROPPED: Final = 4002
"""The close code of a client whose session the router ended (its token expired, an operator
kicked it)."""
CLOSE_GOING_AWAY: Final = 1001
"""The close code that tells a client to connect again, to another edge if it can (a drain)."""


class DropClient(_Control, tag="drop_client"):
    """Router -> edge: close this client with ``code`` (:data:`CLOSE_DROPPED` or
    :data:`CLOSE_GOING_AWAY`); the router has forgotten it already."""

    client_id: str
    reason: str
    code: int = CLOSE_DROPPED


class Recover(_Control, tag="recover"):
    """Edge -> router: the messages of ``topic`` after ``from_offset`` up to ``to_offset`` (default:
    the newest) in sequence ``epoch``. One of the edge's clients must be subscribed to the topic."""

    request_id: int
    topic: str
    epoch: int
    from_offset: int
    to_offset: int | None = None


class Recovered(_Control, tag="recovered"):
    """Router -> edge: ``messages`` as ``[offset, header, payload]``, in order, from the first after
    ``from_offset``. ``more``: the reply's size bound was reached; ask again from the last offset."""

    request_id: int
    topic: str
    epoch: int
    messages: list[tuple[int, bytes, bytes]]
    more: bool = False


class StatsRequest(_Control, tag="stats_request"):
    request_id: int


class EdgeStatsReport(_Control, tag="edge_stats"):
    """Edge -> router, no reply: the edge's totals, each topic's drops, and the figures of the
    clients that changed since its last report (all of them after a welcome). A report too big
    for one message goes as several, each with the totals."""

    totals: EdgeTotals
    topic_drops: dict[str, int] = {}
    clients: list[ClientFigures] = []


class Stats(_Control, tag="stats"):
    request_id: int
    stats: dict[str, object]


class RouterEndpoints(msgspec.Struct, frozen=True, kw_only=True):
    """Where an edge reaches one router of a cluster."""

    control: str
    xpub: str


NO_OWNER: Final = ("", 0)


class ShardMap(_Control, tag="shards"):
    """Router -> edge, in cluster mode only, after each ``welcome`` and whenever it changes: each
    shard's owner as ``[router_id, fencing token]`` (:data:`NO_OWNER` while it has none) and where
    every live router is. Maps from different routers can disagree for a moment; an edge keeps,
    shard by shard, the owner with the highest token, and takes a shard's data only from it."""

    shards: int
    owners: list[tuple[str, int]]
    routers: dict[str, RouterEndpoints] = {}


EdgeMessage = (
    Hello
    | Heartbeat
    | RegisterClient
    | RefreshToken
    | UnregisterClient
    | Subscribe
    | Unsubscribe
    | Recover
    | StatsRequest
    | EdgeStatsReport
)
RouterMessage = (
    Welcome
    | Heartbeat
    | Registered
    | Refreshed
    | SubscribeOk
    | Unsubscribed
    | Recovered
    | Error
    | PolicyUpdate
    | DropClient
    | Stats
    | ShardMap
)

MAX_CONTROL_BYTES: Final = 64 * 1024
"""The largest control message an edge may send, and any router message but ``recovered``."""
MAX_RECOVERED_BYTES: Final = RECOVER_BATCH_BYTES
"""What a ``recovered`` reply's messages weigh at most (each ``ENTRY_OVERHEAD`` bytes over its
header and payload), unless its one message alone is heavier."""
MAX_ROUTER_MESSAGE_BYTES: Final = (
    max(MAX_RECOVERED_BYTES, MAX_ENTRY_BYTES + ENTRY_OVERHEAD) + MAX_CONTROL_BYTES
)
"""The largest router message an edge accepts: a ``recovered`` reply at its largest."""
_encoder = msgspec.msgpack.Encoder()
_edge_decoder: msgspec.msgpack.Decoder[EdgeMessage] = msgspec.msgpack.Decoder(EdgeMessage)
_router_decoder: msgspec.msgpack.Decoder[RouterMessage] = msgspec.msgpack.Decoder(RouterMessage)
_T = TypeVar("_T")


def encode_control(message: EdgeMessage | RouterMessage) -> bytes:
    return _encoder.encode(message)


def decode_edge_message(body: bytes) -> EdgeMessage:
    """Decode what an edge sent to the router."""
    return _decode(_edge_decoder, body, MAX_CONTROL_BYTES)


def decode_router_message(body: bytes) -> RouterMessage:
    """Decode what the router sent to an edge."""
    return _decode(_router_decoder, body, MAX_ROUTER_MESSAGE_BYTES)


def _decode(decoder: msgspec.msgpack.Decoder[_T], body: bytes, most: int) -> _T:
    if len(body) > most:
        raise WireError("bad_control", f"control message over {most} bytes")
    try:
        return decoder.decode(body)
    except _DECODE_ERRORS as error:
        raise WireError("bad_control", str(error)) from None
