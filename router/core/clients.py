"""What the router knows of a client, and what an edge must offer to write to one."""

from __future__ import annotations

from typing import Protocol

import msgspec


class ClientInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A client as its edge registered it."""

    client_id: str
    edge_id: str
    protocol: str = "websocket"
    remote: str = ""
    connected_at: float = 0.0


class Connection(Protocol):
    """A client's transport as an edge's generic code holds it: something to write to and close,
    never to read (the edge feeds what it reads to the client's session itself).

    Each edge protocol implements it: the WebSocket edge's ``WebSocketConnection`` and the WebRTC
    edge's ``RtcPeer``. A connection holds its client's session and writes that session's pending
    output, so the per-client queue and slow-client logic is written once, in the session.
    """

    def write(self) -> None:
        """Write what the client's session has pending, as much as the transport takes now:
        control replies always, data frames only while it is :attr:`writable`."""
        ...

    def close(self, code: int, reason: str) -> None:
        """Write what the session has pending (it ends with ``closing``), then close with ``code``
        and ``reason``; later writes are ignored."""
        ...

    @property
    def writable(self) -> bool:
        """Whether the transport takes more data now; if not, frames wait in the session's queue
        under their topics' policies until it drains."""
        ...

    @property
    def buffered_amount(self) -> int:
        """Bytes written but not yet taken by the transport."""
        ...
