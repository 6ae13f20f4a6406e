"""The WebSocket edge never logs client messages, which can carry tokens."""

from __future__ import annotations

import logging

import pytest
from websockets.http11 import Request

from edges.websocket.edge import WebSocketEdge, WebSocketEdgeConfig


async def test_frame_logging_stays_off_at_debug_level(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    protocol = WebSocketEdge(WebSocketEdgeConfig(port=0)).new_protocol()
    secret = '{"op":"connect","token":"eyJhbGciOiJIUzI1NiJ9.secret-part.signature"}'
    protocol.receive_data(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    [request] = protocol.events_received()
    assert isinstance(request, Request)
    protocol.send_response(protocol.accept(request))
    mask = b"\x00\x00\x00\x00"
    protocol.receive_data(bytes((0x81, 0x80 | len(secret))) + mask + secret.encode())
    assert protocol.events_received()
    assert "secret-part" not in caplog.text
    assert protocol.logger.isEnabledFor(logging.INFO)
