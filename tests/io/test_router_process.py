"""The real router process on loopback, driven by raw producers and real edge links."""

from __future__ import annotations

import asyncio
import signal
import struct
import subprocess
import sys
from collections.abc import AsyncIterator

import msgspec
import pytest
import zmq
import zmq.asyncio

from router.wire import Registered, SubscribeOk
from tests.io.harness import ROOT, RouterProcess, TestEdge, eventually

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def context() -> AsyncIterator[zmq.asyncio.Context]:
    ctx = zmq.asyncio.Context()
    yield ctx
    ctx.destroy(linger=0)


def raw_push(ctx: zmq.asyncio.Context, endpoint: str) -> zmq.Socket[bytes]:
    """A producer written from docs/protocol.md alone: a PUSH socket and 2- or 3-frame messages."""
    sock: zmq.Socket[bytes] = zmq.Context.shadow(ctx.underlying).socket(zmq.PUSH)
    sock.linger = 0
    sock.connect(endpoint)
    return sock


async def subscribed_edge(edge: TestEdge, client_id: str, topic: str) -> SubscribeOk:
    assert isinstance(await edge.register(client_id), Registered)
    reply = await edge.subscribe(client_id, topic)
    assert isinstance(reply, SubscribeOk), reply
    return reply


async def wait_until_flowing(edge: TestEdge, push: zmq.Socket[bytes], topic: str) -> int:
    """Send probes until one arrives: proof the edge's SUB subscription reached the router.

    Returns the offset of the last probe received; everything after it must arrive in order.
    """
    for _ in range(100):
        push.send_multipart([topic.encode(), b"probe"])
        try:
            meta, _ = await edge.next_message(timeout=0.1)
        except TimeoutError:
            continue
        await asyncio.sleep(0.2)
        rest = edge.drain()
        return rest[-1][0].offset if rest else meta.offset
    raise AssertionError("no probe arrived")


async def test_push_producer_exactly_once_in_order(
    router: RouterProcess, context: zmq.asyncio.Context
) -> None:
    push = raw_push(context, router.endpoints["pull"])
    async with TestEdge(router.endpoints) as edge:
        await subscribed_edge(edge, "c1", "/seq/a")
        start = await wait_until_flowing(edge, push, "/seq/a")
        for index in range(2_000):
            push.send_multipart([b"/seq/a", index.to_bytes(4, "big")])
            if index % 2 == 0:
                push.send_multipart([b"/seq/other", b"not subscribed"])
        received = [await edge.next_message() for _ in range(2_000)]
        offsets = [meta.offset for meta, _ in received]
        assert offsets == list(range(start + 1, start + 2_001))
        assert [int.from_bytes(payload, "big") for _, payload in received] == list(range(2_000))
        assert {meta.topic for meta, _ in received} == {b"/seq/a"}
        assert len({meta.epoch for meta, _ in received}) == 1
        await asyncio.sleep(0.2)
        assert edge.drain() == []


async def test_header_frame_is_forwarded(router: RouterProcess, context: zmq.asyncio.Context) -> None:
    push = raw_push(context, router.endpoints["pull"])
    header = bytes([0x81, 0xAC]) + b"content_type" + bytes([0xA4]) + b"text"
    async with TestEdge(router.endpoints) as edge:
        await subscribed_edge(edge, "c1", "/with/header")
        await wait_until_flowing(edge, push, "/with/header")
        push.send_multipart([b"/with/header", header, b"hi"])
        meta, payload = await edge.next_message()
        assert (meta.header, payload) == (header, b"hi")
        assert msgspec.msgpack.decode(meta.header) == {"content_type": "text"}


async def test_pub_producer_sees_who_watches(router: RouterProcess, context: zmq.asyncio.Context) -> None:
    """A producer on an XPUB socket learns through the router's XSUB which topics are watched."""
    producer = context.socket(zmq.XPUB)
    producer.linger = 0
    producer.connect(router.endpoints["xsub"])
    async with TestEdge(router.endpoints) as edge:
        await subscribed_edge(edge, "c1", "/cam/front")
        async with asyncio.timeout(5):
            assert await producer.recv() == b"\x01/cam/front"
        start = 0
        for _ in range(100):
            await producer.send_multipart([b"/cam/front", b"probe"])
            try:
                meta, _ = await edge.next_message(timeout=0.1)
                start = meta.offset
                break
            except TimeoutError:
                continue
        await asyncio.sleep(0.2)
        edge.drain()
        for index in range(50):
            await producer.send_multipart([b"/cam/front", b"frame %d" % index])
        frames = [await edge.next_message() for _ in range(50)]
        assert [payload for _, payload in frames] == [b"frame %d" % i for i in range(50)]
        assert frames[0][0].offset > start
        await edge.request_unsubscribe("c1", "/cam/front")
        async with asyncio.timeout(5):
            assert await producer.recv() == b"\x00/cam/front"


async def test_malformed_input_is_counted_and_dropped(
    router: RouterProcess, context: zmq.asyncio.Context
) -> None:
    push = raw_push(context, router.endpoints["pull"])
    async with TestEdge(router.endpoints) as edge:
        await subscribed_edge(edge, "c1", "/ok")
        await wait_until_flowing(edge, push, "/ok")
        bad: list[list[bytes]] = [
            [b"/ok"],
            [b"/ok", b"h", b"p", b"extra"],
            [b"no-slash", b"x"],
            [b"/bad topic", b"x"],
            [b"\xff\xfe", b"x"],
            [b"/ok", b"\xc1", b"bad header"],
            [b"/ok", b"x" * (17 * 1024 * 1024)],
        ]
        for frames in bad:
            push.send_multipart(frames)
        push.send_multipart([b"/ok", b"after"])
        _meta, payload = await edge.next_message()
        assert payload == b"after"
        stats = await edge.stats()
        drops = stats["drops"]
        assert isinstance(drops, dict)
        assert drops.get("bad_frames") == 2
        assert drops.get("bad_topic") == 3
        assert drops.get("bad_header") == 1
        assert drops.get("too_large") == 1
        assert router.alive


async def test_lost_edge_clients_are_unregistered(router: RouterProcess) -> None:
    code = (
        "import asyncio, sys\n"
        "from tests.io.harness import TestEdge\n"
        "async def main():\n"
        "    eps = dict(control=sys.argv[1], xpub=sys.argv[2])\n"
        "    async with TestEdge(eps) as edge:\n"
        "        await edge.register('ghost-1'); await edge.subscribe('ghost-1', '/ghost')\n"
        "        print('ready', flush=True); await asyncio.sleep(60)\n"
        "asyncio.run(main())\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, router.endpoints["control"], router.endpoints["xpub"]],
        cwd=ROOT,
        stdout=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == b"ready"
        async with TestEdge(router.endpoints) as observer:
            stats = await observer.stats()
            assert stats["clients"] == 1
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=5)
            loop = asyncio.get_running_loop()
            started = loop.time()
            await eventually(lambda: _stat(observer, "clients", 0), timeout=5)
            assert loop.time() - started < 3.5
            assert (await observer.stats())["subscriptions"] == 0
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()


async def _stat(edge: TestEdge, name: str, want: int) -> bool:
    return (await edge.stats())[name] == want


async def test_router_restart_resyncs_edges(router: RouterProcess, context: zmq.asyncio.Context) -> None:
    push = raw_push(context, router.endpoints["pull"])
    async with TestEdge(router.endpoints) as edge:
        await subscribed_edge(edge, "c1", "/restart")
        await wait_until_flowing(edge, push, "/restart")
        first_router = edge.link.router_id
        router.kill(signal.SIGKILL)
        router.restart_on_same_ports()
        await eventually(
            lambda: edge.link.router_id not in ("", first_router) and edge.link.welcomed.is_set()
        )
        await eventually(lambda: _stat(edge, "subscriptions", 1))
        edge.drain()
        await wait_until_flowing(edge, push, "/restart")
        push.send_multipart([b"/restart", b"after restart"])
        _meta, payload = await edge.next_message()
        assert payload == b"after restart"
        stats = await edge.stats()
        assert (stats["clients"], stats["subscriptions"]) == (1, 1)


async def test_raw_edge_from_the_protocol_doc(router: RouterProcess, context: zmq.asyncio.Context) -> None:
    """An edge written from docs/protocol.md alone: msgpack maps on a DEALER, a SUB for data."""
    dealer = context.socket(zmq.DEALER)
    dealer.linger = 0
    dealer.setsockopt(zmq.ROUTING_ID, b"raw-edge")
    dealer.connect(router.endpoints["control"])
    sub = context.socket(zmq.SUB)
    sub.linger = 0
    sub.connect(router.endpoints["xpub"])

    async def ask(message: dict[str, object]) -> dict[str, object]:
        await dealer.send(msgspec.msgpack.encode(message))
        async with asyncio.timeout(5):
            while True:
                reply: dict[str, object] = msgspec.msgpack.decode(await dealer.recv())
                if reply["type"] != "heartbeat":
                    return reply

    welcome = await ask({"type": "hello", "edge_id": "raw-edge", "protocol": "raw", "version": 1})
    assert welcome["type"] == "welcome"
    registered = await ask({"type": "register", "request_id": 1, "client_id": "r1"})
    assert registered == {"type": "registered", "request_id": 1, "client_id": "r1", "user": "anonymous"}
    sub.subscribe(b"/raw/topic\x00")
    subscribed = await ask({"type": "subscribe", "request_id": 2, "client_id": "r1", "topic": "/raw/topic"})
    assert subscribed["type"] == "subscribed"
    refused = await ask({"type": "subscribe", "request_id": 3, "client_id": "r1", "topic": "bad"})
    assert (refused["type"], refused["code"], refused["request_id"]) == ("error", "bad_topic", 3)

    push = raw_push(context, router.endpoints["pull"])
    for _ in range(100):
        push.send_multipart([b"/raw/topic", b"payload"])
        if await sub.poll(100):
            break
    head, payload = await sub.recv_multipart()
    topic, rest = head.split(b"\x00", 1)
    version, flags, _reserved, epoch, offset = struct.unpack_from("!BBHIQ", rest)
    assert (topic, version, flags, payload) == (b"/raw/topic", 1, 0, b"payload")
    assert epoch == subscribed["epoch"]
    assert offset > int(str(subscribed["offset"]))
