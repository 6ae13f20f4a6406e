"""The WebSocket edge's data frame head: the same bytes websockets would write for the message."""

from __future__ import annotations

import pytest
from websockets.frames import BINARY, Frame

from edges.core.client_wire import parse_data_frame
from edges.core.output import JOIN_BELOW, data_frame
from edges.websocket.framing import binary_frame_header


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_the_header_is_websockets_own(size: int) -> None:
    data = bytes(size)
    assert binary_frame_header(size) + data == Frame(BINARY, data).serialize(mask=False)


@pytest.mark.parametrize("size", [0, 111, 112, 65_521, 65_522])
def test_a_framed_data_frame_is_one_websocket_message(size: int) -> None:
    payload = b"p" * size
    frame = data_frame(7, 42, payload, binary_frame_header)
    assert frame.payload is payload if size >= JOIN_BELOW else frame.payload == b""
    assert len(frame) == len(frame.frame())
    inner = frame.frame()[len(binary_frame_header(size + 14)) :]
    assert Frame(BINARY, inner).serialize(mask=False) == frame.frame()
    assert parse_data_frame(inner)[2:] == (7, 42, payload)
