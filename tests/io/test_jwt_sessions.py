"""JWT sessions end to end: the real router with ``[sessions] kind = "jwt"``, the real WebSocket edge,
and ``websockets`` clients presenting tokens signed at test time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.io.browser import Chromium
from tests.io.harness import RouterProcess, WebSocketEdgeProcess, push_socket, running_router
from tests.io.test_websocket_edge import Client
from tests.tokens import public_pem, token

pytestmark = pytest.mark.timeout(90)

AUDIENCE = "switchboard"
CONFIG = f"""
[sessions]
kind = "jwt"
audience = "{AUDIENCE}"
leeway = 0

[[sessions.keys]]
alg = "ES256"
file = "issuer.pem"
kid = "test"
"""


def signed(lifetime: float = 600, **changes: Any) -> str:
    """A token of ``alice`` for ``/jwt/allowed/*`` that expires ``lifetime`` seconds from now (wall
    clock, whole seconds)."""
    claims = {"aud": AUDIENCE, "exp": int(time.time() + lifetime), "nbf": None, "topics": ["/jwt/allowed/*"]}
    return token("ES256", kid="test", **{**claims, **changes})


@pytest.fixture
def jwt_router(tmp_path: Path) -> Iterator[RouterProcess]:
    (tmp_path / "issuer.pem").write_bytes(public_pem("ES256"))
    (tmp_path / "router.toml").write_text(CONFIG)
    with running_router(["--config", str(tmp_path / "router.toml")]) as process:
        yield process


@pytest.fixture
def edge(jwt_router: RouterProcess) -> Iterator[WebSocketEdgeProcess]:
    process = WebSocketEdgeProcess(jwt_router)
    process.start()
    yield process
    process.stop()


@pytest.fixture
def push(jwt_router: RouterProcess) -> Iterator[zmq.Socket[bytes]]:
    with push_socket(jwt_router.endpoints["pull"]) as sock:
        yield sock


async def open_client(edge: WebSocketEdgeProcess, presented: str) -> tuple[Client, dict[str, Any]]:
    connection = await connect(edge.url, subprotocols=["switchboard.v1"], proxy=None)  # type: ignore[list-item]
    client = Client(connection)
    await client.send({"op": "connect", "token": presented})
    return client, await client.control()


async def connected(edge: WebSocketEdgeProcess, clients: list[Client], presented: str) -> Client:
    client, reply = await open_client(edge, presented)
    clients.append(client)
    assert reply == {"op": "connected", "client_id": reply["client_id"], "user": "alice"}
    return client


async def closing_then_close(client: Client, timeout: float) -> tuple[dict[str, Any], int | None]:
    """The ``closing`` message and the close code, waiting at most ``timeout`` seconds."""
    closing = await client.control(timeout)
    with pytest.raises(ConnectionClosed) as closed:
        async with asyncio.timeout(5):
            await client.ws.recv()
    return closing, closed.value.rcvd.code if closed.value.rcvd is not None else None


async def test_bad_tokens_are_refused_at_connect(edge: WebSocketEdgeProcess, clients: list[Client]) -> None:
    for presented, reason in [
        (signed(lifetime=-10), "token expired"),
        (token("ES256", name="intruder", kid="test", aud=AUDIENCE, nbf=None), "bad signature"),
        (signed(aud="another-service"), "wrong audience"),
    ]:
        client, reply = await open_client(edge, presented)
        clients.append(client)
        assert reply == {"op": "error", "id": None, "code": "unauthorized", "message": reason}
        closing, code = await closing_then_close(client, 5)
        assert (closing["code"], code) == (4001, 4001)


async def test_a_forbidden_topic_never_delivers_while_an_allowed_one_flows(
    edge: WebSocketEdgeProcess, clients: list[Client], push: zmq.Socket[bytes]
) -> None:
    client = await connected(edge, clients, signed())
    refused = await client.request("subscribe", topic="/jwt/secret")
    assert (refused["op"], refused["code"]) == ("error", "forbidden")
    subscribed = await client.request("subscribe", topic="/jwt/allowed/a")
    assert subscribed["op"] == "subscribed"
    received: list[tuple[int, bytes]] = []
    for _ in range(200):
        push.send_multipart([b"/jwt/secret", b"secret"])
        push.send_multipart([b"/jwt/allowed/a", b"open"])
        try:
            channel, _, payload = await client.data(timeout=0.05)
        except TimeoutError:
            continue
        received.append((channel, payload))
        if len(received) == 20:
            break
    assert received == [(subscribed["channel"], b"open")] * 20


async def test_an_expired_session_is_told_4002_and_closed(
    edge: WebSocketEdgeProcess, clients: list[Client]
) -> None:
    client = await connected(edge, clients, signed(lifetime=2))
    assert (await client.request("subscribe", topic="/jwt/allowed/a"))["op"] == "subscribed"
    closing, code = await closing_then_close(client, timeout=10)
    assert closing == {"op": "closing", "code": 4002, "reason": "token expired"}
    assert code == 4002


async def test_a_refresh_before_expiry_keeps_the_connection(
    edge: WebSocketEdgeProcess, clients: list[Client], push: zmq.Socket[bytes]
) -> None:
    first_exp = int(time.time() + 2)
    client = await connected(edge, clients, signed(exp=first_exp))
    subscribed = await client.request("subscribe", topic="/jwt/allowed/a")
    later = int(time.time() + 600)
    refreshed = await client.request("refresh", token=signed(exp=later))
    assert refreshed == {"op": "refreshed", "id": refreshed["id"], "expires_at": later}
    other_user = await client.request("refresh", token=signed(sub="mallory"))
    assert other_user["code"] == "unauthorized"
    assert other_user["message"] == "the new token is for another user"
    await asyncio.sleep(max(0.0, first_exp + 1.0 - time.time()))
    assert (await client.request("ping"))["op"] == "pong"
    for _ in range(200):
        push.send_multipart([b"/jwt/allowed/a", b"after the first exp"])
        try:
            channel, _, payload = await client.data(timeout=0.05)
        except TimeoutError:
            continue
        assert (channel, payload) == (subscribed["channel"], b"after the first exp")
        break
    else:
        raise AssertionError("no data after the refresh")


async def test_the_viewer_connects_with_a_token_from_its_fragment(edge: WebSocketEdgeProcess) -> None:
    connected = "document.getElementById('status').textContent === 'connected'"
    async with Chromium() as browser:
        await browser.goto(f"{edge.http_url}?telemetry=/jwt/allowed/t#token={signed()}")
        await browser.wait_for(connected)
        client_id = await browser.evaluate("document.getElementById('client-id').textContent")
        assert client_id.startswith(edge.announced["edge_id"] + ".")
        await browser.wait_for("document.getElementById('log').textContent.includes('subscribed /jwt')")
        await browser.goto(f"{edge.http_url}?telemetry=/jwt/allowed/t")
        await browser.wait_for("document.getElementById('log').textContent.includes('unauthorized')")
        assert not await browser.evaluate(connected), "no token, no session"
