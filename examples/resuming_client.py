"""A switchboard.v1 client that never misses a message of a reliable topic.

It keeps the position (epoch, offset) of the last message it has, and when the connection drops it
connects again, to the next edge in its list, and subscribes with ``resume``: the edge replays what
it missed, then live data follows. Each message is printed as one JSON line.

    python examples/resuming_client.py /orders/all ws://127.0.0.1:7780/ ws://127.0.0.1:7781/

Only ``websockets`` is needed (``pip install websockets``); see docs/protocol.md, section 4.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import struct
import sys
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

DATA = struct.Struct("!BBIQ")  # frame type 0x01, flags, channel, offset; then the payload
SKIPPED = struct.Struct("!BBIQQI")  # frame type 0x02, reasons, channel, first, last, count
BACKOFF = (0.1, 0.2, 0.5, 1.0, 2.0)


class Follower:
    """The position of one topic, across connections."""

    def __init__(self, topic: str, limit: int | None) -> None:
        self.topic = topic
        self.limit = limit
        self.position: tuple[int, int] | None = None
        self.received = 0

    @property
    def done(self) -> bool:
        return self.limit is not None and self.received >= self.limit

    async def session(self, ws: ClientConnection) -> None:
        """One connection: connect, subscribe from the position, read until it drops or we are done."""
        await ws.send(json.dumps({"op": "connect"}))
        reply = json.loads(await ws.recv())
        if reply["op"] != "connected":
            raise SystemExit(f"refused: {reply}")
        subscribe: dict[str, Any] = {"op": "subscribe", "id": 1, "topic": self.topic}
        if self.position is not None:
            subscribe["resume"] = {"epoch": self.position[0], "offset": self.position[1]}
        await ws.send(json.dumps(subscribe))
        while not self.done:
            message = await ws.recv()
            if isinstance(message, str):
                self.control(json.loads(message))
            elif message[0] == 0x01:
                self.data(message)
            elif message[0] == 0x02:
                _, reasons, _, first, last, count = SKIPPED.unpack(message)
                report({"skipped": count, "first": first, "last": last, "reasons": reasons})

    def control(self, message: dict[str, Any]) -> None:
        if message["op"] == "subscribed":
            report({"subscribed": message["topic"], "resume": message["resume"], "epoch": message["epoch"]})
            if message["resume"] not in ("ok", "history_exceeded"):
                self.position = (message["epoch"], message["offset"])
            elif message["resume"] == "history_exceeded":
                assert self.position is not None
                report({"lost": message["resume_from"] - self.position[1]})
                self.position = (message["epoch"], message["resume_from"])
        elif message["op"] == "error":
            raise SystemExit(f"{message['code']}: {message['message']}")

    def data(self, frame: bytes) -> None:
        _, _, _, offset = DATA.unpack_from(frame)
        assert self.position is not None, "data comes after subscribed"
        epoch, last = self.position
        if offset != last + 1:
            report({"gap": offset - last - 1})
        self.position = (epoch, offset)
        self.received += 1
        report({"offset": offset, "bytes": len(frame) - DATA.size})


def report(line: dict[str, Any]) -> None:
    print(json.dumps(line), flush=True)


async def follow(topic: str, urls: list[str], limit: int | None) -> None:
    follower = Follower(topic, limit)
    failures = 0
    for url in itertools.cycle(urls):
        try:
            async with connect(url, subprotocols=["switchboard.v1"], open_timeout=5) as ws:  # type: ignore[list-item]
                failures = 0
                await follower.session(ws)
        except (OSError, TimeoutError, ConnectionClosed) as error:
            report({"disconnected": url, "why": str(error) or type(error).__name__})
            await asyncio.sleep(BACKOFF[min(failures, len(BACKOFF) - 1)])
            failures += 1
        if follower.done:
            return


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("topic")
    parser.add_argument("urls", nargs="*", default=["ws://127.0.0.1:7780/"], help="edges, tried in turn")
    parser.add_argument("--count", type=int, help="stop after this many messages")
    args = parser.parse_args()
    try:
        asyncio.run(follow(args.topic, args.urls, args.count))
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
