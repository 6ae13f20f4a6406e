"""An external session service end to end: the real router with ``[sessions] kind = "external"``,
the reference service (``examples/session_service.py``) as a real process, the real WebSocket edge
and ``websockets`` clients. The service answers, answers too late, or is not there at all."""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from tests.io.harness import AnnouncingProcess, WebSocketEdgeProcess, running_router
from tests.io.test_websocket_edge import Client

pytestmark = pytest.mark.timeout(90)

TIMEOUT = 1.0
TOKENS = {
    "alice-token": {"user": "alice", "topics": ["/ext/allowed/**"], "ttl": 30},
    "slow-token": {"user": "bob", "topics": ["/ext/**"], "delay": 3 * TIMEOUT},
}


class SessionServiceProcess(AnnouncingProcess):
    """``examples/session_service.py`` on a port it picks."""

    name = "session service"

    def __init__(self, table: Path) -> None:
        super().__init__()
        self.table = table

    def command(self) -> list[str]:
        script = "examples/session_service.py"
        return [
            sys.executable,
            script,
            "--table",
            str(self.table),
            "--bind",
            "tcp://127.0.0.1:0",
            "--announce",
        ]


def router_config(tmp_path: Path, endpoint: str) -> Path:
    path = tmp_path / "router.toml"
    path.write_text(f'[sessions]\nkind = "external"\nendpoint = "{endpoint}"\ntimeout = {TIMEOUT}\n')
    return path


def free_endpoint() -> str:
    """A loopback endpoint where nothing listens."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{probe.getsockname()[1]}"


@contextlib.contextmanager
def router_and_edge(tmp_path: Path, endpoint: str) -> Iterator[WebSocketEdgeProcess]:
    with running_router(["--config", str(router_config(tmp_path, endpoint))]) as router:
        edge = WebSocketEdgeProcess(router)
        edge.start()
        try:
            yield edge
        finally:
            edge.stop()


@pytest.fixture
def service(tmp_path: Path) -> Iterator[SessionServiceProcess]:
    table = tmp_path / "tokens.json"
    table.write_text(json.dumps({"tokens": TOKENS}))
    process = SessionServiceProcess(table)
    process.start()
    yield process
    process.stop()


@pytest.fixture
def edge(tmp_path: Path, service: SessionServiceProcess) -> Iterator[WebSocketEdgeProcess]:
    with router_and_edge(tmp_path, service.announced["endpoint"]) as process:
        yield process


@pytest.fixture
async def clients() -> AsyncIterator[list[Client]]:
    opened: list[Client] = []
    yield opened
    for client in opened:
        await client.ws.close()


async def open_client(edge: WebSocketEdgeProcess, clients: list[Client], token: str) -> Client:
    connection = await connect(edge.url, subprotocols=["switchboard.v1"], proxy=None)  # type: ignore[list-item]
    client = Client(connection)
    clients.append(client)
    await client.send({"op": "connect", "token": token})
    return client


def refused(reason: str) -> dict[str, Any]:
    return {"op": "error", "id": None, "code": "unauthorized", "message": reason}


async def test_the_service_names_the_user_and_its_topics(
    edge: WebSocketEdgeProcess, clients: list[Client]
) -> None:
    alice = await open_client(edge, clients, "alice-token")
    connected = await alice.control()
    assert connected == {"op": "connected", "client_id": connected["client_id"], "user": "alice"}
    assert (await alice.request("subscribe", topic="/ext/allowed/a"))["op"] == "subscribed"
    forbidden = await alice.request("subscribe", topic="/ext/secret")
    assert (forbidden["op"], forbidden["code"]) == ("error", "forbidden")
    stranger = await open_client(edge, clients, "made-up-token")
    assert await stranger.control() == refused("unknown token")


async def test_a_slow_service_times_out_while_other_clients_are_served(
    edge: WebSocketEdgeProcess, clients: list[Client]
) -> None:
    started = time.monotonic()
    slow = await open_client(edge, clients, "slow-token")
    alice = await open_client(edge, clients, "alice-token")
    assert (await alice.control(timeout=TIMEOUT))["user"] == "alice"
    assert (await alice.request("ping"))["op"] == "pong"
    assert await slow.control(timeout=TIMEOUT + 2) == refused("session service timed out")
    assert TIMEOUT - 0.1 <= time.monotonic() - started <= TIMEOUT + 1.5


async def test_a_service_that_is_down_refuses_within_the_timeout(
    tmp_path: Path, clients: list[Client]
) -> None:
    with router_and_edge(tmp_path, free_endpoint()) as edge:
        for _ in range(2):
            started = time.monotonic()
            client = await open_client(edge, clients, "alice-token")
            reply = await client.control(timeout=TIMEOUT + 2)
            assert reply in (refused("session service unavailable"), refused("session service timed out"))
            assert time.monotonic() - started <= TIMEOUT + 1.5
