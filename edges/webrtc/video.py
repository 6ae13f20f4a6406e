"""Video topics as WebRTC video tracks: each topic encoded once, the packets shared by every viewer.

A topic is a video topic when its content type is ``image/jpeg`` (one JPEG per message) or
``video/x-raw; format=rgb24; width=W; height=H`` (raw pixels in any PyAV pixel format). A
:class:`VideoSource` per watched topic keeps only the newest message, decodes it and encodes it as
VP8, at most ``max_fps`` times a second, in a worker thread. The encoded packets go to every
:class:`VideoSlot` bound to the topic: a slot is the track of one viewer's video transceiver, and
aiortc's sender only packetizes what it gets (``Encoder.pack``), so a viewer costs RTP and SRTP,
not an encoder. A slot that binds starts at the newest keyframe the source kept, so a new viewer
sees a picture at once; the source also makes a keyframe every ``keyframe_interval`` seconds and
when a viewer asks (a new slot with no keyframe to start from, or an RTCP picture loss indication).
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import logging
import time
from collections import deque
from typing import Any, Final

import av
from aiortc.mediastreams import MediaStreamTrack
from av.video.frame import PictureType

__all__ = [
    "RAW_BYTES_PER_PIXEL",
    "VideoSlot",
    "VideoSource",
    "VideoSources",
    "is_video",
    "parse_raw_format",
    "raw_frame",
]

log = logging.getLogger("switchboard.edge.video")

TIME_BASE: Final = fractions.Fraction(1, 90_000)
HISTORY: Final = 120
"""Packets a source keeps for viewers that start at a keyframe or fall behind."""
JPEG: Final = "image/jpeg"
RAW: Final = "video/x-raw"


RAW_BYTES_PER_PIXEL: Final = {"rgb24": 3, "bgr24": 3, "rgba": 4, "bgra": 4, "gray": 1, "yuv420p": 1}
"""Raw pixel formats, and bytes per pixel in each of their planes."""


def is_video(content_type: str) -> bool:
    base = content_type.split(";", 1)[0].strip().lower()
    return base in (JPEG, RAW)


def parse_raw_format(content_type: str) -> tuple[str, int, int]:
    """Pixel format, width and height of a ``video/x-raw`` content type. Raises ``ValueError``."""
    params = dict(part.strip().partition("=")[::2] for part in content_type.split(";")[1:] if "=" in part)
    try:
        fmt, width, height = params["format"].strip(), int(params["width"]), int(params["height"])
    except (KeyError, ValueError):
        raise ValueError(f"{content_type!r}: video/x-raw needs format, width and height") from None
    if fmt not in RAW_BYTES_PER_PIXEL or not (0 < width <= 8192 and 0 < height <= 8192):
        raise ValueError(f"{content_type!r}: formats are {', '.join(RAW_BYTES_PER_PIXEL)}, sizes 1 to 8192")
    return fmt, width, height


def raw_frame(payload: bytes, fmt: str, width: int, height: int) -> av.VideoFrame:
    """A frame of raw pixels, rows unpadded, planes one after the other. Raises ``ValueError``."""
    frame = av.VideoFrame(width, height, fmt)
    bytes_per_pixel = RAW_BYTES_PER_PIXEL[fmt]
    sizes = [(plane.width * bytes_per_pixel, plane.height) for plane in frame.planes]
    if len(payload) != sum(row * rows for row, rows in sizes):
        raise ValueError(f"{len(payload)} bytes is not one {width}x{height} {fmt} frame")
    start = 0
    for plane, (row, rows) in zip(frame.planes, sizes, strict=True):
        data = payload[start : start + row * rows]
        start += row * rows
        pad = bytes(plane.line_size - row)
        plane.update(data if not pad else b"".join(data[i : i + row] + pad for i in range(0, len(data), row)))
    return frame


class _Codec:
    """Decoder and VP8 encoder of one topic; used by one worker thread at a time."""

    def __init__(self, content_type: str, bitrate: int) -> None:
        self.content_type = content_type
        self.bitrate = bitrate
        self.raw = parse_raw_format(content_type) if not content_type.startswith(JPEG) else None
        self.decoder = av.CodecContext.create("mjpeg", "r") if self.raw is None else None
        self.encoder: av.VideoCodecContext | None = None
        self.last: av.VideoFrame | None = None

    def decode(self, payload: bytes) -> av.VideoFrame | None:
        if self.raw is not None:
            return raw_frame(payload, *self.raw)
        assert self.decoder is not None
        frames = self.decoder.decode(av.Packet(payload))
        return frames[-1] if frames else None

    def encode(self, payload: bytes | None, keyframe: bool, pts: int) -> list[av.Packet[Any]]:
        """Encode the newest message (or, with ``None``, the last picture again)."""
        if payload is not None:
            try:
                frame = self.decode(payload)
            except (av.FFmpegError, ValueError) as error:
                log.warning("undecodable %s frame: %s", self.content_type, error)
                frame = None
            if frame is not None:
                self.last = frame.reformat(format="yuv420p")
        frame = self.last
        if frame is None:
            return []
        encoder = self._encoder(frame)
        frame.pts = pts
        frame.time_base = TIME_BASE
        frame.pict_type = PictureType.I if keyframe else PictureType.NONE
        return list(encoder.encode(frame))

    def _encoder(self, frame: av.VideoFrame) -> av.VideoCodecContext:
        encoder = self.encoder
        if encoder is None or (encoder.width, encoder.height) != (frame.width, frame.height):
            encoder = av.CodecContext.create("libvpx", "w")
            encoder.width, encoder.height = frame.width, frame.height
            encoder.pix_fmt = "yuv420p"
            encoder.bit_rate = self.bitrate
            encoder.time_base = TIME_BASE
            encoder.gop_size = 3000
            encoder.options = {"deadline": "realtime", "cpu-used": "-6", "lag-in-frames": "0"}
            self.encoder = encoder
        return encoder


class VideoSource:
    """One video topic: the newest message in, VP8 packets out to its slots."""

    def __init__(
        self, topic: str, content_type: str, max_fps: float = 30.0, bitrate: int = 1_000_000,
        keyframe_interval: float = 1.0,
    ) -> None:  # fmt: skip
        self.topic = topic
        self.content_type = content_type
        self.min_gap = 1.0 / max_fps
        self.keyframe_interval = keyframe_interval
        self.slots: set[VideoSlot] = set()
        self.packets: deque[tuple[int, av.Packet[Any]]] = deque(maxlen=HISTORY)
        """(sequence number, packet) of the newest packets."""
        self.sequence = 0
        self.encoded = 0
        self.encode_seconds = 0.0
        """Thread CPU time spent decoding and encoding."""
        self._codec = _Codec(content_type, bitrate)
        self._payload: bytes | None = None
        self._keyframe_wanted = False
        self._wake = asyncio.Event()
        self._last_keyframe = -1e9
        self._start = time.monotonic()
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"video {topic}")

    def feed(self, payload: bytes) -> None:
        """A new message of the topic: it replaces one not encoded yet."""
        self._payload = payload
        self._wake.set()

    def request_keyframe(self) -> None:
        self._keyframe_wanted = True
        self._wake.set()

    def newest_keyframe(self) -> int | None:
        """The sequence number of the newest keyframe kept, if any."""
        for sequence, packet in reversed(self.packets):
            if packet.is_keyframe:
                return int(sequence)
        return None

    def close(self) -> None:
        self._task.cancel()
        for slot in list(self.slots):
            slot.bind(None)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            payload, self._payload = self._payload, None
            now = time.monotonic()
            keyframe = self._keyframe_wanted or now - self._last_keyframe >= self.keyframe_interval
            self._keyframe_wanted = False
            pts = int((now - self._start) * 90_000)
            try:
                packets = await loop.run_in_executor(None, self._timed_encode, payload, keyframe, pts)
            except Exception:
                log.exception("video topic %s: encoding failed", self.topic)
                packets = []
            self._publish(packets, keyframe)
            await asyncio.sleep(max(0.0, self.min_gap - (time.monotonic() - now)))

    def _timed_encode(self, payload: bytes | None, keyframe: bool, pts: int) -> list[av.Packet[Any]]:
        started = time.thread_time()
        try:
            return self._codec.encode(payload, keyframe, pts)
        finally:
            self.encode_seconds += time.thread_time() - started

    def _publish(self, packets: list[av.Packet[Any]], keyframe: bool) -> None:
        if keyframe and packets:
            self._last_keyframe = time.monotonic()
        for packet in packets:
            packet.time_base = TIME_BASE
            self.sequence += 1
            self.packets.append((self.sequence, packet))
            self.encoded += 1
        if packets:
            for slot in self.slots:
                slot.wake()


class VideoSlot(MediaStreamTrack):
    """The track of one viewer's video transceiver; bound to at most one source at a time."""

    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        self.source: VideoSource | None = None
        self.next_sequence = 0
        self.sent = 0
        self._wake = asyncio.Event()

    def bind(self, source: VideoSource | None) -> None:
        """Carry ``source`` from its newest keyframe on (or from the next one); ``None`` unbinds."""
        if self.source is not None:
            self.source.slots.discard(self)
        self.source = source
        if source is not None:
            source.slots.add(self)
            keyframe = source.newest_keyframe()
            self.next_sequence = keyframe if keyframe is not None else 0
            if keyframe is None:
                source.request_keyframe()
        self.wake()

    def wake(self) -> None:
        self._wake.set()

    def request_keyframe(self) -> None:
        """The viewer lost a picture (RTCP PLI or FIR)."""
        if self.source is not None:
            self.source.request_keyframe()

    async def recv(self) -> av.Packet[Any]:
        while True:
            packet = self._next_packet()
            if packet is not None:
                self.sent += 1
                return packet
            self._wake.clear()
            await self._wake.wait()

    def _next_packet(self) -> av.Packet[Any] | None:
        source = self.source
        if source is None or not source.packets:
            return None
        oldest = source.packets[0][0]
        if self.next_sequence == 0 or self.next_sequence < oldest:
            keyframe = source.newest_keyframe()
            if keyframe is None:
                source.request_keyframe()
                return None
            self.next_sequence = keyframe
        index = self.next_sequence - oldest
        if index >= len(source.packets):
            return None
        self.next_sequence += 1
        return source.packets[index][1]


class VideoSources:
    """The edge's video sources by topic, each alive while a slot is bound to it."""

    def __init__(self, max_fps: float = 30.0, bitrate: int = 1_000_000) -> None:
        self.max_fps = max_fps
        self.bitrate = bitrate
        self.by_wire: dict[bytes, VideoSource] = {}

    def acquire(self, topic: str, content_type: str, max_rate: float | None) -> VideoSource:
        source = self.by_wire.get(topic.encode())
        if source is None:
            fps = min(self.max_fps, max_rate) if max_rate else self.max_fps
            source = VideoSource(topic, content_type, fps, self.bitrate)
            self.by_wire[topic.encode()] = source
        return source

    def release_unused(self) -> None:
        for wire_topic, source in list(self.by_wire.items()):
            if not source.slots:
                source.close()
                del self.by_wire[wire_topic]

    def feed(self, wire_topic: bytes, payload: bytes) -> None:
        source = self.by_wire.get(wire_topic)
        if source is not None:
            source.feed(payload)

    def close(self) -> None:
        for source in self.by_wire.values():
            with contextlib.suppress(Exception):
                source.close()
        self.by_wire.clear()
