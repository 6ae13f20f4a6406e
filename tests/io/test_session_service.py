"""An external session service end to end: the real router with ``[sessions] kind = "external"``,
the reference service (``examples/session_service.py``) as a real process, the real WebSocket edge
and ``websockets`` clients. The service answers, answers too late, or is not there at all; with
Curve on, the router reaches it over Curve, and a service with another key pair gets nothing."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from router.curve import write_key_pair
from tests.io.harness import (
    LOOPBACK_ANY_PORT,
    AnnouncingProcess,
    RouterProcess,
    WebSocketEdgeProcess,
    eventually,
    refused_start,
    running,
    running_router,
)
from tests.io.test_websocket_edge import Client

pytestmark = pytest.mark.timeout(90)

TIMEOUT = 1.0
ANY_PORTS = [
    *("--pull", LOOPBACK_ANY_PORT, "--xsub", LOOPBACK_ANY_PORT),
    *("--xpub", LOOPBACK_ANY_PORT, "--control", LOOPBACK_ANY_PORT, "--admin", ""),
]
"""Options that keep a router started by hand off the default ports."""
TOKENS = {
    "alice-token": {"user": "alice", "topics": ["/ext/allowed/**"], "ttl": 30},
    "slow-token": {"user": "bob", "topics": ["/ext/**"], "delay": 3 * TIMEOUT},
}


class SessionServiceProcess(AnnouncingProcess):
    """``examples/session_service.py`` on a port it picks."""

    name = "session service"

    def __init__(self, table: Path, extra_args: Sequence[str] = ()) -> None:
        super().__init__(extra_args)
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


# ---------------------------------------------------------------- Curve

CURVE_CONFIG = """
[security]
curve_secret_key_file = "keys/router.key_secret"
edge_keys_dir = "allowed"

[sessions]
kind = "external"
endpoint = "{endpoint}"
timeout = {timeout}
service_public_key_file = "keys/sessions.key"
"""


@pytest.fixture
def curve_keys(tmp_path: Path) -> Path:
    """Key pairs in ``tmp_path/keys``: the router's allow-list (``allowed``) holds the edge's key,
    the service's (``routers``) the router's; ``impostor`` is a service key pair the router does
    not know."""
    keys = tmp_path / "keys"
    for name in ("router", "edge", "sessions", "impostor"):
        write_key_pair(keys, name)
    for directory, name in (("allowed", "edge"), ("routers", "router")):
        (tmp_path / directory).mkdir()
        shutil.copy(keys / f"{name}.key", tmp_path / directory)
    return keys


def curve_service(tmp_path: Path, key_pair: str) -> SessionServiceProcess:
    """The reference service as a Curve server with ``key_pair``, logging to ``service.log``."""
    table = tmp_path / "tokens.json"
    table.write_text(json.dumps({"tokens": TOKENS}))
    secret = tmp_path / "keys" / f"{key_pair}.key_secret"
    args = ["--curve-secret-key-file", str(secret), "--curve-allowed-keys-dir", str(tmp_path / "routers")]
    process = SessionServiceProcess(table, args)
    process.log_path = tmp_path / "service.log"
    return process


@contextlib.contextmanager
def curve_router_and_edge(tmp_path: Path, endpoint: str) -> Iterator[WebSocketEdgeProcess]:
    """A router with Curve on, logging to ``router.log``, and a Curve edge."""
    config = tmp_path / "router.toml"
    config.write_text(CURVE_CONFIG.format(endpoint=endpoint, timeout=TIMEOUT))
    router_process = RouterProcess(["--config", str(config)])
    router_process.log_path = tmp_path / "router.log"
    with running(router_process) as router:
        keys = tmp_path / "keys"
        curve = ["--curve-secret-key-file", str(keys / "edge.key_secret")]
        curve += ["--curve-router-key-file", str(keys / "router.key")]
        with running(WebSocketEdgeProcess(router, curve)) as edge:
            yield edge


def test_with_curve_on_the_router_refuses_an_external_service_without_its_key(
    tmp_path: Path, curve_keys: Path
) -> None:
    config = tmp_path / "router.toml"
    text = CURVE_CONFIG.format(endpoint=free_endpoint(), timeout=TIMEOUT)
    config.write_text(text.replace('service_public_key_file = "keys/sessions.key"', ""))
    line = refused_start("router", "--config", str(config), *ANY_PORTS)
    assert "service_public_key_file is required" in line


async def test_with_curve_clients_register_through_the_service(
    tmp_path: Path, curve_keys: Path, clients: list[Client]
) -> None:
    with (
        running(curve_service(tmp_path, "sessions")) as service,
        curve_router_and_edge(tmp_path, service.announced["endpoint"]) as edge,
    ):
        alice = await open_client(edge, clients, "alice-token")
        connected = await alice.control(timeout=TIMEOUT + 2)
        assert connected == {"op": "connected", "client_id": connected["client_id"], "user": "alice"}
        assert (await alice.request("subscribe", topic="/ext/allowed/a"))["op"] == "subscribed"
    assert "request 1 (authenticate): allowed as alice" in (tmp_path / "service.log").read_text()


async def test_a_service_with_another_key_pair_gets_nothing(
    tmp_path: Path, curve_keys: Path, clients: list[Client]
) -> None:
    router_log = tmp_path / "router.log"
    with (
        running(curve_service(tmp_path, "impostor")) as service,
        curve_router_and_edge(tmp_path, service.announced["endpoint"]) as edge,
    ):
        for _ in range(3):
            started = time.monotonic()
            client = await open_client(edge, clients, "alice-token")
            assert await client.control(timeout=TIMEOUT + 2) == refused("session service unavailable")
            assert time.monotonic() - started <= TIMEOUT
        await eventually(lambda: "handshake with the session service failed" in read(router_log))
    service_log = read(tmp_path / "service.log")
    assert "Curve on" in service_log
    assert "request" not in service_log


def read(path: Path) -> str:
    return path.read_text() if path.exists() else ""
