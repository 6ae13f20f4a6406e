"""batched (edges/core/batches.py): any mix of data, skipped and restarted frames, replies and
subscription items, packed and then read back as a client would, gives every frame once, in order,
replies where they fell, and batches no larger than the bound unless one record is."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edges.core.batches import Batch, batched
from edges.core.client_wire import Pong, split_batch
from edges.core.output import (
    JOIN_BELOW,
    ClientOutput,
    Data,
    Reply,
    Skipped,
    SubscriptionOpened,
    data_frame,
    record,
    reply,
)
from edges.websocket.framing import binary_frame_header
from tests.strategies import scaled_examples

BOUNDS = st.sampled_from([1, 40, 100, 4096, 64 * 1024])
PAYLOAD_SIZES = {"data": st.integers(0, 100), "large": st.integers(JOIN_BELOW, JOIN_BELOW + 50)}
"""Payloads joined to their frame's head, and payloads that stay apart."""


def unframed(item: Data | Skipped) -> bytes:
    """The frame a client reads, without the WebSocket framing."""
    if isinstance(item, Skipped):
        return item.record[4:]
    return item.frame()[item.framed_by :]


@st.composite
def outputs(draw: st.DrawFn) -> list[ClientOutput]:
    items: list[ClientOutput] = []
    for n in range(draw(st.integers(0, 30))):
        kind = draw(st.sampled_from(["data", "large", "skipped", "reply", "opened"]))
        if kind in ("data", "large"):
            size = (
                draw(st.integers(0, 100))
                if kind == "data"
                else draw(st.integers(JOIN_BELOW, JOIN_BELOW + 50))
            )
            framing = draw(st.sampled_from([None, binary_frame_header]))
            items.append(data_frame(n % 3, n + 1, bytes([n % 256]) * size, framing))
        elif kind == "skipped":
            frame = b"\x02" + bytes(draw(st.integers(1, 30)))
            items.append(Skipped(n % 3, binary_frame_header(len(frame)) + frame, record(frame)))
        elif kind == "reply":
            items.append(reply(Pong(id=n)))
        else:
            items.append(SubscriptionOpened(n % 3, f"/t/{n}", "", "best_effort"))
    return items


def websocket_body(message: bytes) -> bytes:
    """The data of one unmasked WebSocket binary frame, checked against its header."""
    assert message[0] == 0x82
    length, start = message[1] & 0x7F, 2
    if length >= 126:
        start += 2 if length == 126 else 8
        length = int.from_bytes(message[2:start], "big")
    assert len(message) - start == length, "the framing does not say the message's size"
    return message[start:]


def records(batch: Batch) -> list[bytes]:
    """A batch's frames, read back record by record after its WebSocket framing."""
    parts, size = batch
    message = b"".join(bytes(part) for part in parts)
    assert len(message) == size
    return split_batch(websocket_body(message))


@settings(max_examples=scaled_examples(300))
@given(items=outputs(), most=BOUNDS)
def test_batches_carry_every_frame_once_in_order_with_replies_between(
    items: list[ClientOutput], most: int
) -> None:
    expected: list[bytes | Reply] = []
    for item in items:
        if isinstance(item, Data | Skipped):
            expected.append(unframed(item))
        elif isinstance(item, Reply):
            expected.append(item)
    got: list[bytes | Reply] = []
    previous: int | None = None
    for out in batched(items, most, binary_frame_header):
        if isinstance(out, Reply):
            got.append(out)
            previous = None
            continue
        frames = records(out)
        assert frames, "an empty batch"
        size = sum(4 + len(frame) for frame in frames)
        assert size <= most or len(frames) == 1, f"{size} bytes in {len(frames)} records"
        if previous is not None:
            assert previous + 4 + len(frames[0]) > most, "a batch split that was not needed"
        got += frames
        previous = size
    assert got == expected


def test_a_data_frames_record_is_built_once_and_shared() -> None:
    frame = data_frame(1, 7, b"x" * (JOIN_BELOW + 1), binary_frame_header)
    assert frame.record_head() is frame.record_head()
    assert frame.alone_head(binary_frame_header) is frame.alone_head(binary_frame_header)
    assert frame.record_head() == struct.pack("!I", 14 + JOIN_BELOW + 1) + frame.head[frame.framed_by :]
    assert frame.record_head()[4:] == frame.frame()[frame.framed_by : frame.framed_by + 14]


@pytest.mark.parametrize("message", [b"\0\0", b"\0\0\0\x05abc", b"\0\0\0\x01a\0"])
def test_a_batch_whose_records_do_not_fit_is_refused(message: bytes) -> None:
    with pytest.raises(ValueError, match="record"):
        split_batch(message)
