"""The real router and WebSocket edge processes, with real ``websockets`` clients."""

from __future__ import annotations

import asyncio
import json
import signal
import struct
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import zmq
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Origin

from tests.io.harness import RouterProcess, TestEdge, WebSocketEdgeProcess, eventually
from tests.io.metrics_scrape import scrape

pytestmark = pytest.mark.timeout(90)

DATA_HEADER = struct.Struct("!BBIQ")


@pytest.fixture
def edge(router: RouterProcess) -> Iterator[WebSocketEdgeProcess]:
    process = WebSocketEdgeProcess(router, ["--queue-bytes", "1048576", "--max-message-bytes", "4096"])
    process.start()
    yield process
    process.stop()


class Client:
    """A client written from the protocol doc: JSON control, binary data frames."""

    def __init__(self, connection: ClientConnection) -> None:
        self.ws = connection
        self.next_id = 1
        self.client_id = ""
        """Its id, once ``connected``."""
        self.connected: dict[str, Any] = {}
        """The edge's ``connected`` reply."""

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(message))

    async def control(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next text message, skipping data frames."""
        async with asyncio.timeout(timeout):
            while True:
                message = await self.ws.recv()
                if isinstance(message, str):
                    reply: dict[str, Any] = json.loads(message)
                    return reply

    async def request(self, op: str, **fields: Any) -> dict[str, Any]:
        request_id = self.next_id
        self.next_id += 1
        await self.send({"op": op, "id": request_id, **fields})
        reply = await self.control()
        assert reply.get("id") == request_id, reply
        return reply

    async def data(self, timeout: float = 5.0) -> tuple[int, int, bytes]:
        """The next data frame as (channel, offset, payload), skipping text messages."""
        async with asyncio.timeout(timeout):
            while True:
                message = await self.ws.recv()
                if isinstance(message, bytes):
                    kind, flags, channel, offset = DATA_HEADER.unpack_from(message)
                    assert (kind, flags) == (1, 0)
                    return channel, offset, message[DATA_HEADER.size :]


async def open_client(
    edge: WebSocketEdgeProcess, connect_fields: dict[str, Any] | None = None, **options: Any
) -> Client:
    """A client that sent ``connect`` (with ``connect_fields``) and got ``connected``; ``options``
    go to the WebSocket connection."""
    connection = await connect(edge.url, subprotocols=["switchboard.v1"], proxy=None, **options)  # type: ignore[list-item]
    client = Client(connection)
    await client.send({"op": "connect", **(connect_fields or {})})
    connected = await client.control()
    assert connected["op"] == "connected", connected
    client.client_id, client.connected = connected["client_id"], connected
    return client


@pytest.fixture
async def client(edge: WebSocketEdgeProcess) -> AsyncIterator[Client]:
    opened = await open_client(edge)
    yield opened
    await opened.ws.close()


async def flowing(client: Client, push: zmq.Socket[bytes], topic: str) -> int:
    """Probe ``topic`` until a frame arrives; returns the last probe offset seen."""
    for _ in range(200):
        push.send_multipart([topic.encode(), b"probe"])
        try:
            _, offset, _ = await client.data(timeout=0.05)
        except TimeoutError:
            continue
        last = offset
        while True:
            try:
                _, last, _ = await client.data(timeout=0.3)
            except TimeoutError:
                return last
    raise AssertionError("no probe arrived")


async def test_subscribe_receive_in_order_and_unsubscribe(client: Client, push: zmq.Socket[bytes]) -> None:
    subscribed = await client.request("subscribe", topic="/ws/seq")
    assert subscribed["op"] == "subscribed"
    assert subscribed["topic"] == "/ws/seq"
    start = await flowing(client, push, "/ws/seq")
    for index in range(500):
        push.send_multipart([b"/ws/seq", b"%d" % index])
    frames = [await client.data() for _ in range(500)]
    assert {channel for channel, _, _ in frames} == {subscribed["channel"]}
    assert [offset for _, offset, _ in frames] == list(range(start + 1, start + 501))
    assert [payload for _, _, payload in frames] == [b"%d" % i for i in range(500)]

    assert (await client.request("unsubscribe", topic="/ws/seq"))["op"] == "unsubscribed"
    push.send_multipart([b"/ws/seq", b"after"])
    assert (await client.request("ping"))["op"] == "pong"
    with pytest.raises(TimeoutError):
        await client.data(timeout=0.5)


async def test_bad_messages_get_documented_errors(client: Client) -> None:
    await client.ws.send("{not json")
    assert (await client.control())["code"] == "bad_request"
    await client.ws.send(json.dumps({"op": "fly", "id": 3}))
    assert (await client.control())["code"] == "bad_request"
    await client.ws.send(b"\x00\x01binary garbage")
    assert (await client.control())["code"] == "bad_request"
    await client.ws.send(json.dumps({"op": "ping", "id": 9, "pad": "x" * 5000}))
    assert (await client.control())["code"] == "too_large"
    refused = await client.request("subscribe", topic="no slash")
    assert (refused["op"], refused["code"]) == ("error", "bad_topic")
    assert (await client.request("ping"))["op"] == "pong"


async def test_far_oversized_message_closes_with_1009(client: Client) -> None:
    await client.ws.send("x" * 20_000)
    with pytest.raises(ConnectionClosed) as closed:
        await client.control()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1009


async def test_first_message_must_be_connect(edge: WebSocketEdgeProcess) -> None:
    async with connect(edge.url, subprotocols=["switchboard.v1"], proxy=None) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps({"op": "subscribe", "id": 1, "topic": "/a"}))
        reply = json.loads(await ws.recv())
        assert (reply["op"], reply["code"]) == ("error", "bad_request")


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def test_a_client_that_never_reads_is_isolated(
    edge: WebSocketEdgeProcess, client: Client, push: zmq.Socket[bytes]
) -> None:
    stuck = await open_client(edge, max_queue=1)
    assert (await stuck.request("subscribe", topic="/ws/bulk"))["op"] == "subscribed"
    assert (await client.request("subscribe", topic="/ws/bulk"))["op"] == "subscribed"
    start = await flowing(client, push, "/ws/bulk")
    before = rss_bytes(edge.pid)
    payload = b"x" * 16_000
    count = 3_000
    for burst in range(0, count, 20):
        for index in range(burst, burst + 20):
            push.send_multipart([b"/ws/bulk", index.to_bytes(4, "big") + payload])
        for index in range(burst, burst + 20):
            _, offset, body = await client.data(timeout=10)
            assert (offset, int.from_bytes(body[:4], "big")) == (start + index + 1, index)
    growth = rss_bytes(edge.pid) - before
    assert growth < 24 * 1024 * 1024, f"edge grew {growth} bytes for a stuck client ({count * 16} KB sent)"
    await stuck.ws.close()


async def test_killed_edge_leaves_no_ghost_clients(router: RouterProcess, edge: WebSocketEdgeProcess) -> None:
    clients = [await open_client(edge) for _ in range(3)]
    for index, client in enumerate(clients):
        assert (await client.request("subscribe", topic=f"/ghost/{index}"))["op"] == "subscribed"
    async with TestEdge(router.endpoints) as observer:
        assert (await observer.stats())["clients"] == 3
        edge.kill(signal.SIGKILL)

        async def no_clients() -> bool:
            stats = await observer.stats()
            return stats["clients"] == 0 and stats["subscriptions"] == 0

        await eventually(no_clients, timeout=10)


async def test_viewer_page_is_served(edge: WebSocketEdgeProcess) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", int(edge.announced["port"]))
    writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    response = await reader.read()
    writer.close()
    assert response.startswith(b"HTTP/1.1 200")
    assert b"<title>Switchboard viewer</title>" in response


async def test_closed_clients_are_cleaned_up_at_the_router(
    router: RouterProcess, edge: WebSocketEdgeProcess
) -> None:
    clients = [await open_client(edge) for _ in range(4)]
    for client in clients:
        assert (await client.request("subscribe", topic="/cleanup"))["op"] == "subscribed"
    async with TestEdge(router.endpoints) as observer:
        assert (await observer.stats())["subscriptions"] == 4
        await clients[0].ws.close()
        clients[1].ws.transport.abort()

        async def two_left() -> bool:
            stats = await observer.stats()
            return (stats["clients"], stats["subscriptions"]) == (2, 2)

        await eventually(two_left, timeout=5)
    for client in clients[2:]:
        await client.ws.close()


async def test_two_edges_side_by_side(router: RouterProcess, push: zmq.Socket[bytes]) -> None:
    edges = [WebSocketEdgeProcess(router), WebSocketEdgeProcess(router)]
    try:
        for process in edges:
            process.start()
        clients = [await open_client(process) for process in edges]
        for client in clients:
            assert (await client.request("subscribe", topic="/both"))["op"] == "subscribed"
        for client in clients:
            await flowing(client, push, "/both")
        push.send_multipart([b"/both", b"start"])
        for index in range(100):
            push.send_multipart([b"/both", b"%d" % index])
        for client in clients:
            while (frame := await client.data())[2] != b"start":
                pass
            start = frame[1]
            frames = [await client.data() for _ in range(100)]
            assert [offset for _, offset, _ in frames] == list(range(start + 1, start + 101))
            assert [payload for _, _, payload in frames] == [b"%d" % i for i in range(100)]
            await client.ws.close()
    finally:
        for process in edges:
            process.stop()


async def test_a_handshake_without_the_subprotocol_is_closed_with_1002(edge: WebSocketEdgeProcess) -> None:
    async with connect(edge.url, proxy=None) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1002


async def test_other_paths_get_404(edge: WebSocketEdgeProcess) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", int(edge.announced["port"]))
    writer.write(b"GET /nothing-here HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    response = await reader.read()
    writer.close()
    assert response.startswith(b"HTTP/1.1 404")


async def test_messages_in_fragments_are_assembled(client: Client) -> None:
    await client.ws.send(['{"op": "ping",', ' "id": 7}'])
    assert await client.control() == {"op": "pong", "id": 7}


async def test_invalid_utf8_closes_with_1007(client: Client) -> None:
    client.ws.protocol.send_text(b"\xff\xfe")
    client.ws.send_data()
    with pytest.raises(ConnectionClosed) as closed:
        await client.control()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1007


async def test_handshake_limits(router: RouterProcess) -> None:
    """Past --max-connections: HTTP 503. With --allowed-origin: other origins get 403, and clients
    that send no Origin are allowed."""
    edge = WebSocketEdgeProcess(router, ["--max-connections", "1", "--allowed-origin", "http://good"])
    edge.start()
    try:
        with pytest.raises(InvalidStatus) as refused:
            await open_client(edge, origin=Origin("http://evil"))
        assert refused.value.response.status_code == 403
        first = await open_client(edge, origin=Origin("http://good"))
        with pytest.raises(InvalidStatus) as refused:
            await open_client(edge)
        assert refused.value.response.status_code == 503
        await first.ws.close()
        await eventually(lambda: accepts_a_client(edge), timeout=5)
        metrics = await scrape(edge.address)
        refusals = {
            reason: metrics.labelled("switchboard_edge_refused_connections_total", reason=reason)
            for reason in ("origin", "max_connections")
        }
        assert refusals == {"origin": 1.0, "max_connections": 1.0}
    finally:
        edge.stop()


async def accepts_a_client(edge: WebSocketEdgeProcess) -> bool:
    """Whether a client gets through the handshake and ``connect`` now (not refused with an HTTP
    error, nor closed at once)."""
    try:
        client = await open_client(edge)
    except (InvalidStatus, ConnectionClosed):
        return False
    await client.ws.close()
    return True


async def test_a_client_that_does_not_answer_pings_is_closed_and_unregistered(router: RouterProcess) -> None:
    edge = WebSocketEdgeProcess(router, ["--ping-interval", "0.2", "--ping-timeout", "0.2"])
    edge.start()
    try:
        answering = await open_client(edge)
        silent = await open_client(edge)
        assert (await silent.request("subscribe", topic="/silent"))["op"] == "subscribed"
        async with TestEdge(router.endpoints) as observer:
            assert (await observer.stats())["clients"] == 2
            silent.ws.transport.pause_reading()

            async def one_left() -> bool:
                stats = await observer.stats()
                return (stats["clients"], stats["subscriptions"]) == (1, 0)

            await eventually(one_left, timeout=5)
            await asyncio.sleep(0.5)
            assert (await answering.request("ping"))["op"] == "pong"
            assert (await observer.stats())["clients"] == 1
        await answering.ws.close()
    finally:
        edge.stop()


async def test_shutdown_says_closing_then_closes_with_1001(router: RouterProcess) -> None:
    edge = WebSocketEdgeProcess(router)
    edge.start()
    try:
        client = await open_client(edge)
        assert edge.process is not None
        edge.process.terminate()
        closing = await client.control()
        assert (closing["op"], closing["code"]) == ("closing", 1001)
        with pytest.raises(ConnectionClosed) as closed:
            await client.control()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1001
        assert await asyncio.to_thread(edge.process.wait, 10) == 0
    finally:
        edge.stop()
