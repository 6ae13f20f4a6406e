"""A WebSocket edge in front of a cluster: two real routers on a real Redis, the edge given one of
them. It links to both, a client gets the data of topics of both routers' shards, and when one
router is killed its shards' subscriptions move to the other and data continues, nothing lost and
nothing twice on a reliable topic."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import zmq

from edges.core.client_wire import (
    FRAME_RESTARTED,
    FRAME_SKIPPED,
    frame_type,
    parse_data_frame,
    parse_restarted_frame,
    parse_skipped_frame,
)
from router.wire import ShardMap
from tests.io.harness import RouterProcess, TestEdge, WebSocketEdgeProcess, eventually, push_socket
from tests.io.metrics_scrape import scrape
from tests.io.redis_server import RedisServer, running_redis
from tests.io.test_cluster import LEASE_TIME, MapWatcher, cluster_config, cluster_router, topic_in_shard_of
from tests.io.test_websocket_edge import Client, open_client

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    with running_redis(tmp_path) as server:
        yield server


@pytest.fixture
async def routers(
    tmp_path: Path, redis: RedisServer
) -> AsyncIterator[tuple[RouterProcess, RouterProcess, ShardMap]]:
    """Two routers of one cluster, and a shard map in which each serves some shards."""
    config = cluster_config(tmp_path, redis)
    with cluster_router(config) as first, cluster_router(config) as second:
        watcher = TestEdge(first.endpoints)
        maps = MapWatcher(watcher)
        async with watcher:
            await eventually(lambda: len(maps.owners()) == 2 and "" not in maps.owners(), timeout=10)
            shard_map = maps.newest
            assert shard_map is not None
        yield first, second, shard_map


@pytest.fixture
def edge(routers: tuple[RouterProcess, RouterProcess, ShardMap]) -> Iterator[WebSocketEdgeProcess]:
    """A WebSocket edge given the first router only."""
    process = WebSocketEdgeProcess(routers[0])
    process.start()
    yield process
    process.stop()


class Reader:
    """One client's frames by topic, from the channels its ``subscribed`` replies named: data as
    ``(offset, payload)``, a restarted frame as ``("restarted", epoch)``, a skipped one as
    ``("skipped", first, last)``."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.topics: dict[int, str] = {}
        self.received: dict[str, list[tuple[object, ...]]] = {}

    async def subscribe(self, topic: str) -> None:
        reply = await self.client.request("subscribe", topic=topic)
        assert reply["op"] == "subscribed", reply
        self.topics[reply["channel"]] = topic
        self.received[topic] = []

    async def until(self, topic: str, payload: bytes, timeout: float = 10.0) -> list[tuple[object, ...]]:
        """Read until ``payload`` of ``topic`` arrived; returns that topic's frames so far."""
        async with asyncio.timeout(timeout):
            while not any(frame[-1] == payload for frame in self.received[topic]):
                message = await self.client.ws.recv()
                if isinstance(message, str):
                    continue
                kind = frame_type(message)
                if kind == FRAME_RESTARTED:
                    channel, epoch = parse_restarted_frame(message)
                    self.received[self.topics[channel]].append(("restarted", epoch))
                elif kind == FRAME_SKIPPED:
                    skipped = parse_skipped_frame(message)
                    self.received[self.topics[skipped.channel]].append(
                        ("skipped", skipped.first, skipped.last)
                    )
                else:
                    data = parse_data_frame(message)
                    self.received[self.topics[data.channel]].append((data.offset, data.payload))
        return self.received[topic]


def send(push: zmq.Socket[bytes], topic: str, *payloads: bytes) -> None:
    for payload in payloads:
        push.send_multipart([topic.encode(), payload])


@contextlib.contextmanager
def closing_client(client: Client) -> Iterator[None]:
    """The client's connection is dropped after the block (the edge process is stopped next)."""
    try:
        yield
    finally:
        client.ws.transport.abort()


def ids(routers: tuple[RouterProcess, RouterProcess, ShardMap]) -> tuple[str, str]:
    """The router ids of the first and second router, from the map's endpoints."""
    first, second, shard_map = routers
    by_control = {endpoints.control: router_id for router_id, endpoints in shard_map.routers.items()}
    return by_control[first.endpoints["control"]], by_control[second.endpoints["control"]]


async def test_a_client_gets_both_routers_topics_and_keeps_them_when_one_dies(
    routers: tuple[RouterProcess, RouterProcess, ShardMap], edge: WebSocketEdgeProcess
) -> None:
    first, second, shard_map = routers
    first_id, second_id = ids(routers)
    ours = topic_in_shard_of(first_id, shard_map, "/reliable/a")
    theirs = topic_in_shard_of(second_id, shard_map, "/reliable/b")
    plain = topic_in_shard_of(second_id, shard_map, "/plain")

    client = await open_client(edge)
    with (
        closing_client(client),
        push_socket(first.endpoints["pull"]) as to_first,
        push_socket(second.endpoints["pull"]) as to_second,
    ):
        reader = Reader(client)
        for topic in (ours, theirs, plain):
            await reader.subscribe(topic)
        metrics = await scrape(edge.address)
        assert metrics.total("switchboard_edge_router_links") == 2
        assert metrics.total("switchboard_edge_router_links_welcomed") == 2

        send(to_first, ours, b"a1", b"a2")
        send(to_second, theirs, b"b1", b"b2", b"b3")
        send(to_second, plain, b"p1")
        assert await reader.until(ours, b"a2") == [(1, b"a1"), (2, b"a2")]
        assert await reader.until(theirs, b"b3") == [(1, b"b1"), (2, b"b2"), (3, b"b3")]
        assert await reader.until(plain, b"p1") == [(1, b"p1")]

        second.kill()

        async def theirs_flows_again() -> bool:
            send(to_first, theirs, b"probe")
            try:
                await reader.until(theirs, b"probe", timeout=0.3)
            except TimeoutError:
                return False
            return True

        await eventually(theirs_flows_again, timeout=LEASE_TIME + 10)
        send(to_first, theirs, b"b-last")
        got = await reader.until(theirs, b"b-last")
        assert [frame[0] for frame in got] == list(range(1, len(got) + 1)), f"a gap or a repeat: {got}"
        assert got[:3] == [(1, b"b1"), (2, b"b2"), (3, b"b3")]

        send(to_first, ours, b"a3")
        assert (await reader.until(ours, b"a3"))[-1] == (3, b"a3")

        async def plain_flows_again() -> bool:
            send(to_first, plain, b"p-probe")
            try:
                await reader.until(plain, b"p-probe", timeout=0.3)
            except TimeoutError:
                return False
            return True

        await eventually(plain_flows_again, timeout=10)
        frames = reader.received[plain]
        restarts = [frame for frame in frames if frame[0] == "restarted"]
        assert len(restarts) == 1, f"the new owner's sequence is told once: {frames}"
        after = frames[frames.index(restarts[0]) + 1 :]
        assert [frame[0] for frame in after] == list(range(1, len(after) + 1)), frames


async def test_the_seed_router_dying_leaves_the_edge_serving_from_the_other(
    routers: tuple[RouterProcess, RouterProcess, ShardMap], edge: WebSocketEdgeProcess
) -> None:
    first, second, shard_map = routers
    first_id, _ = ids(routers)
    topic = topic_in_shard_of(first_id, shard_map, "/reliable/seed")
    client = await open_client(edge)
    with (
        closing_client(client),
        push_socket(first.endpoints["pull"]) as to_first,
        push_socket(second.endpoints["pull"]) as to_second,
    ):
        reader = Reader(client)
        await reader.subscribe(topic)
        send(to_first, topic, b"s1")
        await reader.until(topic, b"s1")
        first.kill()

        async def flows_from_the_other() -> bool:
            send(to_second, topic, b"probe")
            try:
                await reader.until(topic, b"probe", timeout=0.3)
            except TimeoutError:
                return False
            return True

        await eventually(flows_from_the_other, timeout=LEASE_TIME + 10)
        send(to_second, topic, b"s-last")
        got = await reader.until(topic, b"s-last")
        assert [frame[0] for frame in got] == list(range(1, len(got) + 1)), got
        late = await open_client(edge)
        await late.ws.close()
