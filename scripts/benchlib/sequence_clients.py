"""Bench child: ``--clients`` switchboard.v1 WebSocket clients of one edge, each subscribed to every
``--topic`` of :mod:`benchlib.sequence_producer`, noting every frame they get.

Prints ``{"event": "ready"}`` once every client is subscribed to every topic, then answers JSON lines
on stdin (for ``--cap`` seconds at most), each wait bounded by its ``timeout`` seconds:

- ``{"op": "flowing", "since": NS, "topics": [...], "timeout": S}``: waits until every client got,
  on each topic, a message sent at ``NS`` (``time.monotonic_ns()``) or later; prints
  ``{"event": "flowing", "first": {topic: [when each client got the first such message, or null]}}``;
- ``{"op": "tally", "last": {topic: last sequence number sent}, "kills": [NS, ...], "rejoins":
  [NS, ...], "timeout": S}``: waits until every client got the last one of each topic, then prints
  ``{"event": "tally", "topics": {topic: [each client's tally]}, "lost_subscriptions": n}`` (see
  :mod:`benchlib.sequence_tally`) and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from benchlib.sequence_producer import PAYLOAD
from benchlib.sequence_tally import Data, Frame, Told, tally
from edges.core.client_wire import (
    FRAME_DATA,
    FRAME_RESTARTED,
    FRAME_SKIPPED,
    SUBPROTOCOL,
    frame_type,
    parse_data_frame,
    parse_restarted_frame,
    parse_skipped_frame,
)

START_TIMEOUT = 20.0


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


class Arrivals:
    """One topic's data at one client: when each message was sent and received, in arrival order."""

    def __init__(self) -> None:
        self.sent: list[int] = []
        self.received: list[int] = []
        self.high = 0

    def add(self, seq: int, sent_ns: int) -> int:
        """Note a message sent at ``sent_ns``; returns when it arrived."""
        arrived = time.monotonic_ns()
        self.sent.append(sent_ns)
        self.received.append(arrived)
        self.high = max(self.high, seq)
        return arrived

    def first_sent_since(self, since: int) -> int | None:
        """When the first message sent at ``since`` or later arrived."""
        for index in range(bisect.bisect_left(self.received, since), len(self.received)):
            if self.sent[index] >= since:
                return self.received[index]
        return None


class Client:
    """One connection: its channels, and per topic its frames and arrivals."""

    def __init__(self, ws: ClientConnection, topics: list[str], changed: asyncio.Event) -> None:
        self.ws = ws
        self.changed = changed
        """Set at every data frame of any client."""
        self.channels: dict[int, str] = {}
        self.frames: dict[str, list[Frame]] = {topic: [] for topic in topics}
        self.arrivals: dict[str, Arrivals] = {topic: Arrivals() for topic in topics}
        self.lost_subscriptions = 0

    async def subscribe(self, topics: list[str]) -> None:
        for request_id, topic in enumerate(topics, 1):
            await self.ws.send(json.dumps({"op": "subscribe", "id": request_id, "topic": topic}))
        while len(self.channels) < len(topics):
            message = await self.ws.recv()
            if isinstance(message, bytes):
                self.on_frame(message)
                continue
            reply = json.loads(message)
            if reply["op"] != "subscribed":
                raise RuntimeError(f"subscribe refused: {reply}")
            self.channels[reply["channel"]] = reply["topic"]

    async def read(self) -> None:
        async for message in self.ws:
            if isinstance(message, str):
                reply = json.loads(message)
                if reply.get("op") == "error" and reply.get("topic"):
                    self.lost_subscriptions += 1
                continue
            self.on_frame(message)

    def on_frame(self, message: bytes) -> None:
        kind = frame_type(message)
        if kind == FRAME_DATA:
            data = parse_data_frame(message)
            topic = self.channels.get(data.channel)
            if topic is not None and len(data.payload) >= PAYLOAD.size:
                seq, sent_ns = PAYLOAD.unpack_from(data.payload)
                arrived = self.arrivals[topic].add(seq, sent_ns)
                self.frames[topic].append(Data(seq, data.offset, arrived))
                self.changed.set()
        elif kind == FRAME_SKIPPED:
            skipped = parse_skipped_frame(message)
            if skipped.channel in self.channels:
                self.frames[self.channels[skipped.channel]].append(Told("skipped"))
        elif kind == FRAME_RESTARTED:
            channel, _ = parse_restarted_frame(message)
            if channel in self.channels:
                self.frames[self.channels[channel]].append(Told("restarted"))


async def open_client(url: str, topics: list[str], changed: asyncio.Event) -> Client:
    ws = await connect(url, subprotocols=[SUBPROTOCOL], proxy=None)  # type: ignore[list-item]
    await ws.send('{"op":"connect"}')
    reply = json.loads(await ws.recv())
    if reply.get("op") != "connected":
        raise RuntimeError(f"connect refused: {reply}")
    client = Client(ws, topics, changed)
    await client.subscribe(topics)
    return client


async def run(args: argparse.Namespace) -> None:
    changed = asyncio.Event()
    async with asyncio.timeout(START_TIMEOUT):
        clients = [await open_client(args.url, args.topic, changed) for _ in range(args.clients)]
    readers = [asyncio.create_task(client.read()) for client in clients]
    emit("ready")
    commands = await stdin_lines()
    try:
        async with asyncio.timeout(args.cap):
            while (line := await commands.readline()) != b"":
                command = json.loads(line)
                if command["op"] == "flowing":
                    await answer_flowing(clients, command, changed)
                elif command["op"] == "tally":
                    await answer_tally(clients, command, changed)
                    return
    finally:
        for reader in readers:
            reader.cancel()
        for client in clients:
            await client.ws.close()


async def stdin_lines() -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def answer_flowing(clients: list[Client], command: dict[str, Any], changed: asyncio.Event) -> None:
    since, topics = command["since"], command["topics"]

    def firsts() -> dict[str, list[int | None]]:
        return {
            topic: [client.arrivals[topic].first_sent_since(since) for client in clients] for topic in topics
        }

    await wait_until(lambda: all(None not in when for when in firsts().values()), changed, command["timeout"])
    emit("flowing", first=firsts())


async def answer_tally(clients: list[Client], command: dict[str, Any], changed: asyncio.Event) -> None:
    last: dict[str, int] = command["last"]

    def arrived() -> bool:
        return all(client.arrivals[topic].high >= seq for client in clients for topic, seq in last.items())

    await wait_until(arrived, changed, command["timeout"])
    kills, rejoins = command.get("kills", []), command.get("rejoins", [])
    topics = {
        topic: [tally(client.frames[topic], seq, kills, rejoins).as_dict() for client in clients]
        for topic, seq in last.items()
    }
    emit("tally", topics=topics, lost_subscriptions=sum(client.lost_subscriptions for client in clients))


async def wait_until(condition: Callable[[], bool], changed: asyncio.Event, seconds: float) -> None:
    """Until ``condition`` holds, checked at every data frame, or ``seconds`` passed."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            while not condition():
                changed.clear()
                await changed.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True, help="the edge's ws:// URL")
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--topic", action="append", required=True, help="a topic to subscribe to (repeat)")
    parser.add_argument("--cap", type=float, default=600.0, help="stop after this many seconds")
    asyncio.run(run(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
