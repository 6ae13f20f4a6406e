"""What the admin API's integration tests share: a router with an admin token and a WebSocket edge,
a client that records what it receives, and a producer that publishes at a steady rate."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, NamedTuple

import pytest
import zmq
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from edges.core.client_wire import FRAME_SKIPPED, SkippedFrame, frame_type, parse_skipped_frame
from router.admin.client import AdminClient
from tests.io.harness import RouterProcess, WebSocketEdgeProcess, push_socket

TOKEN = "admin-test-token"


class Stack(NamedTuple):
    router: RouterProcess
    edge: WebSocketEdgeProcess
    admin: AdminClient


@contextlib.contextmanager
def running_stack(monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    """A router whose admin API wants :data:`TOKEN`, and one WebSocket edge."""
    monkeypatch.setenv("SWITCHBOARD_ADMIN_TOKEN", TOKEN)
    router = RouterProcess()
    router.start()
    edge = WebSocketEdgeProcess(router)
    try:
        edge.start()
        yield Stack(router, edge, AdminClient(router.admin_url, TOKEN))
    finally:
        edge.stop()
        router.stop()


async def call(admin: AdminClient, method: str, path: str, body: object = None) -> Any:
    """One admin request, off the event loop (the client is blocking)."""
    return await asyncio.to_thread(admin.request, method, path, body)


class Watcher:
    """A ``switchboard.v1`` client that keeps every frame it receives, with the time it came."""

    def __init__(self, ws: ClientConnection, client_id: str) -> None:
        self.ws = ws
        self.client_id = client_id
        self.data: list[tuple[float, bytes]] = []
        self.skipped: list[tuple[float, SkippedFrame]] = []
        self.texts: list[dict[str, Any]] = []
        self._reader: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, url: str, topic: str) -> Watcher:
        ws = await connect(url, subprotocols=["switchboard.v1"], proxy=None)  # type: ignore[list-item]
        await ws.send('{"op":"connect"}')
        connected = json.loads(await ws.recv())
        assert connected["op"] == "connected", connected
        await ws.send(json.dumps({"op": "subscribe", "id": 1, "topic": topic}))
        subscribed = json.loads(await ws.recv())
        assert subscribed["op"] == "subscribed", subscribed
        watcher = cls(ws, connected["client_id"])
        watcher._reader = asyncio.create_task(watcher._read())
        return watcher

    async def _read(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in self.ws:
                now = time.monotonic()
                if isinstance(message, str):
                    self.texts.append(json.loads(message))
                elif frame_type(message) == FRAME_SKIPPED:
                    self.skipped.append((now, parse_skipped_frame(message)))
                else:
                    self.data.append((now, message))

    async def closed(self, timeout: float = 5.0) -> int | None:
        """Wait until the edge closed the connection; its close code."""
        async with asyncio.timeout(timeout):
            await self.ws.wait_closed()
        return self.ws.close_code

    async def close(self) -> None:
        await self.ws.close()
        if self._reader is not None:
            await self._reader


@contextlib.asynccontextmanager
async def publishing(pull: str, topic: str, rate: float) -> AsyncIterator[None]:
    """Publish small messages on ``topic`` at about ``rate`` a second for the length of the block."""
    with push_socket(pull) as push:
        task = asyncio.create_task(_publish(push, topic, rate))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _publish(push: zmq.Socket[bytes], topic: str, rate: float) -> None:
    count = 0
    started = time.monotonic()
    while True:
        count += 1
        push.send_multipart([topic.encode(), b'{"n": %d}' % count], zmq.NOBLOCK)
        await asyncio.sleep(max(0.0, started + count / rate - time.monotonic()))
