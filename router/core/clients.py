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
    """A client connection as an edge holds it: something to write to and close, never to read.

    Each edge protocol (WebSocket, WebRTC, ...) adapts its transport to this, so the per-client
    queue and slow-client logic is written once.
    """

    @property
    def client_id(self) -> str: ...

    @property
    def buffered_amount(self) -> int:
        """Bytes written but not yet accepted by the transport."""
        ...

    def write(self, frames: list[bytes]) -> None:
        """Queue ``frames`` for sending, in order, without waiting."""
        ...

    def close(self, code: int, reason: str) -> None:
        """Start closing the connection; later writes are ignored."""
        ...
