"""Fetching a JWKS URL for real, from a server the test runs on 127.0.0.1: what a fetch gives,
how it fails, and that a failure keeps the keys in use and is logged once per interval."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time

import pytest

from router.core.jwt_sessions import JwksSchedule, JwtSessions
from router.jwks import MAX_JWKS_BYTES, JwksError, JwksFetcher
from tests.jwks_server import jwk, jwks_server

TIMEOUT = 1.0


def fetcher(url: str, refresh: float = 300.0, cooldown: float = 10.0) -> JwksFetcher:
    return JwksFetcher(url, JwtSessions([], jwks=JwksSchedule(refresh, cooldown)), TIMEOUT)


def test_a_fetch_gives_the_signing_keys() -> None:
    with jwks_server() as server:
        server.publish(jwk("ES256", "main", "a"), jwk("EdDSA", "main", "b"))
        keys = fetcher(server.url).fetch()
    assert [(k.algorithm, k.kid) for k in keys] == [("ES256", "a"), ("EdDSA", "b")]
    assert server.count == 1


@pytest.mark.parametrize(
    ("status", "body", "reason"),
    [
        (500, b"{}", "HTTP 500"),
        (200, b"<html>", "not JSON"),
        (200, b"[]", "did not return a JSON object"),
        (200, b'{"keys": []}', "JWK"),
        (200, b" " * (MAX_JWKS_BYTES + 1), "over"),
    ],
)
def test_a_fetch_that_gives_no_key_set_says_why(status: int, body: bytes, reason: str) -> None:
    with jwks_server() as server:
        server.status, server.body = status, body
        with pytest.raises(JwksError, match=reason):
            fetcher(server.url).fetch()


def test_a_redirect_is_not_followed() -> None:
    with jwks_server() as elsewhere, jwks_server() as server:
        elsewhere.publish(jwk("ES256", "main", "a"))
        server.status, server.headers = 302, {"Location": elsewhere.url}
        with pytest.raises(JwksError, match="HTTP 302"):
            fetcher(server.url).fetch()
    assert elsewhere.count == 0


def test_a_slow_server_fails_the_fetch_within_its_timeout() -> None:
    with jwks_server() as server:
        server.delay = 3 * TIMEOUT
        started = time.monotonic()
        with pytest.raises(JwksError, match="timed out"):
            fetcher(server.url).fetch()
        assert time.monotonic() - started < 2 * TIMEOUT


def test_nothing_listening_fails_the_fetch() -> None:
    with jwks_server() as server:
        url = server.url
    with pytest.raises(JwksError, match="refused"):
        fetcher(url).fetch()


async def test_a_failed_fetch_keeps_the_keys_and_is_logged_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with jwks_server() as server:
        server.publish(jwk("ES256", "main", "a"))
        jwks = fetcher(server.url)
        assert await jwks.refresh() is None
        server.status = 503
        with caplog.at_level(logging.WARNING, "switchboard.router"):
            for _ in range(3):
                assert await jwks.refresh() == "HTTP 503 Service Unavailable"
    assert [k.kid for k in jwks.sessions.keys] == ["a"]
    [line] = [r.getMessage() for r in caplog.records if "cannot fetch" in r.getMessage()]
    assert "1 key(s) kept in use" in line


async def test_run_fetches_when_tokens_want_keys_at_most_once_per_cooldown() -> None:
    cooldown = 0.5
    with jwks_server() as server:
        server.publish(jwk("ES256", "main", "a"))
        jwks = fetcher(server.url, cooldown=cooldown)
        runner = asyncio.create_task(jwks.run(lambda: None))
        try:
            deadline = time.monotonic() + 4 * cooldown
            while time.monotonic() < deadline:
                jwks.schedule.want(time.time())
                jwks.wake()
                await asyncio.sleep(0.01)
        finally:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
    gaps = [later - earlier for earlier, later in itertools.pairwise(server.requests)]
    assert 3 <= server.count <= 5
    assert min(gaps) >= cooldown
