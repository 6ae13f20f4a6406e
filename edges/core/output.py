"""What a client session hands its shell to write: typed items, each encoded once. No I/O.

:meth:`~edges.core.session.ClientSession.data_to_send` returns these in the order they must go out.
A shell writes a :class:`Reply`'s :attr:`~Reply.text` as a text message, and a :class:`Data` or
:class:`Skipped` frame as one binary message; it routes by the item's type and never parses what the
core encoded. :class:`SubscriptionOpened` and :class:`SubscriptionClosed` carry nothing to write:
they follow the reply that opened or closed a subscription, for a shell that attaches something of
its own to it (the WebRTC edge's video slots), and other shells skip them.

A data frame is built once per message with the transport's framing (:data:`Framing`) and shared by
every subscriber's queue: its :attr:`~Data.head` (the framing and the data header) is a few bytes,
and its payload is what the link received from the router (a :data:`Payload`), never copied on the
way. A payload under :data:`JOIN_BELOW` bytes is joined to the head once instead, which costs less
than two parts per client.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Final, NamedTuple

from edges.core.client_wire import DATA_HEADER, FRAME_DATA, ServerMessage, encode_server_message

__all__ = [
    "JOIN_BELOW",
    "ClientOutput",
    "Data",
    "Framing",
    "Payload",
    "Reply",
    "Skipped",
    "SubscriptionClosed",
    "SubscriptionOpened",
    "data_frame",
    "record",
    "reply",
    "wire_form",
]

JOIN_BELOW: Final = 2048

Payload = bytes | memoryview
"""A message's payload as the edge's link received it: bytes, or for a large payload a view of the
ZeroMQ frame it arrived in, which the shells write to clients as it is."""

Framing = Callable[[int], bytes]
"""The transport's header of a binary message of that many bytes (the WebSocket edge's frame header)."""

_pack_header = DATA_HEADER.pack
_HEADER_SIZE = DATA_HEADER.size
_pack_length = struct.Struct("!I").pack


class Reply(NamedTuple):
    """A control message for the client, and its JSON text, encoded once."""

    message: ServerMessage
    text: str


def reply(message: ServerMessage) -> Reply:
    return Reply(message, encode_server_message(message))


class Data:
    """One data frame of a topic, the same object in every subscriber's queue.

    On the wire it is :attr:`head` then :attr:`payload` (empty when the head holds it all);
    :attr:`size` (also ``len()``) is its size there, which is what the client queues' bounds count.
    """

    __slots__ = ("_alone_head", "_record_head", "channel", "framed_by", "head", "offset", "payload", "size")

    def __init__(self, channel: int, offset: int, head: bytes, payload: Payload, framed_by: int = 0) -> None:
        self.channel = channel
        self.offset = offset
        self.head = head
        self.payload = payload
        self.size = len(head) + len(payload)
        self.framed_by = framed_by
        """The size of the transport's framing at the start of :attr:`head`."""
        self._record_head: bytes | None = None
        self._alone_head: bytes | None = None

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        return f"<Data channel {self.channel} offset {self.offset} {self.size} bytes>"

    def frame(self) -> bytes:
        """The frame as one bytes object (this copies a payload not joined yet)."""
        return self.head + self.payload if self.payload else self.head

    def record_head(self) -> bytes:
        """The start of the frame's record in a batch (``docs/protocol.md``, 4.4.5): its length
        and the frame without the transport's framing, :attr:`payload` to follow. Built once, for
        every client that batches."""
        head = self._record_head
        if head is None:
            unframed = self.head[self.framed_by :]
            head = self._record_head = _pack_length(len(unframed) + len(self.payload)) + unframed
        return head

    def alone_head(self, framing: Framing) -> bytes:
        """The start of a batch of this one frame: the transport's ``framing`` and the record's
        head, :attr:`payload` to follow. Built once, for every client that batches."""
        head = self._alone_head
        if head is None:
            record_head = self.record_head()
            head = self._alone_head = framing(len(record_head) + len(self.payload)) + record_head
        return head


def data_frame(channel: int, offset: int, payload: Payload, framing: Framing | None = None) -> Data:
    """The data frame of one message (``docs/protocol.md``, 4.5), with the transport's framing."""
    head = _pack_header(FRAME_DATA, 0, channel, offset)
    framed_by = 0
    if framing is not None:
        framed = framing(_HEADER_SIZE + len(payload))
        head, framed_by = framed + head, len(framed)
    if len(payload) < JOIN_BELOW:
        return Data(channel, offset, head + payload, b"", framed_by)
    return Data(channel, offset, head, payload, framed_by)


def record(frame: bytes) -> bytes:
    """``frame`` (without the transport's framing) as a record of a batch: its length, then it."""
    return _pack_length(len(frame)) + frame


class Skipped(NamedTuple):
    """A skipped or restarted frame (``docs/protocol.md``, 4.4.3 and 4.4.4): it goes on ``channel``
    just before the data frame that follows a gap. ``frame`` includes the transport's framing;
    ``record`` is the frame as a record of a batch, for a client that batches."""

    channel: int
    frame: bytes
    record: bytes


class SubscriptionOpened(NamedTuple):
    """The client is now subscribed to ``topic`` (its ``subscribed`` reply just went out)."""

    channel: int
    topic: str
    content_type: str
    policy: str
    """The topic's delivery policy kind when it opened: ``best_effort``, ``latest`` or ``reliable``."""


class SubscriptionClosed(NamedTuple):
    """The client no longer holds ``topic``: it unsubscribed, or lost it (an ``error`` naming it)."""

    topic: str


ClientOutput = Reply | Data | Skipped | SubscriptionOpened | SubscriptionClosed


def wire_form(item: ClientOutput) -> str | bytes | None:
    """What a plain transport writes for ``item``: text, one binary message, or nothing."""
    if isinstance(item, Reply):
        return item.text
    if isinstance(item, Data):
        return item.frame()
    if isinstance(item, Skipped):
        return item.frame
    return None
