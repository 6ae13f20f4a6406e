"""Hostile input through the real router and WebSocket edge: random producer messages, random
control messages and random client messages, while a well-behaved client watches a topic.

Every input must get a documented error or a counted drop, both processes must stay up, and the
well-behaved client must get every message of its topic, in order. ``SWITCHBOARD_FUZZ_EXAMPLES``
scales the number of inputs of each kind (``ROUNDS``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import struct
from collections import Counter
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
import zmq
from websockets.exceptions import ConnectionClosed

from tests.io.harness import RouterProcess, TestEdge, WebSocketEdgeProcess, eventually, push_socket
from tests.io.metrics_scrape import scrape
from tests.io.test_websocket_edge import Client, open_client
from tests.strategies import scaled_examples

pytestmark = pytest.mark.timeout(600)

ROUNDS = scaled_examples(300)
GOOD_TOPIC = b"/fuzz/good"
BATCH = 100
"""Rounds between waits for the good client to catch up, so its queue never overflows."""
DATA_HEADER = struct.Struct("!BBIQ")
CONTROL_TYPES = ["hello", "heartbeat", "register", "subscribe", "unsubscribe", "recover", "refresh"]
CLIENT_OPS = ["connect", "subscribe", "unsubscribe", "ping", "refresh", "ack", "fly"]


def _value(rng: random.Random, depth: int = 0) -> Any:
    """A random msgpack/JSON-shaped value."""
    kind = rng.randrange(8 if depth < 2 else 6)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.choice([0, -1, 1, 2**53, 2**64 - 1, -(2**63), rng.randint(-1000, 1000)])
    if kind == 2:
        return rng.choice([0.5, float("inf"), -0.0, 1e300])
    if kind == 3:
        return "".join(chr(rng.randrange(0x20, 0x3000)) for _ in range(rng.randrange(12)))
    if kind == 4:
        return rng.choice(["/fuzz/other", "/a//b", "no-slash", "/x" * 200, "/fuzz/*"])
    if kind == 5:
        return rng.randbytes(rng.randrange(12))
    if kind == 6:
        return [_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {str(_value(rng, 2)): _value(rng, depth + 1) for _ in range(rng.randrange(4))}


def producer_garbage(rng: random.Random) -> list[bytes]:
    """A multipart message a broken or hostile producer might send (never on GOOD_TOPIC)."""
    topic = rng.choice([rng.randbytes(rng.randrange(20)), b"/fuzz/other", b"/fuzz/\xff", b"x" * 300, b""])
    if topic == GOOD_TOPIC:
        topic = b"/fuzz/other"
    header = rng.choice([b"", rng.randbytes(rng.randrange(40)), msgspec.msgpack.encode(_value(rng))])
    frames = [topic, header, rng.randbytes(rng.randrange(64))]
    shape = rng.randrange(4)
    if shape == 0:
        return [frames[0]]
    if shape == 1:
        return [*frames, b"extra"]
    return frames if shape == 2 else [topic, frames[2]]


def control_garbage(rng: random.Random) -> list[bytes]:
    """One or more frames for the router's control socket: raw bytes or msgpack-shaped garbage."""
    if rng.random() < 0.3:
        return [rng.randbytes(rng.randrange(100))]
    message = {
        "type": rng.choice(CONTROL_TYPES),
        **{
            rng.choice(["request_id", "client_id", "topic", "edge_id", "version"]): _value(rng)
            for _ in range(rng.randrange(4))
        },
    }
    frames = [msgspec.msgpack.encode(message)]
    return frames * 2 if rng.random() < 0.1 else frames


def client_garbage(rng: random.Random) -> str | bytes:
    """A text or binary message a hostile WebSocket client might send."""
    kind = rng.randrange(4)
    if kind == 0:
        return rng.randbytes(rng.randrange(200))
    if kind == 1:
        return "".join(chr(rng.randrange(0x20, 0xD7FF)) for _ in range(rng.randrange(200)))
    message = {
        "op": rng.choice(CLIENT_OPS),
        **{
            rng.choice(["id", "topic", "token", "channel", "offset", "resume", "window"]): _value(rng)
            for _ in range(rng.randrange(4))
        },
    }
    with contextlib.suppress(ValueError):
        return json.dumps(message, default=repr)[:2000]
    return "{"


@contextlib.contextmanager
def dealer(endpoint: str) -> Iterator[zmq.Socket[bytes]]:
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.linger = 0
    sock.setsockopt(zmq.ROUTING_ID, b"fuzzer")
    sock.connect(endpoint)
    try:
        yield sock
    finally:
        sock.close()
        context.term()


class GoodReader:
    """Reads the good client's frames as they come, so its edge queue never fills."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.frames: list[tuple[int, bytes]] = []
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self.client.ws:
            if isinstance(message, bytes):
                _, _, _, offset = DATA_HEADER.unpack_from(message)
                self.frames.append((offset, message[DATA_HEADER.size :]))


class HostileClient:
    """Sends garbage and reads whatever comes back; opens a new connection if the edge closes it."""

    def __init__(self, edge: WebSocketEdgeProcess) -> None:
        self.edge = edge
        self.replies: Counter[str] = Counter()
        self.closes: Counter[int] = Counter()
        self.client: Client | None = None
        self.reader: asyncio.Task[None] | None = None

    async def send(self, message: str | bytes) -> None:
        if self.client is None:
            self.client = await open_client(self.edge)
            self.reader = asyncio.create_task(self._read(self.client))
        try:
            await self.client.ws.send(message)
        except ConnectionClosed as closed:
            self.closes[closed.rcvd.code if closed.rcvd else 1006] += 1
            self.client = None

    async def _read(self, client: Client) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in client.ws:
                if isinstance(message, str):
                    reply = json.loads(message)
                    self.replies[reply.get("code") or reply["op"]] += 1


async def test_hostile_input_leaves_processes_up_and_other_streams_intact(
    router: RouterProcess, push: zmq.Socket[bytes]
) -> None:
    edge = WebSocketEdgeProcess(router, ["--max-requests-per-second", "0", "--max-message-bytes", "4096"])
    edge.start()
    rng = random.Random(20240601)
    try:
        good = await open_client(edge)
        subscribed = await good.request("subscribe", topic=GOOD_TOPIC.decode())
        assert subscribed["op"] == "subscribed", subscribed
        reader = GoodReader(good)
        hostile = HostileClient(edge)
        with (
            push_socket(router.endpoints["pull"]) as bad_push,
            dealer(router.endpoints["control"]) as control,
        ):
            for index in range(ROUNDS):
                push.send_multipart([GOOD_TOPIC, b"%d" % index])
                bad_push.send_multipart(producer_garbage(rng))
                control.send_multipart(control_garbage(rng))
                await hostile.send(client_garbage(rng))
                if index % BATCH == BATCH - 1:
                    await eventually(lambda done=index + 1: len(reader.frames) >= done, timeout=15)
            await eventually(lambda: len(reader.frames) == ROUNDS, timeout=15)
        first = subscribed["offset"] + 1
        assert reader.frames == [(first + i, b"%d" % i) for i in range(ROUNDS)]
        assert router.alive
        assert edge.alive
        async with TestEdge(router.endpoints) as probe:
            router_drops = (await probe.stats())["drops"]
        edge_drops = {
            dict(labels)["reason"]: value
            for (name, labels), value in (await scrape(edge.address)).samples.items()
            if name == "switchboard_edge_drops_total"
        }
        print(f"\n{ROUNDS} rounds: router drops {router_drops}, edge drops {edge_drops}, "
              f"hostile client replies {dict(hostile.replies)}, closes {dict(hostile.closes)}")  # fmt: skip
        assert isinstance(router_drops, dict)
        assert router_drops.get("bad_frames", 0) > 0
        assert router_drops.get("bad_topic", 0) > 0
        assert router_drops.get("bad_control", 0) > 0
        assert edge_drops.get("bad_input", 0) > 0
        reader.task.cancel()
    finally:
        edge.stop()
