"""JWT keys from a JWKS URL end to end: the real router with ``[sessions] jwks_url`` pointing at a
JWKS this test serves over HTTP on 127.0.0.1, the real WebSocket edge, and ``websockets`` clients.
A key published after the router started is taken without a restart; a ``kid`` never published is
refused; tokens with made-up ``kid`` values cannot make the router fetch more than once per
cooldown; a failing identity provider leaves the keys in use."""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.io.harness import (
    LOOPBACK_ANY_PORT,
    WebSocketEdgeProcess,
    configured_router,
    refused_start,
    running,
)
from tests.io.test_jwt_sessions import open_client
from tests.io.test_websocket_edge import Client
from tests.jwks_server import JwksServer, jwk, jwks_server
from tests.tokens import token

pytestmark = pytest.mark.timeout(90)

COOLDOWN = 1.0
ANY_PORTS = [
    *("--pull", LOOPBACK_ANY_PORT, "--xsub", LOOPBACK_ANY_PORT),
    *("--xpub", LOOPBACK_ANY_PORT, "--control", LOOPBACK_ANY_PORT, "--admin", ""),
]
"""Options that keep a router started by hand off the default ports."""
WAIT = 3.0
CONFIG = """
[sessions]
kind = "jwt"
jwks_url = "{url}"
jwks_cooldown = {cooldown}
jwks_timeout = {wait}
"""


def signed(name: str, kid: str | None = None) -> str:
    """A token of ``alice`` signed with the ES256 test key ``name``, whose ``kid`` is ``name``."""
    exp = int(time.time() + 600)
    return token("ES256", name=name, kid=kid or name, exp=exp, nbf=None, iat=None, topics=["/jwks/*"])


def refused(reason: str) -> dict[str, Any]:
    return {"op": "error", "id": None, "code": "unauthorized", "message": reason}


@pytest.fixture
def idp() -> Iterator[JwksServer]:
    """The identity provider's JWKS, publishing the key ``old``."""
    with jwks_server() as server:
        server.publish(jwk("ES256", "old", "old"))
        yield server


@pytest.fixture
def edge(tmp_path: Path, idp: JwksServer) -> Iterator[WebSocketEdgeProcess]:
    config = CONFIG.format(url=idp.url, cooldown=COOLDOWN, wait=WAIT)
    with configured_router(tmp_path, config) as router, running(WebSocketEdgeProcess(router)) as process:
        yield process


async def reply_to(edge: WebSocketEdgeProcess, clients: list[Client], presented: str) -> dict[str, Any]:
    client, reply = await open_client(edge, presented)
    clients.append(client)
    return reply


async def past_the_cooldown(idp: JwksServer) -> None:
    """Wait until the router may fetch again for an unknown kid (its last fetch ended just after
    the last request arrived here)."""
    await asyncio.sleep(max(0.0, idp.requests[-1] + COOLDOWN + 0.3 - time.monotonic()))


async def test_a_key_published_later_is_taken_without_a_restart(
    edge: WebSocketEdgeProcess, idp: JwksServer, clients: list[Client]
) -> None:
    assert (await reply_to(edge, clients, signed("old")))["op"] == "connected"
    idp.publish(jwk("ES256", "old", "old"), jwk("ES256", "new", "new"))
    await past_the_cooldown(idp)
    before = idp.count
    reply = await reply_to(edge, clients, signed("new"))
    assert reply == {"op": "connected", "client_id": reply["client_id"], "user": "alice"}
    assert idp.count == before + 1
    assert (await reply_to(edge, clients, signed("old")))["op"] == "connected"
    assert idp.count == before + 1


async def test_a_kid_never_published_is_refused_and_fetches_are_rate_limited(
    edge: WebSocketEdgeProcess, idp: JwksServer, clients: list[Client]
) -> None:
    await past_the_cooldown(idp)
    before = idp.count
    assert await reply_to(edge, clients, signed("ghost")) == refused("unknown key id")
    assert idp.count == before + 1
    started, tokens = time.monotonic(), 0
    while time.monotonic() - started < 3 * COOLDOWN:
        made_up = signed("ghost", kid=secrets.token_hex(8))
        assert await reply_to(edge, clients, made_up) == refused("unknown key id")
        tokens += 1
    fetches = idp.requests[before:]
    assert tokens > 2 * len(fetches)
    assert len(fetches) <= 1 + 3
    assert all(later - earlier >= COOLDOWN for earlier, later in itertools.pairwise(fetches))
    assert (await reply_to(edge, clients, signed("old")))["op"] == "connected"


async def test_a_failing_identity_provider_leaves_the_keys_in_use(
    edge: WebSocketEdgeProcess, idp: JwksServer, clients: list[Client]
) -> None:
    idp.status = 503
    await past_the_cooldown(idp)
    before = idp.count
    assert await reply_to(edge, clients, signed("new")) == refused("unknown key id")
    assert idp.count == before + 1
    assert (await reply_to(edge, clients, signed("old")))["op"] == "connected"


def test_without_any_key_at_start_the_router_does_not_start(tmp_path: Path) -> None:
    with jwks_server() as server:
        url = server.url
    (tmp_path / "router.toml").write_text(CONFIG.format(url=url, cooldown=COOLDOWN, wait=WAIT))
    line = refused_start("router", "--config", str(tmp_path / "router.toml"), *ANY_PORTS)
    assert line.startswith("switchboard router: [sessions] jwks_url = ")
    assert "no key to start with" in line
    assert "refused" in line
