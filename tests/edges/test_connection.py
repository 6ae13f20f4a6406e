"""Each edge's client transport is a :class:`router.core.Connection`: mypy checks these
assignments, and the test shows what the edge's generic code may rely on."""

from __future__ import annotations

from edges.webrtc.peer import RtcPeer
from edges.websocket.connection import WebSocketConnection
from router.core import Connection

TRANSPORTS: list[type[Connection]] = [WebSocketConnection, RtcPeer]


def test_every_transport_offers_what_the_edge_uses() -> None:
    for transport in TRANSPORTS:
        for name in ("write", "close", "writable", "buffered_amount"):
            assert hasattr(transport, name), (transport, name)
