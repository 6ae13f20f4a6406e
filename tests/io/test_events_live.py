"""The router's event stream (``docs/protocol.md``, section 5) heard by a raw pyzmq SUB while real
``websockets`` clients come and go through a real WebSocket edge."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.asyncio
from websockets.asyncio.client import ClientConnection, connect

from tests.io.harness import (
    LOOPBACK_ANY_PORT,
    ROOT,
    RouterProcess,
    WebSocketEdgeProcess,
    configured_router,
)

pytestmark = pytest.mark.timeout(60)

CONFIG = """
[topics]
allow_undeclared = false

[[topics.declare]]
pattern = "/demo/**"
"""


@pytest.fixture
def router(tmp_path: Path) -> Iterator[RouterProcess]:
    with configured_router(tmp_path, CONFIG, ["--events", LOOPBACK_ANY_PORT]) as process:
        yield process


@pytest.fixture
def edge(router: RouterProcess) -> Iterator[WebSocketEdgeProcess]:
    process = WebSocketEdgeProcess(router)
    process.start()
    yield process
    process.stop()


class Events:
    """A SUB socket on the router's events endpoint, as any language would hold one."""

    def __init__(self, endpoint: str) -> None:
        self.context = zmq.asyncio.Context()
        self.sub = self.context.socket(zmq.SUB)
        self.sub.linger = 0
        self.sub.subscribe(b"client.")
        self.sub.connect(endpoint)

    async def next(self, timeout: float = 1.0) -> tuple[str, dict[str, Any]]:
        async with asyncio.timeout(timeout):
            name, body = await self.sub.recv_multipart()
        event: dict[str, Any] = json.loads(body)
        assert event["event"] == name.decode()
        return name.decode(), event

    async def until(self, name: str, timeout: float = 1.0) -> dict[str, Any]:
        """The next event called ``name``, skipping others."""
        async with asyncio.timeout(timeout):
            while True:
                got, event = await self.next(timeout)
                if got == name:
                    return event

    def close(self) -> None:
        self.sub.close()
        self.context.term()


@pytest.fixture
async def events(router: RouterProcess) -> AsyncIterator[Events]:
    stream = Events(router.endpoints["events"])
    yield stream
    stream.close()


async def open_client(edge: WebSocketEdgeProcess) -> tuple[ClientConnection, str]:
    ws = await connect(edge.url, subprotocols=["switchboard.v1"], proxy=None)  # type: ignore[list-item]
    await ws.send(json.dumps({"op": "connect"}))
    connected = json.loads(await ws.recv())
    assert connected["op"] == "connected", connected
    return ws, connected["client_id"]


async def wait_until_heard(events: Events, edge: WebSocketEdgeProcess) -> None:
    """The slow joiner: until the SUB's subscription reached the router, events are lost. Connect
    throwaway clients until one's ``client.connected`` arrives, then let its disconnect pass."""
    async with asyncio.timeout(10):
        while True:
            ws, client_id = await open_client(edge)
            await ws.close()
            try:
                event = await events.until("client.connected", timeout=0.2)
            except TimeoutError:
                continue
            if event["client_id"] == client_id:
                break
    while (await events.until("client.disconnected"))["client_id"] != client_id:
        pass


async def test_a_connect_a_refused_subscribe_and_a_disconnect_as_they_happen(
    events: Events, edge: WebSocketEdgeProcess
) -> None:
    await wait_until_heard(events, edge)

    ws, client_id = await open_client(edge)
    connected = await events.until("client.connected")
    assert connected["client_id"] == client_id
    assert connected["user"] == "anonymous"
    assert connected["protocol"] == "websocket"
    assert connected["remote"].startswith("127.0.0.1:")
    assert connected["edge_id"]

    await ws.send(json.dumps({"op": "subscribe", "id": 1, "topic": "/secret/plans"}))
    refused = await events.until("client.subscribe_refused")
    assert (refused["client_id"], refused["topic"], refused["code"]) == (
        client_id,
        "/secret/plans",
        "unknown_topic",
    )

    await ws.send(json.dumps({"op": "subscribe", "id": 2, "topic": "/demo/ok"}))
    subscribed = await events.until("client.subscribed")
    assert (subscribed["client_id"], subscribed["topic"]) == (client_id, "/demo/ok")

    await ws.close()
    gone = await events.until("client.disconnected")
    assert (gone["client_id"], gone["edge_id"], gone["reason"]) == (
        client_id,
        connected["edge_id"],
        "closed by the client (1000)",
    )


async def test_switchboard_events_prints_what_its_filter_lets_through(
    router: RouterProcess, edge: WebSocketEdgeProcess
) -> None:
    command = [sys.executable, "-m", "switchboard", "events", "--events", router.endpoints["events"]]
    watcher = subprocess.Popen(
        [*command, "--filter", "client.conn", "--json", "--count", "1"], cwd=ROOT, stdout=subprocess.PIPE
    )
    try:
        async with asyncio.timeout(15):
            while watcher.poll() is None:
                ws, _ = await open_client(edge)
                await ws.close()
                await asyncio.sleep(0.1)
    finally:
        watcher.kill()
        out, _ = watcher.communicate()
    assert watcher.returncode == 0
    assert json.loads(out)["event"] == "client.connected"
