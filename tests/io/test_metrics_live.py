"""Metrics and logs of the real router and edges: the values match the traffic sent.

K websocket clients subscribe to one topic; N messages of a known size go through; the router's
and the edge's ``/metrics`` (parsed with ``prometheus_client.parser``) must show N and N*size in,
N*K out, K clients, and drops under the right reason after bad input. Both processes log JSON
lines, which must parse and carry the ids. The WebRTC edge's ``/metrics``, with aiortc clients,
shows the same series under ``protocol="webrtc"``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq

from edges.latency import SAMPLE_EVERY
from tests.io.harness import RouterProcess, WebSocketEdgeProcess, eventually, push_socket
from tests.io.metrics_scrape import Scrape, scrape
from tests.io.rtc_client import DATA_HEADER as RTC_DATA_HEADER
from tests.io.rtc_client import RtcClient, WebRtcEdgeProcess, http, loopback_only
from tests.io.test_websocket_edge import DATA_HEADER, Client, open_client

pytestmark = pytest.mark.timeout(90)

TOPIC = "/metrics/topic"
N = 40
SIZE = 100
K = 3
WS_HEADER = 2
"""A server WebSocket frame's header for a payload under 126 bytes."""

CONFIG = f"""
[topics]
allow_undeclared = false

[[topics.declare]]
pattern = "{TOPIC}"
"""


@pytest.fixture
def rtc_edge(router: RouterProcess) -> Iterator[WebRtcEdgeProcess]:
    loopback_only()
    process = WebRtcEdgeProcess(router)
    process.start()
    yield process
    process.stop()


def log_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of a JSON log; each must be one object with the four fixed keys."""
    lines = []
    for raw in path.read_text().splitlines():
        line = json.loads(raw)
        assert {"time", "level", "logger", "message"} <= set(line), line
        lines.append(line)
    return lines


@pytest.fixture
def router(tmp_path: Path) -> Iterator[RouterProcess]:
    config = tmp_path / "router.toml"
    config.write_text(CONFIG)
    process = RouterProcess(["--config", str(config), "--metrics", "127.0.0.1:0", "--log-format", "json"])
    process.log_path = tmp_path / "router.log"
    process.start()
    yield process
    process.stop()


@pytest.fixture
def edge(router: RouterProcess, tmp_path: Path) -> Iterator[WebSocketEdgeProcess]:
    process = WebSocketEdgeProcess(router, ["--log-format", "json"])
    process.log_path = tmp_path / "edge.log"
    process.start()
    yield process
    process.stop()


@pytest.fixture
def push(router: RouterProcess) -> Iterator[zmq.Socket[bytes]]:
    with push_socket(router.endpoints["pull"]) as sock:
        yield sock


async def until_every_client_has(clients: list[Client], push: zmq.Socket[bytes], marker: bytes) -> None:
    """Send ``marker`` until it reaches the first client (the edge's data subscription is in
    force then), then read every client up to it, so no probe is left in flight."""
    for _ in range(200):
        push.send_multipart([TOPIC.encode(), marker])
        try:
            await clients[0].data(timeout=0.05)
            break
        except TimeoutError:
            continue
    push.send_multipart([TOPIC.encode(), marker + b"-last"])
    for client in clients:
        while (await client.data())[2] != marker + b"-last":
            pass


def stamped(index: int) -> list[bytes]:
    header = msgspec.msgpack.encode({"timestamp": time.time_ns()})
    return [TOPIC.encode(), header, bytes([index]) * SIZE]


async def test_metric_values_match_the_traffic(
    router: RouterProcess, edge: WebSocketEdgeProcess, push: zmq.Socket[bytes]
) -> None:
    clients = [await open_client(edge) for _ in range(K)]
    for client in clients:
        assert (await client.request("subscribe", topic=TOPIC))["op"] == "subscribed"
    await until_every_client_has(clients, push, b"probe")
    edge_address = edge.address
    router_before, edge_before = await scrape(router.endpoints["metrics"]), await scrape(edge_address)

    for index in range(N):
        push.send_multipart(stamped(index))
    for client in clients:
        assert [len((await client.data())[2]) for _ in range(N)] == [SIZE] * N

    routed, edged = await scrape(router.endpoints["metrics"]), await scrape(edge_address)
    edge_id = edge.announced["edge_id"]

    def grew(after: Scrape, before: Scrape, name: str, **labels: str) -> float:
        return after.labelled(name, **labels) - before.labelled(name, **labels)

    assert grew(routed, router_before, "switchboard_router_messages_in_total", topic=TOPIC) == N
    assert grew(routed, router_before, "switchboard_router_bytes_in_total", topic=TOPIC) == N * SIZE
    assert grew(routed, router_before, "switchboard_router_deliveries_total") == N * K
    assert routed("switchboard_router_topic_subscribers", topic=TOPIC) == K
    assert routed("switchboard_router_clients", edge=edge_id, protocol="websocket") == K
    assert routed("switchboard_router_edge_heartbeat_age_seconds", edge=edge_id) < 5

    assert grew(edged, edge_before, "switchboard_edge_messages_in_total") == N
    assert grew(edged, edge_before, "switchboard_edge_bytes_in_total") == N * SIZE
    assert grew(edged, edge_before, "switchboard_edge_deliveries_total") == N * K
    frame = WS_HEADER + DATA_HEADER.size + SIZE
    assert grew(edged, edge_before, "switchboard_edge_bytes_out_total") == N * K * frame
    assert edged.labelled("switchboard_edge_clients", edge=edge_id, protocol="websocket") == K
    assert edged.labelled("switchboard_edge_router_connected") == 1
    assert edged.labelled("switchboard_edge_router_heartbeat_age_seconds") < 5
    samples = len(range(0, N, SAMPLE_EVERY))
    assert grew(edged, edge_before, "switchboard_edge_latency_seconds_count") == samples
    assert 0 <= grew(edged, edge_before, "switchboard_edge_latency_seconds_sum") < samples * 5.0
    assert edged.labelled("switchboard_edge_queued_messages") == 0


async def test_drops_show_their_reason_and_logs_carry_the_ids(
    router: RouterProcess, edge: WebSocketEdgeProcess, push: zmq.Socket[bytes]
) -> None:
    clients = [await open_client(edge) for _ in range(K)]
    await clients[0].ws.send("this is not json")
    assert (await clients[0].control())["code"] == "bad_request"
    refused = await clients[1].request("subscribe", topic="/metrics/undeclared")
    assert refused["code"] == "unknown_topic"
    push.send_multipart([b"no-slash", b"x"])
    edge_address = edge.address

    async def router_counted() -> bool:
        return (await scrape(router.endpoints["metrics"]))(
            "switchboard_router_drops_total", reason="bad_topic"
        ) == 1

    await eventually(router_counted)
    routed, edged = await scrape(router.endpoints["metrics"]), await scrape(edge_address)
    assert edged.labelled("switchboard_edge_drops_total", reason="bad_input") == 1
    assert routed("switchboard_router_refused_requests_total", request="subscribe", code="unknown_topic") == 1

    await clients[2].ws.close()

    async def one_client_fewer() -> bool:
        scraped = await scrape(router.endpoints["metrics"])
        return (
            scraped("switchboard_router_clients", edge=edge.announced["edge_id"], protocol="websocket")
            == K - 1
        )

    await eventually(one_client_fewer)
    assert router.log_path is not None
    assert edge.log_path is not None
    check_edge_log(log_lines(edge.log_path), edge.announced["edge_id"])
    check_router_log(log_lines(router.log_path), edge.announced["edge_id"])


def check_edge_log(lines: list[dict[str, Any]], edge_id: str) -> None:
    connected = [
        line for line in lines if line["message"].startswith("client") and "connected from" in line["message"]
    ]
    assert len(connected) == K
    assert all(line["edge_id"] == edge_id and line["client_id"].startswith(edge_id) for line in connected)
    [gone] = [line for line in lines if "disconnected" in line["message"]]
    assert (gone["client_id"], gone["closed_by"], gone["code"]) == (f"{edge_id}.3", "client", 1000)
    assert gone["reason"] == "closed by the client"


def check_router_log(lines: list[dict[str, Any]], edge_id: str) -> None:
    [refused] = [line for line in lines if line["message"].startswith("refused subscribe")]
    ids = {key: refused[key] for key in ("client_id", "edge_id", "topic", "reason")}
    assert ids == {
        "client_id": f"{edge_id}.2",
        "edge_id": edge_id,
        "topic": "/metrics/undeclared",
        "reason": "unknown_topic",
    }
    [dropped] = [line for line in lines if line["message"].startswith("dropped a producer message")]
    assert (dropped["level"], dropped["reason"]) == ("warning", "bad_topic")


async def open_rtc_client(edge: WebRtcEdgeProcess) -> RtcClient:
    client = RtcClient(edge.base_url)
    status, body = await client.connect("any token")
    assert status == 201, body
    assert (await client.control_message())["op"] == "connected"
    return client


async def until_every_rtc_client_has(clients: list[RtcClient], push: zmq.Socket[bytes]) -> None:
    """As :func:`until_every_client_has`, for WebRTC clients."""
    for _ in range(200):
        push.send_multipart([TOPIC.encode(), b"probe"])
        try:
            await clients[0].data(timeout=0.05)
            break
        except TimeoutError:
            continue
    push.send_multipart([TOPIC.encode(), b"probe-last"])
    for client in clients:
        while (await client.data())[3] != b"probe-last":
            pass


async def test_webrtc_edge_metrics_match_the_traffic(
    router: RouterProcess, rtc_edge: WebRtcEdgeProcess, push: zmq.Socket[bytes]
) -> None:
    clients = [await open_rtc_client(rtc_edge) for _ in range(K)]
    assert (await clients[0].request("subscribe", topic="no-slash"))["code"] == "bad_topic"
    for client in clients:
        assert (await client.request("subscribe", topic=TOPIC))["op"] == "subscribed"
    await until_every_rtc_client_has(clients, push)
    address = rtc_edge.address
    before = await scrape(address)

    for index in range(N):
        push.send_multipart(stamped(index))
    for client in clients:
        assert [len((await client.data())[3]) for _ in range(N)] == [SIZE] * N

    after = await scrape(address)

    def grew(name: str) -> float:
        return after.labelled(name) - before.labelled(name)

    edge_id = rtc_edge.announced["edge_id"]
    assert after.labelled("switchboard_edge_clients", edge=edge_id, protocol="webrtc") == K
    assert grew("switchboard_edge_messages_in_total") == N
    assert grew("switchboard_edge_deliveries_total") == N * K
    assert grew("switchboard_edge_bytes_out_total") == N * K * (RTC_DATA_HEADER.size + SIZE)
    assert grew("switchboard_edge_latency_seconds_count") == len(range(0, N, SAMPLE_EVERY))
    assert after.labelled("switchboard_edge_router_connected") == 1
    assert after.labelled("switchboard_edge_refused_requests_total", code="bad_topic") == 1
    for client in clients:
        await client.close()


async def test_webrtc_edge_without_metrics(router: RouterProcess) -> None:
    loopback_only()
    edge = WebRtcEdgeProcess(router, ["--no-metrics"])
    edge.start()
    try:
        status, _, _ = await http("GET", f"{edge.base_url}/metrics")
    finally:
        edge.stop()
    assert status == 404
