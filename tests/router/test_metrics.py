"""Metrics without processes: the router's collector over a ConnectionManager, the bounded topic
series, the latency sampler, the drop-burst log and the /metrics listener."""

from __future__ import annotations

import asyncio
import logging

import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edges.core.drops import DropReason
from edges.core.session import ClientSession
from edges.drop_log import MOST, DropBursts
from edges.latency import LatencySampler
from router import ClientInfo, ConnectionManager
from router.core.control import ControlPlane
from router.core.shards import Holder
from router.core.topics import TopicRegistry
from router.core.views import ClusterView, ShardView
from router.http_limits import HttpLimits, parse_address
from router.http_listener import HttpListener, serve_metrics
from router.metrics import OTHER_TOPICS, RouterCollector, RouterMetrics
from router.wire import Hello, RegisterClient, StatsRequest, Subscribe, encode_control

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: bytes) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text.decode())
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[name, frozenset(labels.items())]


def manager_with_client(registry: TopicRegistry | None = None) -> ConnectionManager:
    manager = ConnectionManager(registry)
    manager.edge_hello("edge-1", "websocket", now=10.0)
    manager.register_client(ClientInfo(client_id="c1", edge_id="edge-1"))
    return manager


# ---------------------------------------------------------------- router


def test_router_series_follow_the_core() -> None:
    manager = manager_with_client()
    manager.subscribe("c1", "/a")
    for _ in range(3):
        manager.route_data("/a", b"12345")
    manager.count_drop("bad_topic", 2)
    metrics = RouterMetrics(RouterCollector(manager, router_id="r1", clock=lambda: 12.5))
    samples = parse(metrics.render())
    assert value(samples, "switchboard_router_info", router_id="r1") == 1
    assert value(samples, "switchboard_router_clients", edge="edge-1", protocol="websocket") == 1
    assert value(samples, "switchboard_router_edges", protocol="websocket") == 1
    assert value(samples, "switchboard_router_edge_heartbeat_age_seconds", edge="edge-1") == 2.5
    assert value(samples, "switchboard_router_messages_in_total", topic="/a") == 3
    assert value(samples, "switchboard_router_bytes_in_total", topic="/a") == 15
    assert value(samples, "switchboard_router_topic_subscribers", topic="/a") == 1
    assert value(samples, "switchboard_router_deliveries_total") == 3
    assert value(samples, "switchboard_router_drops_total", reason="bad_topic") == 2


def test_cluster_series_are_there_in_cluster_mode_only() -> None:
    manager = manager_with_client()
    alone = parse(RouterMetrics(RouterCollector(manager)).render())
    assert not [name for name, _ in alone if "shard" in name or "cluster" in name or "redis" in name]
    view = ClusterView(
        router_id="r1",
        lease_time=2.0,
        redis="redis://127.0.0.1:6379/0",
        available=False,
        unavailable_rounds=4,
        routers={},
        live=frozenset({"r1", "r2", "r3"}),
        shards=[
            ShardView(0, Holder("r1", 1), 1.0),
            ShardView(1, Holder("r2", 1), None),
            ShardView(2, None, None),
            ShardView(3, Holder("r1", 6), 0.2),
            ShardView(4, Holder("r1", 2), 0.1, degraded=True),
        ],
        changes={"gained": 5, "handed_over": 2, "expired": 1},
        forwarded=7,
        history_pending=3,
        history_written=11,
    )
    samples = parse(RouterMetrics(RouterCollector(manager, cluster=lambda: view)).render())
    assert value(samples, "switchboard_router_shards_served") == 2
    assert value(samples, "switchboard_router_shards_degraded") == 1
    assert value(samples, "switchboard_router_cluster_routers") == 3
    assert value(samples, "switchboard_router_redis_unavailable_total") == 4
    assert value(samples, "switchboard_router_forwarded_total") == 7
    assert value(samples, "switchboard_router_history_pending") == 3
    assert value(samples, "switchboard_router_history_written_total") == 11
    changes = {
        dict(labels)["change"]: n
        for (name, labels), n in samples.items()
        if name == "switchboard_router_shard_changes_total"
    }
    assert changes == {"gained": 5, "handed_over": 2, "taken": 0, "expired": 1}


def test_topic_series_are_bounded_and_other_only_grows() -> None:
    registry = TopicRegistry.from_config({"declare": [{"pattern": "/declared"}, {"pattern": "/p/*"}]})
    manager = ConnectionManager(registry)
    collector = RouterCollector(manager)
    collector.topic_series.most = 2
    metrics = RouterMetrics(collector)
    others = []
    for round_ in range(3):
        for n in range(5):
            manager.route_data(f"/p/{n}", b"x" * (n + 1))
        manager.route_data("/declared", b"")
        samples = parse(metrics.render())
        topics = {
            dict(labels)["topic"]
            for name, labels in samples
            if name == "switchboard_router_messages_in_total"
        }
        assert topics == {"/p/0", "/p/1", "/declared", OTHER_TOPICS}, round_
        others.append(value(samples, "switchboard_router_messages_in_total", topic=OTHER_TOPICS))
        total = sum(v for (name, _), v in samples.items() if name == "switchboard_router_messages_in_total")
        assert total == manager.get_connection_stats().messages_in
    assert others == [3, 6, 9]
    assert value(samples, "switchboard_router_bytes_in_total", topic=OTHER_TOPICS) == 3 * (3 + 4 + 5)


def test_refused_requests_are_counted_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    registry = TopicRegistry.from_config({"allow_undeclared": False})
    manager = ConnectionManager(registry)
    control = ControlPlane(manager, 1.0, 5.0, router_id="r1", new_secret=str)
    control.handle(b"edge-1", encode_control(Hello(edge_id="edge-1", protocol="websocket")), now=10.0)
    control.handle(b"edge-1", encode_control(RegisterClient(request_id=1, client_id="c1")), now=10.0)
    metrics = RouterMetrics(RouterCollector(manager, control.refusals))
    subscribe = Subscribe(request_id=7, client_id="c1", topic="/nope")
    with caplog.at_level(logging.INFO, logger="switchboard.router"):
        control.handle(b"edge-1", encode_control(subscribe), now=11.0)
        control.handle(b"edge-1", encode_control(StatsRequest(request_id=8)), now=11.0)
    samples = parse(metrics.render())
    assert (
        value(samples, "switchboard_router_refused_requests_total", request="subscribe", code="unknown_topic")
        == 1
    )
    [line] = [r for r in caplog.records if r.getMessage().startswith("refused")]
    ids = {key: line.__dict__[key] for key in ("client_id", "edge_id", "topic", "reason")}
    assert ids == {"client_id": "c1", "edge_id": "edge-1", "topic": "/nope", "reason": "unknown_topic"}


# ---------------------------------------------------------------- edge pieces


def header(**fields: object) -> bytes:
    return msgspec.msgpack.encode(fields)


def test_latency_samples_one_in_every_n_with_a_timestamp() -> None:
    sampler = LatencySampler(every=4, buckets=(0.01, 0.1))
    for n in range(9):
        sampler.offer(header(timestamp=1_000_000_000 + n))
    sampler.offer(header(content_type="text/plain"))
    assert sampler.waiting
    sampler.written(1_050_000_000)
    assert not sampler.waiting
    assert (sampler.total, sampler.counts) == (3, [0, 3, 0])
    sampler.observe(0.001)
    family = sampler.family("latency_seconds", "doc", {"edge": "e"})
    buckets = [(s.labels["le"], s.value) for s in family.samples if s.name.endswith("_bucket")]
    assert buckets == [("0.01", 1.0), ("0.1", 4.0), ("+Inf", 4.0)]


def test_a_clock_behind_the_producer_counts_as_zero() -> None:
    sampler = LatencySampler(every=1)
    sampler.offer(header(timestamp=2_000_000_000))
    sampler.written(1_000_000_000)
    assert (sampler.total, sampler.total_seconds, sampler.counts[0]) == (1, 0.0, 1)


def test_a_bad_header_gives_no_sample() -> None:
    sampler = LatencySampler(every=1)
    sampler.offer(b"\xc1")
    assert not sampler.waiting


def session_with_drops(client_id: str, **dropped: int) -> ClientSession:
    session = ClientSession(client_id)
    session.dropped.update({DropReason(reason): count for reason, count in dropped.items()})
    return session


def test_drop_bursts_log_the_clients_that_lost_most(caplog: pytest.LogCaptureFixture) -> None:
    bursts = DropBursts(logging.getLogger("test.bursts"), "edge-1", interval=5.0)
    sessions = [session_with_drops(f"c{n}", queue_full=n, conflated=100) for n in range(1, MOST + 3)]
    with caplog.at_level(logging.WARNING, logger="test.bursts"):
        bursts.check(sessions)
        bursts.check(sessions)
        sessions[0].dropped[DropReason.TOO_SLOW] += 5
        bursts.check(sessions)
    lines = caplog.records
    assert [r.__dict__.get("client_id") for r in lines[:MOST]] == [f"c{n}" for n in range(MOST + 2, 2, -1)]
    assert lines[MOST].getMessage() == "2 more clients lost messages in the last 5 s"
    assert len(lines) == MOST + 2
    assert (lines[-1].__dict__["client_id"], lines[-1].__dict__["count"]) == ("c1", 5)
    assert lines[-1].__dict__["reason"] == "too_slow"


# ---------------------------------------------------------------- the listener


def test_addresses() -> None:
    assert parse_address("127.0.0.1:7761") == ("127.0.0.1", 7761)
    assert parse_address("[::1]:0") == ("::1", 0)
    for bad in ("7761", "host:", ":80", "h:99999", "h:x"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_address(bad)


async def fetch(address: str, request: bytes) -> bytes:
    host, port = parse_address(address)
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(request)
    writer.write_eof()
    async with asyncio.timeout(5):
        response = await reader.read()
    writer.close()
    return response


async def test_the_listener_serves_metrics_only() -> None:
    listener = HttpListener(
        "metrics", serve_metrics(lambda: b"m 1\n", "text/plain; version=0.0.4"), HttpLimits()
    )
    address = await listener.start("127.0.0.1", 0)
    try:
        ok = await fetch(address, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert ok.startswith(b"HTTP/1.1 200 OK\r\n")
        assert ok.endswith(b"\r\n\r\nm 1\n")
        assert b"Content-Type: text/plain; version=0.0.4\r\n" in ok
        assert (await fetch(address, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")).startswith(b"HTTP/1.1 404")
        assert (await fetch(address, b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n")).startswith(
            b"HTTP/1.1 405"
        )
        assert (await fetch(address, b"GET /metrics HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.0 400")
        assert await fetch(address, b"GET /metr") == b""
    finally:
        await listener.close()
