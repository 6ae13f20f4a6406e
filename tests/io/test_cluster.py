"""Cluster mode with real routers on a real Redis: shards split between routers, each edge told who
serves what, requests for another router's shard refused, and a killed router's shards taken over
by the survivor before its lease would have run out."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import zmq
from redis import Redis

from router.cluster.producer import ClusterProducer
from router.core.errors import ErrorCode
from router.core.shards import shard_of
from router.wire import (
    Error,
    Recover,
    Recovered,
    RouterMessage,
    ShardMap,
    Stats,
    StatsRequest,
    Subscribe,
    SubscribeOk,
)
from tests.io.harness import RouterProcess, TestEdge, eventually, push_socket, refused_start, running
from tests.io.metrics_scrape import scrape
from tests.io.redis_server import RedisServer, running_redis

SHARDS = 32
LEASE_TIME = 3.0
"""Longer than any takeover the tests wait for: a dead router's shards move when its Redis
connection closes, not when its lease runs out."""


def cluster_config(
    directory: Path,
    redis: RedisServer,
    shards: int = SHARDS,
    lease_time: float = LEASE_TIME,
    park_time: float = 5.0,
) -> Path:
    path = directory / f"cluster-{shards}-{lease_time}-{park_time}.toml"
    path.write_text(
        f'[cluster]\nurl = "{redis.url}"\nshards = {shards}\nlease_time = {lease_time}\n'
        f"tick = 0.05\ntimeout = 0.2\npark_time = {park_time}\n"
        '[[topics.declare]]\npattern = "/reliable/**"\n[topics.declare.policy]\nkind = "reliable"\n',
        encoding="utf-8",
    )
    return path


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    with running_redis(tmp_path) as server:
        yield server


@contextlib.contextmanager
def cluster_router(config: Path) -> Iterator[RouterProcess]:
    router = RouterProcess(["--config", str(config)])
    router.start()
    try:
        yield router
    finally:
        router.stop()


class MapWatcher:
    """The shard maps an edge link receives, newest last."""

    def __init__(self, edge: TestEdge) -> None:
        self.maps: list[ShardMap] = []
        edge.link.on_message = self._on_message

    def _on_message(self, message: RouterMessage) -> None:
        if isinstance(message, ShardMap):
            self.maps.append(message)

    @property
    def newest(self) -> ShardMap | None:
        return self.maps[-1] if self.maps else None

    def owners(self) -> set[str]:
        newest = self.newest
        return set() if newest is None else {owner for owner, _ in newest.owners}


def stream_entries(stream: Redis, key: str) -> list[tuple[bytes, bytes]]:
    """Each entry of a history stream as ``(id, payload)``."""
    entries: list[tuple[bytes, dict[bytes, bytes]]] = stream.xrange(key)  # type: ignore[assignment]
    return [(entry_id, fields[b"p"]) for entry_id, fields in entries]


async def both_serving(maps: MapWatcher) -> ShardMap:
    """The newest map, once both routers serve shards in it and every shard has an owner."""
    await eventually(lambda: len(maps.owners()) == 2 and "" not in maps.owners(), timeout=10)
    assert maps.newest is not None
    return maps.newest


def topic_in_shard_of(router_id: str, shard_map: ShardMap, prefix: str = "/cluster") -> str:
    """A topic whose shard ``router_id`` serves in ``shard_map``."""
    for n in range(10_000):
        topic = f"{prefix}/t{n}"
        if shard_map.owners[shard_of(topic.encode(), shard_map.shards)][0] == router_id:
            return topic
    raise AssertionError(f"no topic of {router_id}")


@dataclass
class MeteredPair:
    """Two routers of one cluster with their metrics listeners, a test edge on each, and the shard
    map once both serve."""

    first: RouterProcess
    second: RouterProcess
    edge: TestEdge
    other_edge: TestEdge
    maps: MapWatcher
    shard_map: ShardMap


@contextlib.asynccontextmanager
async def metered_pair(config: Path) -> AsyncIterator[MeteredPair]:
    metrics = ["--config", str(config), "--metrics", "127.0.0.1:0"]
    with running(RouterProcess(metrics)) as first, running(RouterProcess(metrics)) as second:
        edge, other_edge = TestEdge(first.endpoints), TestEdge(second.endpoints)
        maps = MapWatcher(edge)
        async with edge, other_edge:
            yield MeteredPair(first, second, edge, other_edge, maps, await both_serving(maps))


async def test_two_routers_split_the_shards_and_a_dead_ones_move_at_once(
    tmp_path: Path, redis: RedisServer
) -> None:
    config = cluster_config(tmp_path, redis)
    with cluster_router(config) as first, cluster_router(config) as second:
        edge, other_edge = TestEdge(first.endpoints), TestEdge(second.endpoints)
        maps, other_maps = MapWatcher(edge), MapWatcher(other_edge)
        async with edge, other_edge:
            shard_map = await both_serving(maps)
            assert shard_map.shards == SHARDS
            assert len(shard_map.routers) == 2
            first_id, second_id = edge.link.router_id, other_edge.link.router_id
            assert set(shard_map.routers) == {first_id, second_id}
            assert shard_map.routers[second_id].control == second.endpoints["control"]
            await eventually(lambda: other_maps.newest == maps.newest, timeout=5)

            theirs = topic_in_shard_of(second_id, shard_map)
            await edge.register("c1")
            refused = await edge.subscribe("c1", theirs)
            assert isinstance(refused, Error)
            assert refused.code == ErrorCode.NOT_OWNER
            await other_edge.register("c2")
            granted = await other_edge.subscribe("c2", theirs)
            assert isinstance(granted, SubscribeOk), granted
            with push_socket(second.endpoints["pull"]) as push:
                push.send_multipart([theirs.encode(), b"from the owner"])
                meta, payload = await other_edge.next_message()
            assert (meta.topic, payload) == (theirs.encode(), b"from the owner")
            with push_socket(first.endpoints["pull"]) as push:
                push.send_multipart([theirs.encode(), b"\x81\xa1k\xa1v", b"passed on"])
                meta, payload = await other_edge.next_message()
            assert (meta.topic, meta.header, payload) == (theirs.encode(), b"\x81\xa1k\xa1v", b"passed on")

            killed_at = time.monotonic()
            second.kill()
            await eventually(lambda: maps.owners() == {first_id}, timeout=LEASE_TIME)
            took = time.monotonic() - killed_at
            assert took < LEASE_TIME, f"the shards moved after {took:.2f} s, at the lease's end"
            newest = maps.newest
            assert newest is not None
            assert set(newest.routers) == {first_id}
            granted = await edge.subscribe("c1", theirs)
            assert isinstance(granted, SubscribeOk), granted
            with push_socket(first.endpoints["pull"]) as push:
                push.send_multipart([theirs.encode(), b"from the new owner"])
                meta, payload = await edge.next_message()
            assert (meta.topic, payload) == (theirs.encode(), b"from the new owner")


def test_a_router_with_another_shard_count_does_not_join(tmp_path: Path, redis: RedisServer) -> None:
    with cluster_router(cluster_config(tmp_path, redis)):
        line = refused_start("router", "--config", str(cluster_config(tmp_path, redis, shards=SHARDS * 2)))
    assert line.startswith("switchboard router: [cluster] shards = 64, but this cluster"), line


def test_a_router_that_cannot_reach_redis_says_so(tmp_path: Path, redis: RedisServer) -> None:
    config = cluster_config(tmp_path, redis)
    redis.stop()
    line = refused_start("router", "--config", str(config), *free_endpoints())
    assert "[cluster] cannot reach Redis at redis://127.0.0.1:" in line, line
    assert line.endswith("start Redis or fix [cluster] url"), line


def free_endpoints() -> list[str]:
    return [arg for name in ("pull", "xsub", "xpub", "control") for arg in (f"--{name}", "tcp://127.0.0.1:0")]


async def test_a_reliable_topic_continues_on_the_next_owner_with_its_history(
    tmp_path: Path, redis: RedisServer
) -> None:
    config = cluster_config(tmp_path, redis)
    with cluster_router(config) as first, cluster_router(config) as second:
        edge, other_edge = TestEdge(first.endpoints), TestEdge(second.endpoints)
        maps = MapWatcher(edge)
        async with edge, other_edge:
            shard_map = await both_serving(maps)
            topic = topic_in_shard_of(edge.link.router_id, shard_map, "/reliable")
            await edge.register("c1")
            granted = await edge.subscribe("c1", topic)
            assert isinstance(granted, SubscribeOk), granted
            with push_socket(first.endpoints["pull"]) as push:
                for n in range(1, 31):
                    push.send_multipart([topic.encode(), b"m%d" % n])
                received = [await edge.next_message() for _ in range(30)]
            epoch = received[0][0].epoch
            assert [(m.epoch, m.offset, p) for m, p in received] == [
                (epoch, n, b"m%d" % n) for n in range(1, 31)
            ]

            first.kill()
            other_id = other_edge.link.router_id
            other_maps = MapWatcher(other_edge)
            await eventually(lambda: other_maps.owners() == {other_id}, timeout=LEASE_TIME)
            await other_edge.register("c2")
            resumed = await other_edge.request(
                Subscribe(
                    request_id=other_edge.link.next_request_id(),
                    client_id="c2",
                    topic=topic,
                    resume_epoch=epoch,
                    resume_offset=20,
                )
            )
            assert isinstance(resumed, SubscribeOk), resumed
            assert (resumed.epoch, resumed.offset, resumed.resume, resumed.resume_from) == (
                epoch,
                30,
                "ok",
                20,
            )
            other_edge.link.watch(topic)
            recovered = await other_edge.request(
                Recover(
                    request_id=other_edge.link.next_request_id(), topic=topic, epoch=epoch, from_offset=20
                )
            )
            assert isinstance(recovered, Recovered), recovered
            assert [(o, p) for o, _, p in recovered.messages] == [(n, b"m%d" % n) for n in range(21, 31)]
            with push_socket(second.endpoints["pull"]) as push:
                push.send_multipart([topic.encode(), b"after"])
                meta, payload = await other_edge.next_message()
            assert (meta.epoch, meta.offset, payload) == (epoch, 31, b"after")


async def test_push_messages_for_a_dead_owners_shard_wait_for_the_next_owner_none_lost(
    tmp_path: Path, redis: RedisServer
) -> None:
    """A PUSH producer connected to one router, publishing a reliable topic of the other router's
    shard: the other is killed while Redis is frozen, so for a while the shard's owner takes nothing
    and no router can take the shard over. The messages of that window are parked, then written by
    the next owner after those the dead one wrote, every offset in order."""
    async with metered_pair(cluster_config(tmp_path, redis, park_time=20.0)) as pair:
        first, second, edge, maps = pair.first, pair.second, pair.edge, pair.maps
        topic = topic_in_shard_of(pair.other_edge.link.router_id, pair.shard_map, "/reliable/parked")
        key = f"switchboard:history:{topic}"
        stream = Redis.from_url(redis.url)
        with push_socket(first.endpoints["pull"]) as push:
            for n in range(1, 21):
                push.send_multipart([topic.encode(), b"m%d" % n])
            await eventually(lambda: len(stream_entries(stream, key)) == 20, timeout=5)

            redis.freeze()
            second.kill()
            await asyncio.sleep(0.3)
            for n in range(21, 61):
                push.send_multipart([topic.encode(), b"m%d" % n])
                await asyncio.sleep(0.01)
            metrics_address = first.endpoints["metrics"].removeprefix("http://")
            await eventually(
                async_scraped_at_least(metrics_address, "switchboard_router_parked_messages", 40),
                timeout=5,
            )
            redis.thaw()
            first_id = edge.link.router_id
            await eventually(lambda: maps.owners() == {first_id}, timeout=LEASE_TIME * 2)
            await eventually(lambda: len(stream_entries(stream, key)) == 60, timeout=5)
        entries = stream_entries(stream, key)
        stream.close()
        assert entries == [(b"%d-0" % n, b"m%d" % n) for n in range(1, 61)]
        scraped = await scrape(metrics_address)
        assert scraped.total("switchboard_router_parked_total") >= 40
        assert scraped("switchboard_router_parked_messages") == 0
        for reason in ("no_owner", "forward_full", "not_owner"):
            assert scraped.total("switchboard_router_drops_total", reason=reason) == 0, reason


def async_scraped_at_least(address: str, name: str, least: float) -> Callable[[], Awaitable[bool]]:
    async def reached() -> bool:
        return (await scrape(address))(name) >= least

    return reached


async def test_a_router_paused_past_its_lease_writes_nothing_after_another_took_over(
    tmp_path: Path, redis: RedisServer
) -> None:
    """SIGSTOP the owner of a reliable topic until another router holds the shard, send it messages
    meanwhile, SIGCONT it: it writes none of them under its old lease. Each is either dropped and
    counted, or passed on to the new owner, which writes it after its own."""
    config = cluster_config(tmp_path, redis, lease_time=1.0)
    with cluster_router(config) as first, cluster_router(config) as second:
        edge, other_edge = TestEdge(first.endpoints), TestEdge(second.endpoints)
        maps, other_maps = MapWatcher(edge), MapWatcher(other_edge)
        async with edge, other_edge:
            shard_map = await both_serving(maps)
            topic = topic_in_shard_of(edge.link.router_id, shard_map, "/reliable")
            stream = Redis.from_url(redis.url)
            key = f"switchboard:history:{topic}"
            with push_socket(first.endpoints["pull"]) as push:
                for n in range(1, 6):
                    push.send_multipart([topic.encode(), b"before %d" % n])
                await eventually(lambda: stream.xlen(key) == 5, timeout=5)
                os.kill(first.pid, signal.SIGSTOP)
                try:
                    other_id = other_edge.link.router_id
                    await eventually(lambda: other_maps.owners() == {other_id}, timeout=5)
                    for n in range(1, 6):
                        push.send_multipart([topic.encode(), b"while paused %d" % n])
                    with push_socket(second.endpoints["pull"]) as other_push:
                        for n in range(6, 9):
                            other_push.send_multipart([topic.encode(), b"new owner %d" % n])
                        await eventually(lambda: stream.xlen(key) == 8, timeout=5)
                finally:
                    os.kill(first.pid, signal.SIGCONT)

                async def accounted_for() -> bool:
                    try:
                        reply = await edge.request(StatsRequest(request_id=edge.link.next_request_id()))
                    except ConnectionError:
                        return False
                    if not isinstance(reply, Stats):
                        return False
                    drops = reply.stats["drops"]
                    assert isinstance(drops, dict)
                    refused = int(drops.get("not_owner", 0)) + int(drops.get("fenced", 0))
                    return refused + stream.xlen(key) - 8 == 5

                await eventually(accounted_for, timeout=10)
            entries = stream_entries(stream, key)
            written = [(f"{n}-0".encode(), b"before %d" % n) for n in range(1, 6)]
            written += [(f"{n}-0".encode(), b"new owner %d" % n) for n in range(6, 9)]
            assert entries[:8] == written
            passed_on = [payload for _, payload in entries[8:]]
            assert all(payload.startswith(b"while paused") for payload in passed_on), passed_on
            stream.close()


async def test_redis_killed_and_restarted_under_load(tmp_path: Path, redis: RedisServer) -> None:
    """While Redis is down, best_effort messages keep flowing from memory and reliable ones wait;
    once it is back, the reliable ones are written and delivered, in order, none lost."""
    config = cluster_config(tmp_path, redis, lease_time=1.0)
    with cluster_router(config) as first, cluster_router(config) as second:
        edge = TestEdge(first.endpoints)
        maps = MapWatcher(edge)
        async with edge:
            shard_map = await both_serving(maps)
            router_id = edge.link.router_id
            telemetry = topic_in_shard_of(router_id, shard_map, "/telemetry")
            reliable = topic_in_shard_of(router_id, shard_map, "/reliable")
            await edge.register("c1")
            for topic in (telemetry, reliable):
                assert isinstance(await edge.subscribe("c1", topic), SubscribeOk)
            received: dict[bytes, list[int]] = {telemetry.encode(): [], reliable.encode(): []}

            def take() -> None:
                for meta, _ in edge.drain():
                    received[meta.topic].append(meta.offset)

            with push_socket(first.endpoints["pull"]) as push:

                async def send(count: int) -> None:
                    for _ in range(count):
                        push.send_multipart([telemetry.encode(), b"t"])
                        push.send_multipart([reliable.encode(), b"r"])
                        await asyncio.sleep(0.005)

                await send(100)
                redis.kill()
                await send(300)
                take()
                during = len(received[telemetry.encode()])
                await send(100)
                redis.restart()
                await send(100)

                def all_reliable_in() -> bool:
                    take()
                    return len(received[reliable.encode()]) == 600

                await eventually(all_reliable_in, timeout=10)
            take()
            assert len(received[telemetry.encode()]) > during, "best_effort stopped while Redis was down"
            assert received[reliable.encode()] == list(range(1, 601))
            assert first.alive
            assert second.alive


async def test_a_pub_producer_connected_to_every_router_reaches_only_the_owner(
    tmp_path: Path, redis: RedisServer
) -> None:
    config = cluster_config(tmp_path, redis)
    with cluster_router(config) as first, cluster_router(config) as second:
        edge, other_edge = TestEdge(first.endpoints), TestEdge(second.endpoints)
        maps = MapWatcher(edge)
        async with edge, other_edge:
            shard_map = await both_serving(maps)
            topic = topic_in_shard_of(other_edge.link.router_id, shard_map, "/pub")
            await other_edge.register("c1")
            assert isinstance(await other_edge.subscribe("c1", topic), SubscribeOk)
            context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
            with context.socket(zmq.PUB) as pub:
                pub.linger = 0
                for router in (first, second):
                    pub.connect(router.endpoints["xsub"])

                async def arrived() -> bool:
                    pub.send_multipart([topic.encode(), b"probe"])
                    return bool(other_edge.drain())

                await eventually(arrived, timeout=10)
                for n in range(20):
                    pub.send_multipart([topic.encode(), b"%d" % n])
                payloads: list[bytes] = []
                while b"19" not in payloads:
                    payloads.append((await other_edge.next_message())[1])
            assert [p for p in payloads if p != b"probe"] == [b"%d" % n for n in range(20)]
            assert (await edge.stats())["messages_in"] == 0, "a router asked upstream for a shard not its own"


async def test_the_cluster_producer_sends_each_topic_straight_to_its_owner_and_past_a_dead_one(
    tmp_path: Path, redis: RedisServer
) -> None:
    async with metered_pair(cluster_config(tmp_path, redis)) as pair:
        first, second, edge, other_edge, maps = pair.first, pair.second, pair.edge, pair.other_edge, pair.maps
        shard_map = pair.shard_map
        ours = topic_in_shard_of(edge.link.router_id, shard_map, "/direct")
        theirs = topic_in_shard_of(other_edge.link.router_id, shard_map, "/direct")
        for link, topic in ((edge, ours), (other_edge, theirs)):
            await link.register("c")
            assert isinstance(await link.subscribe("c", topic), SubscribeOk)
        with ClusterProducer(redis.url) as producer:
            assert producer.owner_endpoint(ours) == first.endpoints["pull"]
            assert producer.owner_endpoint(theirs) == second.endpoints["pull"]
            for n in range(10):
                producer.publish(ours, b"%d" % n)
                producer.publish(theirs, b"%d" % n)
            sent = [b"%d" % n for n in range(10)]
            for link in (edge, other_edge):
                assert [(await link.next_message())[1] for _ in range(10)] == sent
            for router in (first, second):
                scraped = await scrape(router.endpoints["metrics"].removeprefix("http://"))
                assert scraped.total("switchboard_router_forwarded_total") == 0

            second.kill()
            first_id = edge.link.router_id
            await eventually(lambda: maps.owners() == {first_id}, timeout=LEASE_TIME)
            assert isinstance(await edge.subscribe("c", theirs), SubscribeOk)

            def publish_all() -> None:
                for n in range(10):
                    producer.publish(theirs, b"after %d" % n)

            await asyncio.wait_for(asyncio.to_thread(publish_all), timeout=10)
            after = [(await edge.next_message())[1] for _ in range(10)]
        assert after == [b"after %d" % n for n in range(10)], "a dead owner held the producer up"


def test_a_router_bound_to_a_wildcard_must_say_where_it_is_reached(
    tmp_path: Path, redis: RedisServer
) -> None:
    endpoints = free_endpoints()
    endpoints[endpoints.index("--pull") + 1] = "tcp://0.0.0.0:0"
    line = refused_start("router", "--config", str(cluster_config(tmp_path, redis)), *endpoints)
    assert line.startswith(
        "switchboard router: [cluster] advertise is not set, and the router binds tcp://0.0.0.0:"
    )
