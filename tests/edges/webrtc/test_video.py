"""Video topics for the WebRTC edge: content types, raw frames, one encoder per topic, and what a
viewer's slot sends (from a keyframe on, every packet in order, a jump to a keyframe when behind)."""

from __future__ import annotations

import asyncio
import fractions
from typing import Any

import av
import pytest

from edges.webrtc.video import HISTORY, VideoSlot, VideoSource, is_video, parse_raw_format, raw_frame
from tests.io.harness import eventually


def jpeg(width: int = 64, height: int = 48) -> bytes:
    encoder = av.CodecContext.create("mjpeg", "w")
    encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuvj420p"
    encoder.time_base = fractions.Fraction(1, 25)
    frame = av.VideoFrame(width, height, "yuvj420p")
    return b"".join(bytes(packet) for packet in encoder.encode(frame))


def test_video_content_types() -> None:
    assert is_video("image/jpeg")
    assert is_video("video/x-raw; format=rgb24; width=4; height=2")
    assert not is_video("application/json")
    assert parse_raw_format("video/x-raw;format=gray;width=4;height=2") == ("gray", 4, 2)
    for bad in ("video/x-raw", "video/x-raw; format=p010; width=4; height=2", "video/x-raw; format=gray"):
        with pytest.raises(ValueError, match="video/x-raw"):
            parse_raw_format(bad)


def test_raw_frames_are_unpadded_rows() -> None:
    frame = raw_frame(bytes(range(30)) * 2, "rgb24", 5, 4)
    assert (frame.width, frame.height, frame.format.name) == (5, 4, "rgb24")
    assert bytes(frame.planes[0])[:15] == bytes(range(15))
    with pytest.raises(ValueError, match="not one 5x4"):
        raw_frame(bytes(59), "rgb24", 5, 4)


async def test_a_source_encodes_the_newest_frame_and_keyframes_on_request() -> None:
    source = VideoSource("/v", "image/jpeg", max_fps=1000.0, keyframe_interval=60.0)
    try:
        source.feed(b"not a jpeg")
        source.feed(jpeg())
        await eventually(lambda: source.encoded == 1)
        assert source.packets[-1][1].is_keyframe
        source.feed(jpeg())
        await eventually(lambda: source.encoded == 2)
        assert not source.packets[-1][1].is_keyframe
        source.request_keyframe()
        await eventually(lambda: source.encoded == 3)
        assert source.packets[-1][1].is_keyframe
        assert source.newest_keyframe() == 3
    finally:
        source.close()


async def test_a_slot_starts_at_the_newest_keyframe_and_skips_to_one_when_behind() -> None:
    source = VideoSource("/v", "image/jpeg", keyframe_interval=60.0)
    source.close()
    for keyframe in (True, False, True, False, False):
        source._publish([packet(keyframe)], keyframe)
    slot = VideoSlot()
    slot.bind(source)
    assert [await sequence(slot, source) for _ in range(3)] == [3, 4, 5]
    for index in range(HISTORY + 5):
        source._publish([packet(index == 10)], index == 10)
    assert await sequence(slot, source) == 16
    slot.bind(None)
    assert source.slots == set()


def packet(keyframe: bool) -> av.Packet[Any]:
    made = av.Packet(b"\x00" * 10)
    made.is_keyframe = keyframe
    return made


async def sequence(slot: VideoSlot, source: VideoSource) -> int:
    async with asyncio.timeout(1):
        sent = await slot.recv()
    return next(number for number, kept in source.packets if kept is sent)
