"""The WebRTC edge's bearer token goes to the router's JWT sessions, as a WebSocket client's
``connect`` token does (docs/tokens.md): refused at signaling with 401, accepted as its user."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest

from tests.io.harness import RouterProcess, TestEdge, running_router
from tests.io.rtc_client import RtcClient, WebRtcEdgeProcess, loopback_only
from tests.tokens import SECRET

pytestmark = pytest.mark.timeout(60)

CONFIG = """
[sessions]
kind = "jwt"

[[sessions.keys]]
alg = "HS256"
secret_env = "SWITCHBOARD_TEST_JWT_SECRET"
"""


@pytest.fixture
def router(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RouterProcess]:
    monkeypatch.setenv("SWITCHBOARD_TEST_JWT_SECRET", SECRET.decode())
    (tmp_path / "router.toml").write_text(CONFIG, encoding="utf-8")
    with running_router(["--config", str(tmp_path / "router.toml")]) as process:
        yield process


def token(user: str, topics: list[str]) -> str:
    claims = {"sub": user, "exp": int(time.time()) + 600, "topics": topics}
    return jwt.encode(claims, SECRET, algorithm="HS256")


async def test_the_offer_token_is_checked_by_the_router(router: RouterProcess) -> None:
    loopback_only()
    edge = WebRtcEdgeProcess(router)
    edge.start()
    refused, accepted = RtcClient(edge.base_url), RtcClient(edge.base_url)
    try:
        status, body = await refused.connect()
        assert status == 401
        assert b'"code":"unauthorized"' in body
        status, body = await refused.connect("not.a.jwt")
        assert status == 401, body

        assert (await accepted.connect(token("alice", ["/rtc/**"])))[0] == 201
        connected = await accepted.control_message()
        assert (connected["op"], connected["user"]) == ("connected", "alice")
        assert (await accepted.request("subscribe", topic="/rtc/allowed"))["op"] == "subscribed"
        forbidden = await accepted.request("subscribe", topic="/elsewhere")
        assert (forbidden["op"], forbidden["code"]) == ("error", "forbidden")
        async with TestEdge(router.endpoints) as observer:
            assert (await observer.stats())["clients"] == 1
    finally:
        await refused.close()
        await accepted.close()
        edge.stop()
