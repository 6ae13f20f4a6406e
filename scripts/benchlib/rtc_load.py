"""Bench child: N aiortc clients of a WebRTC edge, all subscribed to one topic.

``--mode data``: each client counts the data frames it gets until it has ``--expected`` of them
or none came for ``--idle`` seconds. ``--mode video``: each client offers one video slot, and
counts the decoded frames of the topic's track during ``--seconds`` once every client has shown
one. Prints JSON lines: ``ready`` (all connected and subscribed), then ``done`` (data:
``received`` per client, ``last_ns``) or ``measuring`` and ``video`` (``fps`` and
``first_frame_s`` per client).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from typing import Any

from tests.io.rtc_client import RtcClient, loopback_only

CONNECT_TIMEOUT = 30.0
CONNECTS_AT_ONCE = 5
SETTLE = 0.5
"""Seconds between every viewer showing a frame and the video window: a viewer that joined a
running topic catches up from its newest keyframe in a burst, which is not its steady rate."""


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


async def open_clients(url: str, count: int, topic: str, video: bool) -> list[RtcClient]:
    gate = asyncio.Semaphore(CONNECTS_AT_ONCE)

    async def open_one() -> RtcClient:
        async with gate:
            client = RtcClient(url, video_slots=1 if video else 0)
            status, body = await client.connect()
            if status != 201:
                raise RuntimeError(f"signaling refused: {status} {body[:200]!r}")
            await client.control_message(CONNECT_TIMEOUT)
            reply = await client.request("subscribe", topic=topic)
            if reply.get("op") != "subscribed":
                raise RuntimeError(f"subscribe refused: {reply}")
            if video:
                await client.control_message(CONNECT_TIMEOUT)
            return client

    async with asyncio.timeout(CONNECT_TIMEOUT * 2):
        return list(await asyncio.gather(*(open_one() for _ in range(count))))


class DataCounts:
    def __init__(self, clients: int) -> None:
        self.received = [0] * clients
        self.last_ns = 0
        self.first = asyncio.Event()
        self.changed = asyncio.Event()

    async def count(self, index: int, client: RtcClient) -> None:
        while True:
            _, frame = await client.frames.get()
            if frame[0] == 1:
                self.received[index] += 1
                self.last_ns = time.time_ns()
                self.first.set()
                self.changed.set()


async def measure_data(clients: list[RtcClient], expected: int, idle: float, cap: float) -> None:
    counts = DataCounts(len(clients))
    tasks = [asyncio.create_task(counts.count(index, client)) for index, client in enumerate(clients)]
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(cap):
            await counts.first.wait()
            while min(counts.received) < expected:
                counts.changed.clear()
                async with asyncio.timeout(idle):
                    await counts.changed.wait()
    for task in tasks:
        task.cancel()
    emit("done", received=counts.received, last_ns=counts.last_ns)


async def measure_video(clients: list[RtcClient], seconds: float, cap: float) -> None:
    subscribed_at = time.monotonic()
    frames = [0] * len(clients)
    first_frame = [0.0] * len(clients)
    all_showing = asyncio.Event()

    async def watch(index: int, client: RtcClient) -> None:
        track = client.tracks[-1]
        while True:
            await track.recv()
            if not frames[index]:
                first_frame[index] = time.monotonic() - subscribed_at
            frames[index] += 1
            if min(frames):
                all_showing.set()

    tasks = [asyncio.create_task(watch(index, client)) for index, client in enumerate(clients)]
    async with asyncio.timeout(cap):
        await all_showing.wait()
    await asyncio.sleep(SETTLE)
    start = list(frames)
    emit("measuring")
    await asyncio.sleep(seconds)
    fps = [(now - before) / seconds for now, before in zip(frames, start, strict=True)]
    for task in tasks:
        task.cancel()
    emit("video", fps=fps, first_frame_s=first_frame)


async def main(args: argparse.Namespace) -> None:
    loopback_only()
    video = args.mode == "video"
    clients = await open_clients(args.url, args.clients, args.topic, video)
    emit("ready")
    try:
        if video:
            await measure_video(clients, args.seconds, args.cap)
        else:
            await measure_data(clients, args.expected, args.idle, args.cap)
    finally:
        for client in clients:
            await client.close()


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True, help="the edge's base URL, http://127.0.0.1:PORT")
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--mode", choices=["data", "video"], default="data")
    parser.add_argument("--expected", type=int, default=1000, help="data frames per client")
    parser.add_argument("--idle", type=float, default=2.0)
    parser.add_argument("--seconds", type=float, default=5.0, help="video measuring window")
    parser.add_argument("--cap", type=float, default=60.0, help="seconds before giving up")
    return parser


if __name__ == "__main__":
    asyncio.run(main(parser().parse_args()))
