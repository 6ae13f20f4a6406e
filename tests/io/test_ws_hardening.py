"""WebSocket edge hardening against the real processes: connections per IP, no compression, the
per-client request rate, the connect deadline, no clients without a router, the pages' security
headers, and log lines a client cannot forge."""

from __future__ import annotations

import asyncio
import json
import re
import signal
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Origin, Subprotocol

from router.http_messages import PAGE_POLICY
from tests.io.harness import RouterProcess, WebSocketEdgeProcess, eventually, running
from tests.io.metrics_scrape import scrape
from tests.io.rtc_client import http
from tests.io.test_websocket_edge import accepts_a_client, open_client

pytestmark = pytest.mark.timeout(60)


async def test_connections_past_the_per_ip_limit_get_429_and_are_counted(router: RouterProcess) -> None:
    edge = WebSocketEdgeProcess(router, ["--max-connections-per-ip", "2"])
    edge.start()
    try:
        first, second = await open_client(edge), await open_client(edge)
        with pytest.raises(InvalidStatus) as refused:
            await open_client(edge)
        assert refused.value.response.status_code == 429
        metrics = await scrape(edge.address)
        assert (
            metrics.labelled("switchboard_edge_refused_connections_total", reason="max_connections_per_ip")
            == 1
        )
        await first.ws.close()
        await eventually(lambda: accepts_a_client(edge), timeout=5)
        await second.ws.close()
    finally:
        edge.stop()


async def test_a_client_offering_permessage_deflate_gets_no_extension(router: RouterProcess) -> None:
    edge = WebSocketEdgeProcess(router)
    edge.start()
    try:
        subprotocols = [Subprotocol("switchboard.v1")]
        async with connect(edge.url, subprotocols=subprotocols, compression="deflate", proxy=None) as ws:
            assert ws.request is not None
            assert ws.response is not None
            assert "permessage-deflate" in ws.request.headers.get("Sec-WebSocket-Extensions", "")
            assert ws.response.headers.get("Sec-WebSocket-Extensions") is None
            await ws.send('{"op":"connect"}')
            assert json.loads(await ws.recv())["op"] == "connected"
    finally:
        edge.stop()


async def test_a_client_over_its_request_rate_gets_rate_limited_then_4004(router: RouterProcess) -> None:
    edge = WebSocketEdgeProcess(router, ["--max-requests-per-second", "1", "--request-burst", "5"])
    edge.start()
    try:
        client = await open_client(edge)
        for index in range(4 + 5 + 1):
            await client.send({"op": "ping", "id": index})
        replies = [await client.control() for _ in range(4 + 5)]
        assert [r["op"] for r in replies[:4]] == ["pong"] * 4
        assert [(r["code"], r["id"]) for r in replies[4:]] == [("rate_limited", i) for i in range(4, 9)]
        assert await client.control() == {"op": "closing", "code": 4004, "reason": "too many requests"}
        with pytest.raises(ConnectionClosed) as closed:
            await client.control()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 4004

        async def six_rate_limited() -> bool:
            metrics = await scrape(edge.address)
            return metrics.total("switchboard_edge_drops_total", reason="rate_limited") == 6

        await eventually(six_rate_limited)
        assert edge.alive
    finally:
        edge.stop()


async def test_a_connection_that_never_sends_connect_is_closed_at_the_deadline(router: RouterProcess) -> None:
    with running(WebSocketEdgeProcess(router, ["--connect-timeout", "0.5"])) as edge:
        subprotocols = [Subprotocol("switchboard.v1")]
        async with connect(edge.url, subprotocols=subprotocols, proxy=None) as ws:
            closing = json.loads(await asyncio.wait_for(ws.recv(), timeout=5))
            assert closing == {"op": "closing", "code": 4005, "reason": "no connect within 0.5 s"}
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), timeout=5)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 4005
        assert await accepts_a_client(edge), "a client that connects at once is not closed"


async def test_without_a_router_new_clients_are_told_to_try_again_later(router: RouterProcess) -> None:
    with running(WebSocketEdgeProcess(router)) as edge:
        router.kill(signal.SIGKILL)

        async def refused() -> bool:
            async with connect(edge.url, subprotocols=[Subprotocol("switchboard.v1")], proxy=None) as ws:
                try:
                    await asyncio.wait_for(ws.recv(), timeout=0.5)
                except ConnectionClosed as closed:
                    return closed.rcvd is not None and closed.rcvd.code == 1013
                except TimeoutError:
                    return False
                return False

        await eventually(refused, timeout=10)
        metrics = await scrape(edge.address)
        assert metrics.labelled("switchboard_edge_refused_connections_total", reason="no_router") >= 1
        router.restart_on_same_ports()
        await eventually(lambda: accepts_a_client(edge), timeout=10)


async def test_the_viewer_pages_carry_a_content_security_policy(router: RouterProcess) -> None:
    with running(WebSocketEdgeProcess(router)) as edge:
        for path in ("/", "/viewer.js"):
            status, headers, _ = await http("GET", f"{edge.http_url.rstrip('/')}{path}")
            assert status == 200
            assert headers["content-security-policy"] == PAGE_POLICY
            assert headers["x-content-type-options"] == "nosniff"


async def test_by_default_only_the_edges_own_pages_may_open_a_websocket(router: RouterProcess) -> None:
    with running(WebSocketEdgeProcess(router)) as edge:
        own = Origin(edge.http_url.rstrip("/"))
        with pytest.raises(InvalidStatus) as refused:
            await open_client(edge, origin=Origin("http://elsewhere.example"))
        assert refused.value.response.status_code == 403
        for client in (await open_client(edge, origin=own), await open_client(edge)):
            await client.ws.close()
        metrics = await scrape(edge.address)
        assert metrics.labelled("switchboard_edge_refused_connections_total", reason="origin") == 1


LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR) switchboard[.\w]*: ")


async def test_a_close_reason_cannot_forge_a_log_line(router: RouterProcess, tmp_path: Path) -> None:
    edge = WebSocketEdgeProcess(router, ["--log-format", "text"])
    log = edge.log_path = tmp_path / "edge.log"
    with running(edge):
        client = await open_client(edge)
        forged = "bye\n2026-01-01 00:00:00,000 ERROR switchboard.router: forged\r\x1b[2K"
        await client.ws.close(code=4000, reason=forged)
        await eventually(lambda: "disconnected" in log.read_text(), timeout=5)
    lines = log.read_text().splitlines()
    assert all(LOG_LINE.match(line) for line in lines), lines
    [line] = [line for line in lines if "forged" in line]
    assert "disconnected (client 4000): bye\\n2026-01-01 00:00:00,000 ERROR" in line
    assert 'reason="bye\\n2026-01-01 00:00:00,000 ERROR switchboard.router: forged\\r\\x1b[2K"' in line
