"""The real router and WebRTC edge processes, with aiortc clients written from ``docs/protocol.md``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from aiortc.mediastreams import MediaStreamTrack

from tests.io.harness import ROOT, RouterProcess, TestEdge, configured_router, eventually, push_socket
from tests.io.rtc_client import RtcClient, WebRtcEdgeProcess, http, loopback_only

pytestmark = pytest.mark.timeout(60)

CONFIG = """
[topics]
allow_undeclared = true

[[topics.declare]]
pattern = "/rtc/orders"

[topics.declare.policy]
kind = "reliable"
history_max_messages = 10000

[[topics.declare]]
pattern = "/rtc/raw"
content_type = "video/x-raw; format=rgb24; width=64; height=48"

[topics.declare.policy]
kind = "latest"
"""
RAW_FRAME = bytes(range(256)) * (64 * 48 * 3 // 256)


@pytest.fixture
def router(tmp_path: Path) -> Iterator[RouterProcess]:
    with configured_router(tmp_path, CONFIG) as process:
        yield process


@pytest.fixture
def push(router: RouterProcess) -> Iterator[zmq.Socket[bytes]]:
    with push_socket(router.endpoints["pull"]) as sock:
        yield sock


@pytest.fixture
def edge(router: RouterProcess) -> Iterator[WebRtcEdgeProcess]:
    loopback_only()
    process = WebRtcEdgeProcess(router)
    process.start()
    yield process
    process.stop()


async def open_client(edge: WebRtcEdgeProcess) -> RtcClient:
    client = RtcClient(edge.base_url)
    status, body = await client.connect("any token")
    assert status == 201, body
    connected = await client.control_message()
    assert connected["op"] == "connected", connected
    return client


@pytest.fixture
async def client(edge: WebRtcEdgeProcess) -> AsyncIterator[RtcClient]:
    opened = await open_client(edge)
    yield opened
    await opened.close()


async def flowing(client: RtcClient, push: zmq.Socket[bytes], topic: str) -> int:
    """Probe ``topic`` until a frame arrives and the probes stop; returns the last offset seen."""
    for _ in range(100):
        push.send_multipart([topic.encode(), b"probe"])
        try:
            _, _, last, _ = await client.data(timeout=0.05)
        except TimeoutError:
            continue
        while True:
            try:
                _, _, last, _ = await client.data(timeout=0.3)
            except TimeoutError:
                return last
    raise AssertionError("no probe arrived")


async def router_counts(router: RouterProcess) -> tuple[object, object]:
    async with TestEdge(router.endpoints) as observer:
        stats = await observer.stats()
        return stats["clients"], stats["subscriptions"]


async def test_best_effort_topic_on_the_lossy_channel_and_nothing_else(
    client: RtcClient, push: zmq.Socket[bytes]
) -> None:
    subscribed = await client.request("subscribe", topic="/rtc/telemetry")
    assert (subscribed["op"], subscribed["policy"]) == ("subscribed", "best_effort")
    start = await flowing(client, push, "/rtc/telemetry")
    for index in range(200):
        push.send_multipart([b"/rtc/other", b"not for us"])
        push.send_multipart([b"/rtc/telemetry", b"%d" % index])
    frames = [await client.data() for _ in range(200)]
    assert {label for label, _, _, _ in frames} == {"lossy"}
    assert {channel for _, channel, _, _ in frames} == {subscribed["channel"]}
    assert sorted(offset for _, _, offset, _ in frames) == list(range(start + 1, start + 201))

    assert (await client.request("unsubscribe", topic="/rtc/telemetry"))["op"] == "unsubscribed"
    push.send_multipart([b"/rtc/telemetry", b"after"])
    assert (await client.request("ping"))["op"] == "pong"
    with pytest.raises(TimeoutError):
        await client.data(timeout=0.5)


async def test_reliable_order_and_resubscribe_after_an_ice_restart(
    edge: WebRtcEdgeProcess, push: zmq.Socket[bytes]
) -> None:
    client = await open_client(edge)
    try:
        subscribed = await client.request("subscribe", topic="/rtc/orders")
        assert subscribed["policy"] == "reliable"
        epoch = subscribed["epoch"]
        for index in range(300):
            push.send_multipart([b"/rtc/orders", b"%d" % index])
        received = [await client.data() for _ in range(150)]
        assert {label for label, _, _, _ in received} == {"reliable"}

        assert await client.restart() == 200
        await eventually(lambda: client.control.readyState == "open", timeout=10)
        received += client.received_data()
        last = received[-1][2]
        assert (await client.request("unsubscribe", topic="/rtc/orders"))["op"] == "unsubscribed"
        resumed = await client.request(
            "subscribe", topic="/rtc/orders", resume={"epoch": epoch, "offset": last}
        )
        assert resumed["resume"] == "ok", resumed
        for index in range(300, 400):
            push.send_multipart([b"/rtc/orders", b"%d" % index])
        received += [await client.data() for _ in range(400 - len(received))]
        assert [payload for _, _, _, payload in received] == [b"%d" % i for i in range(400)]
        assert [offset for _, _, offset, _ in received] == list(range(1, 401))
    finally:
        await client.close()


async def test_the_session_survives_an_ice_restart(client: RtcClient, push: zmq.Socket[bytes]) -> None:
    await client.request("subscribe", topic="/rtc/live")
    await flowing(client, push, "/rtc/live")
    assert await client.restart() == 200
    await eventually(lambda: client.control.readyState == "open", timeout=10)
    assert (await client.request("ping"))["op"] == "pong"
    push.send_multipart([b"/rtc/live", b"after the restart"])
    _, _, _, payload = await client.data()
    assert payload == b"after the restart"
    assert (await client.request("subscribe", topic="/rtc/more"))["op"] == "subscribed"


async def test_protocol_errors_on_the_control_channel(client: RtcClient) -> None:
    client.control.send("{not json")
    assert (await client.control_message())["code"] == "bad_request"
    client.control.send(b"\x00binary")
    assert (await client.control_message())["code"] == "bad_request"
    client.send({"op": "connect"})
    assert (await client.control_message())["code"] == "bad_request"
    refused = await client.request("subscribe", topic="no slash")
    assert (refused["op"], refused["code"]) == ("error", "bad_topic")


async def test_signaling_errors(edge: WebRtcEdgeProcess) -> None:
    url = edge.base_url
    status, _, _ = await http("POST", f"{url}/whep", b"v=0", {"Content-Type": "text/plain"})
    assert status == 415
    status, _, body = await http("POST", f"{url}/whep", b"v=0\r\n", {"Content-Type": "application/sdp"})
    assert status == 400, body
    assert b'"code": "bad_request"' in body
    assert (await http("DELETE", f"{url}/whep/nobody"))[0] == 404
    assert (await http("PATCH", f"{url}/whep/nobody", b"v=0", {"Content-Type": "application/sdp"}))[0] == 404
    assert (await http("GET", f"{url}/whep"))[0] == 405
    assert (await http("GET", f"{url}/nothing"))[0] == 404
    status, headers, _ = await http("GET", f"{url}/")
    assert (status, headers["location"]) == (303, "/?mode=webrtc")
    status, headers, _ = await http("GET", f"{url}/?camera=/c")
    assert headers["location"] == "/?mode=webrtc&camera=/c"
    status, headers, body = await http("GET", f"{url}/?mode=webrtc")
    assert status == 200
    assert headers["content-type"].startswith("text/html")
    status, headers, _ = await http("OPTIONS", f"{url}/whep", headers={"Origin": url})
    assert status == 204
    assert headers["access-control-allow-origin"] == url
    assert "Authorization" in headers["access-control-allow-headers"]
    assert (await http("OPTIONS", f"{url}/whep", headers={"Origin": "http://page"}))[0] == 403, (
        "by default only the edge's own pages"
    )


async def test_without_a_router_offers_get_503_at_once(
    router: RouterProcess, edge: WebRtcEdgeProcess
) -> None:
    router.kill(signal.SIGKILL)

    async def refused() -> bool:
        offer = (b"v=0\r\n", {"Content-Type": "application/sdp"})
        status, _, body = await http("POST", f"{edge.base_url}/whep", *offer)
        return status == 503 and b"no router; try again later" in body

    await eventually(refused, timeout=10)


async def test_allowed_origins(router: RouterProcess) -> None:
    loopback_only()
    edge = WebRtcEdgeProcess(router, ["--allowed-origin", "http://good"])
    edge.start()
    try:
        assert (await http("OPTIONS", f"{edge.base_url}/whep", headers={"Origin": "http://evil"}))[0] == 403
        assert (await http("OPTIONS", f"{edge.base_url}/whep", headers={"Origin": "http://good"}))[0] == 204
    finally:
        edge.stop()


async def test_left_and_vanished_peers_are_unregistered_at_the_router(
    router: RouterProcess, edge: WebRtcEdgeProcess
) -> None:
    leaving, vanishing, closing = [await open_client(edge) for _ in range(3)]
    for client in (leaving, vanishing, closing):
        assert (await client.request("subscribe", topic="/rtc/watched"))["op"] == "subscribed"
    assert await router_counts(router) == (3, 3)

    assert await leaving.leave() == 200
    assert (await leaving.control_message())["op"] == "closing"
    await closing.close()
    await eventually(lambda: _counts_are(router, (1, 1)), timeout=3)

    vanishing.vanish()
    await eventually(lambda: _counts_are(router, (0, 0)), timeout=5)
    await leaving.close()
    await vanishing.close()


async def _counts_are(router: RouterProcess, expected: tuple[int, int]) -> bool:
    return await router_counts(router) == expected


async def test_two_edges_side_by_side(router: RouterProcess, push: zmq.Socket[bytes]) -> None:
    loopback_only()
    edges = [WebRtcEdgeProcess(router), WebRtcEdgeProcess(router)]
    clients: list[RtcClient] = []
    try:
        for edge in edges:
            edge.start()
        assert edges[0].announced["edge_id"] != edges[1].announced["edge_id"]
        for edge in edges:
            clients.append(await open_client(edge))
            await clients[-1].request("subscribe", topic="/rtc/both")
        for client in clients:
            await flowing(client, push, "/rtc/both")
        for client in clients:
            client.received_data()
        push.send_multipart([b"/rtc/both", b"hello"])
        for client in clients:
            assert (await client.data())[3] == b"hello"
    finally:
        for client in clients:
            await client.close()
        for edge in edges:
            edge.stop()


async def test_shutdown_says_closing(router: RouterProcess) -> None:
    loopback_only()
    edge = WebRtcEdgeProcess(router)
    edge.start()
    client = await open_client(edge)
    try:
        edge.stop()
        closing = await client.control_message()
        assert (closing["op"], closing["code"]) == ("closing", 1001)
        await eventually(lambda: _counts_are(router, (0, 0)), timeout=5)
    finally:
        await client.close()
        edge.stop()


async def test_a_raw_video_topic_is_a_track_across_an_ice_restart(
    edge: WebRtcEdgeProcess, push: zmq.Socket[bytes]
) -> None:
    client = RtcClient(edge.base_url, video_slots=1)
    assert (await client.connect())[0] == 201
    producing = asyncio.create_task(produce_raw(push))
    try:
        assert (await client.control_message())["op"] == "connected"
        subscribed = await client.request("subscribe", topic="/rtc/raw")
        track = await client.control_message()
        assert track == {"op": "track", "topic": "/rtc/raw", "channel": subscribed["channel"], "mid": "0"}
        await receive_frames(client.tracks[-1], 10)

        assert await client.restart() == 200
        assert (await client.control_message())["op"] == "track"
        assert len(client.tracks) == 2
        await receive_frames(client.tracks[-1], 10)
        assert client.received_data() == []
    finally:
        producing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await producing
        await client.close()


async def produce_raw(push: zmq.Socket[bytes]) -> None:
    for _ in range(1000):
        push.send_multipart([b"/rtc/raw", RAW_FRAME])
        await asyncio.sleep(1 / 30)


async def receive_frames(track: MediaStreamTrack, count: int) -> None:
    async with asyncio.timeout(10):
        for _ in range(count):
            frame = await track.recv()
            assert (frame.width, frame.height) == (64, 48)  # type: ignore[union-attr]


class StalledClient:
    """:mod:`tests.io.rtc_stalled_client` in a child process, frozen and thawed with signals."""

    def __init__(self, edge: WebRtcEdgeProcess, topic: str) -> None:
        command = [sys.executable, "-m", "tests.io.rtc_stalled_client", edge.base_url, topic]
        self.process = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    async def line(self, timeout: float = 15.0) -> dict[str, Any]:
        assert self.process.stdout is not None
        async with asyncio.timeout(timeout):
            text = await asyncio.to_thread(self.process.stdout.readline)
        reply: dict[str, Any] = json.loads(text)
        return reply

    async def offsets(self) -> list[int]:
        assert self.process.stdin is not None
        self.process.stdin.write(b"report\n")
        self.process.stdin.flush()
        offsets: list[int] = (await self.line())["offsets"]
        return offsets

    def stop(self) -> None:
        self.process.send_signal(signal.SIGCONT)
        self.process.kill()
        self.process.wait(timeout=10)


async def test_a_stalled_client_neither_slows_the_others_nor_gets_a_backlog(
    router: RouterProcess, push: zmq.Socket[bytes]
) -> None:
    loopback_only()
    edge = WebRtcEdgeProcess(router, ["--queue-messages", "64", "--consent-failures", "40"])
    edge.start()
    stalled = StalledClient(edge, "/rtc/flood")
    fast = None
    try:
        assert (await stalled.line())["event"] == "ready"
        fast = await open_client(edge)
        await fast.request("subscribe", topic="/rtc/flood")
        start = await flowing(fast, push, "/rtc/flood")
        stalled.process.send_signal(signal.SIGSTOP)
        for index in range(2000):
            push.send_multipart([b"/rtc/flood", b"%06d" % index + b"x" * 1000])
            if index % 50 == 49:
                await asyncio.sleep(0.05)
        offsets = await offsets_until(fast, start + 2000)
        assert len(offsets) >= 1900, "the lossy channel may lose a few; the stalled client costs none"
        assert offsets <= set(range(start + 1, start + 2001))

        stalled.process.send_signal(signal.SIGCONT)
        await eventually(lambda: _got(stalled, start + 2000), timeout=20, interval=0.5)
        got = [offset for offset in await stalled.offsets() if offset > start]
        assert len(got) < 1000, "a stalled client gets the newest frames, not a backlog"
    finally:
        stalled.stop()
        if fast is not None:
            await fast.close()
        edge.stop()


async def offsets_until(client: RtcClient, last: int) -> set[int]:
    """Offsets of the data frames that arrive until ``last`` does or none comes for 2 s."""
    offsets: set[int] = set()
    with contextlib.suppress(TimeoutError):
        while last not in offsets:
            offsets.add((await client.data(timeout=2.0))[2])
    return offsets


async def _got(stalled: StalledClient, offset: int) -> bool:
    return offset in await stalled.offsets()
