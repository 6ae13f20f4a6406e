"""The cluster as operators see it, with two real routers on a real Redis: each router's admin API
(``/api/cluster``), ``switchboard cluster``, the dashboard's cluster panel, the Prometheus series
and the ``shard.changed`` events, before and after one router is killed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.asyncio

from router.admin.client import AdminClient, policy_path
from router.core.shards import shard_of
from router.wire import PolicyUpdate, SubscribeOk
from tests.io.admin_stack import TOKEN, call
from tests.io.browser import Chromium, chromium_path
from tests.io.harness import LOOPBACK_ANY_PORT, ROOT, RouterProcess, TestEdge, eventually
from tests.io.metrics_scrape import scrape
from tests.io.redis_server import RedisServer, running_redis
from tests.io.test_cluster import LEASE_TIME, cluster_config

pytestmark = pytest.mark.timeout(90)

SHARDS = 32
"""Enough that each of two routers is preferred for some shards, whatever their random ids."""
Reply = dict[str, Any]


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    with running_redis(tmp_path) as server:
        yield server


@pytest.fixture
def config(tmp_path: Path, redis: RedisServer) -> Path:
    return cluster_config(tmp_path, redis, shards=SHARDS)


@pytest.fixture(autouse=True)
def admin_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every router started by these tests wants :data:`TOKEN`, and every command sends it."""
    monkeypatch.setenv("SWITCHBOARD_ADMIN_TOKEN", TOKEN)


@contextlib.contextmanager
def cluster_router(config: Path, *extra: str) -> Iterator[RouterProcess]:
    """A router of the cluster in ``config``, with its metrics listener (and ``extra`` arguments)."""
    router = RouterProcess(["--config", str(config), "--metrics", "127.0.0.1:0", *extra])
    router.start()
    try:
        yield router
    finally:
        router.stop()


def admin(router: RouterProcess) -> AdminClient:
    return AdminClient(router.admin_url, TOKEN)


async def cluster_of(router: RouterProcess) -> Reply:
    reply: Reply = await call(admin(router), "GET", "/api/cluster")
    return reply


def owners(reply: Reply) -> list[str | None]:
    return [shard["owner"] for shard in reply["shards"]]


def live(reply: Reply) -> list[str]:
    return [router["router_id"] for router in reply["routers"] if router["live"]]


def switchboard(*args: str, status: int = 0) -> subprocess.CompletedProcess[str]:
    """Run ``switchboard ARGS``; it must exit with ``status``."""
    done = subprocess.run(
        [sys.executable, "-m", "switchboard", *args],
        cwd=ROOT,
        env={**os.environ},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == status, done.stderr
    return done


def table_after(output: str, header: list[str]) -> list[list[str]]:
    """The rows, as columns, of the table of ``switchboard cluster``'s output that starts with
    ``header``: its lines up to the next blank one, split at runs of two spaces or more."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[: len(header)] == header)
    rows = []
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        rows.append(re.split(r"\s{2,}", line.strip()))
    return rows


def shard_table(output: str) -> dict[int, str]:
    """The owner of each shard in the shard table."""
    return {int(shard): owner for shard, owner, *_ in table_after(output, ["SHARD", "OWNER"])}


def router_table(output: str) -> dict[str, list[str]]:
    """Whether each router is live, and the shards it serves, in the router table."""
    return {router: [live, shards] for router, live, shards, *_ in table_after(output, ["ROUTER", "LIVE"])}


async def settled(first: RouterProcess, second: RouterProcess) -> tuple[Reply, Reply]:
    """Both routers' views once they agree on every shard's owner, both live and both serving, and
    each knows how long every lease has left."""
    replies: list[Reply] = []

    async def agreed() -> bool:
        replies[:] = [await cluster_of(first), await cluster_of(second)]
        one, two = replies
        ids = {one["router_id"], two["router_id"]}
        return (
            owners(one) == owners(two)
            and set(owners(one)) == ids
            and set(live(one)) == set(live(two)) == ids
            and all(shard["lease_ms_left"] is not None for r in replies for shard in r["shards"])
        )

    await eventually(agreed, timeout=15)
    return replies[0], replies[1]


# ---------------------------------------------------------------- the API, the command, the metrics


async def test_every_router_shows_the_cluster_and_the_survivor_takes_every_shard(
    config: Path, redis: RedisServer
) -> None:
    with cluster_router(config) as first, cluster_router(config) as second:
        one, two = await settled(first, second)
        first_id, second_id = one["router_id"], two["router_id"]
        assert first_id != second_id
        assert (one["cluster"], one["shard_count"], one["lease_time"]) == (True, SHARDS, LEASE_TIME)
        assert one["redis"] == {"where": redis.url, "available": True, "unavailable_rounds": 0}
        assert [shard["shard"] for shard in one["shards"]] == list(range(SHARDS))
        for shard in one["shards"]:
            assert 0 <= shard["lease_ms_left"] <= LEASE_TIME * 1000
            assert shard["token"] >= 1
        rows = {row["router_id"]: row for row in one["routers"]}
        assert rows[second_id]["endpoints"]["control"] == second.endpoints["control"]
        assert rows[second_id]["endpoints"]["xpub"] == second.endpoints["xpub"]
        served = {router_id: owners(one).count(router_id) for router_id in (first_id, second_id)}
        assert {router_id: rows[router_id]["shards_served"] for router_id in rows} == served
        assert all(served.values()), served
        for reply in (one, two):
            changes = reply["changes"]
            assert set(changes) == {"gained", "handed_over", "taken", "expired"}
            kept = changes["gained"] - changes["handed_over"] - changes["taken"] - changes["expired"]
            assert kept == served[reply["router_id"]]

        printed = await asyncio.to_thread(switchboard, "cluster", "--admin", first.admin_url)
        assert printed.returncode == 0, printed.stderr
        assert printed.stdout.startswith(f"router {first_id}: {SHARDS} shards, lease 3s, Redis ")
        assert router_table(printed.stdout) == {
            f"{first_id} (this)": ["yes", str(served[first_id])],
            second_id: ["yes", str(served[second_id])],
        }
        assert shard_table(printed.stdout) == dict(enumerate(owners(one)))
        assert "shard changes on this router: gained " in printed.stdout
        as_json = await asyncio.to_thread(switchboard, "cluster", "--json", "--admin", second.admin_url)
        assert json.loads(as_json.stdout)["router_id"] == second_id

        metrics = await scrape(first.endpoints["metrics"])
        assert metrics("switchboard_router_shards_served") == served[first_id]
        assert metrics("switchboard_router_cluster_routers") == 2
        assert metrics("switchboard_router_redis_unavailable_total") == 0
        assert ("switchboard_router_redis_unavailable_total", frozenset()) in metrics.samples
        gained_before = metrics("switchboard_router_shard_changes_total", change="gained")
        assert gained_before >= served[first_id]

        second.kill()

        async def all_first() -> bool:
            reply = await cluster_of(first)
            return set(owners(reply)) == {first_id} and live(reply) == [first_id]

        await eventually(all_first, timeout=LEASE_TIME * 2)
        after = await cluster_of(first)
        assert after["changes"]["gained"] == one["changes"]["gained"] + served[second_id]
        assert [row["shards_served"] for row in after["routers"] if row["router_id"] == first_id] == [SHARDS]
        assert all(0 < shard["lease_ms_left"] <= LEASE_TIME * 1000 for shard in after["shards"])
        assert all(shard["token"] >= 1 for shard in after["shards"])

        printed = await asyncio.to_thread(switchboard, "cluster", "--admin", first.admin_url)
        assert set(shard_table(printed.stdout).values()) == {first_id}
        metrics = await scrape(first.endpoints["metrics"])
        assert metrics("switchboard_router_shards_served") == SHARDS
        assert metrics("switchboard_router_cluster_routers") == 1
        gained = metrics("switchboard_router_shard_changes_total", change="gained")
        assert gained == gained_before + served[second_id]


async def test_a_router_outside_cluster_mode_says_so_and_has_no_cluster_series() -> None:
    router = RouterProcess(["--metrics", "127.0.0.1:0"])
    router.start()
    try:
        assert await cluster_of(router) == {"cluster": False}
        printed = await asyncio.to_thread(switchboard, "cluster", "--admin", router.admin_url, status=1)
        assert printed.stdout == ""
        assert printed.stderr == (
            f"switchboard cluster: the router at {router.admin_url} is not in cluster mode "
            "([cluster] url is not set)\n"
        )
        metrics = await scrape(router.endpoints["metrics"])
        names = {name for name, _ in metrics.samples}
        assert "switchboard_router_topics" in names
        assert not {name for name in names if "shard" in name or "cluster" in name or "redis" in name}
    finally:
        router.stop()


async def test_a_router_cut_off_from_redis_shows_it_and_its_shards_degraded(
    config: Path, redis: RedisServer
) -> None:
    with cluster_router(config) as router:
        await eventually(lambda: _all_owned_by_one(router), timeout=10)
        redis.freeze()
        try:

            async def degraded() -> bool:
                reply = await cluster_of(router)
                return not reply["redis"]["available"] and all(s["degraded"] for s in reply["shards"])

            await eventually(degraded, timeout=LEASE_TIME * 3)
            reply = await cluster_of(router)
            assert reply["redis"]["unavailable_rounds"] > 0
            assert reply["changes"]["expired"] == SHARDS
            assert [row["shards_served"] for row in reply["routers"]] == [0]
            metrics = await scrape(router.endpoints["metrics"])
            assert metrics("switchboard_router_redis_unavailable_total") > 0
            assert metrics("switchboard_router_shards_degraded") == SHARDS
            assert metrics("switchboard_router_shards_served") == 0
            printed = await asyncio.to_thread(switchboard, "cluster", "--admin", router.admin_url)
            assert f"Redis {redis.url} NOT REACHABLE at the last round" in printed.stdout
            assert all(
                row[-1].endswith("degraded") for row in table_after(printed.stdout, ["SHARD", "OWNER"])
            )
        finally:
            redis.thaw()

        async def served_again() -> bool:
            reply = await cluster_of(router)
            return reply["redis"]["available"] and not any(s["degraded"] for s in reply["shards"])

        await eventually(served_again, timeout=LEASE_TIME * 3)
        reply = await cluster_of(router)
        assert set(owners(reply)) == {reply["router_id"]}
        assert reply["changes"]["gained"] == 2 * SHARDS
        metrics = await scrape(router.endpoints["metrics"])
        assert metrics("switchboard_router_shards_degraded") == 0
        assert metrics("switchboard_router_shards_served") == SHARDS


# ---------------------------------------------------------------- events


class ShardEvents:
    """A SUB socket on a router's events, keeping ``shard.changed`` and ``edge.up`` events."""

    def __init__(self, endpoint: str) -> None:
        self.context = zmq.asyncio.Context()
        self.sub = self.context.socket(zmq.SUB)
        self.sub.linger = 0
        self.sub.subscribe(b"shard.")
        self.sub.subscribe(b"edge.up")
        self.sub.connect(endpoint)
        self.shards: list[Reply] = []

    async def next(self, timeout: float) -> Reply:
        async with asyncio.timeout(timeout):
            name, body = await self.sub.recv_multipart()
        event: Reply = json.loads(body)
        assert event["event"] == name.decode()
        if event["event"] == "shard.changed":
            self.shards.append(event)
        return event

    async def heard(self, endpoints: dict[str, str]) -> None:
        """The slow joiner: say hello as edges until an ``edge.up`` comes through."""
        async with asyncio.timeout(10):
            while True:
                async with TestEdge(endpoints):
                    with contextlib.suppress(TimeoutError):
                        while (await self.next(0.3))["event"] != "edge.up":
                            pass
                        return

    async def shard_changes(self, count: int, timeout: float) -> list[Reply]:
        """The next ``count`` shard events (after those already kept)."""
        start = len(self.shards)
        async with asyncio.timeout(timeout):
            while len(self.shards) < start + count:
                await self.next(timeout)
        return self.shards[start:]

    def close(self) -> None:
        self.sub.close()
        self.context.term()


@contextlib.asynccontextmanager
async def shard_events(router: RouterProcess) -> AsyncIterator[ShardEvents]:
    events = ShardEvents(router.endpoints["events"])
    try:
        await events.heard(router.endpoints)
        yield events
    finally:
        events.close()


async def test_shards_handed_over_and_taken_back_are_shard_changed_events(config: Path) -> None:
    with cluster_router(config, "--events", LOOPBACK_ANY_PORT) as first:
        await eventually(lambda: _all_owned_by_one(first), timeout=10)
        async with shard_events(first) as events:
            with cluster_router(config) as second:
                await eventually(lambda: _split(first), timeout=15)
                reply = await cluster_of(first)
                moved = SHARDS - owners(reply).count(reply["router_id"])
                handed = await events.shard_changes(moved, timeout=5)
                assert {event["reason"] for event in handed} == {"handed_over"}
                second_id = next(r for r in live(reply) if r != reply["router_id"])
                theirs = {i for i, owner in enumerate(owners(reply)) if owner == second_id}
                assert {event["shard"] for event in handed} == theirs
                tokens = {event["shard"]: event["token"] for event in handed}
                second.kill()
                gained = await events.shard_changes(moved, timeout=LEASE_TIME * 2)
        assert {event["reason"] for event in gained} == {"gained"}
        assert {event["shard"] for event in gained} == theirs
        for event in gained:
            assert event["token"] > tokens[event["shard"]], "a new lease gets a higher fencing token"
            assert isinstance(event["time"], float)


async def _all_owned_by_one(router: RouterProcess) -> bool:
    reply = await cluster_of(router)
    return set(owners(reply)) == {reply["router_id"]}


async def _split(router: RouterProcess) -> bool:
    reply = await cluster_of(router)
    return len(set(owners(reply))) == 2 and None not in owners(reply) and len(live(reply)) == 2


# ---------------------------------------------------------------- the dashboard


@pytest.mark.skipif(chromium_path() is None, reason="chromium is not installed")
async def test_the_dashboard_shows_the_cluster_panel_only_in_cluster_mode(config: Path) -> None:
    with cluster_router(config) as first, cluster_router(config) as second:
        one, _ = await settled(first, second)
        async with Chromium() as browser:
            await browser.goto(f"{first.admin_url}/#token={TOKEN}")
            await browser.wait_for("document.getElementById('status').textContent === 'live'")
            await browser.wait_for("!document.getElementById('cluster').hidden")
            shown = "document.querySelectorAll('#cluster-shards tbody tr').length"
            await browser.wait_for(f"{shown} === {SHARDS}")
            for router in one["routers"]:
                served = f'tr[data-router="{router["router_id"]}"] td.served'
                shown_served = f"document.querySelector('{served}')?.textContent"
                await browser.wait_for(f"{shown_served} === '{router['shards_served']}'")
            cells = "[...document.querySelectorAll('#cluster-shards td.owner')].map((td) => td.textContent)"
            ids = {router["router_id"] for router in one["routers"]}
            assert set(await browser.evaluate(cells)) == ids
    alone = RouterProcess()
    alone.start()
    try:
        async with Chromium() as browser:
            await browser.goto(f"{alone.admin_url}/#token={TOKEN}")
            await browser.wait_for("document.getElementById('status').textContent === 'live'")
            await browser.wait_for("Number(document.getElementById('rates-chart').dataset.samples) >= 2")
            assert await browser.evaluate("document.getElementById('cluster').hidden") is True
    finally:
        alone.stop()


# ---------------------------------------------------------------- policies set at run time


async def test_a_policy_set_on_one_router_reaches_every_router_and_their_edges(config: Path) -> None:
    """Set on the first router, the policy reaches the second and an edge whose client watches the
    topic there; a router started later has it too; the last one set, on any router, wins."""
    with cluster_router(config) as first, cluster_router(config) as second:
        _, view = await settled(first, second)
        second_id = view["router_id"]
        topic = next(f"/policy/t{n}" for n in range(10_000) if owners(view)[policy_shard(n)] == second_id)
        edge = TestEdge(second.endpoints)
        updates: list[PolicyUpdate] = []
        async with edge:
            edge.link.on_message = lambda message: (
                updates.append(message) if isinstance(message, PolicyUpdate) else None
            )
            await edge.register("c1")
            assert isinstance(await edge.subscribe("c1", topic), SubscribeOk)
            latest = {"kind": "latest", "max_rate": 5.0}
            await call(admin(first), "PUT", policy_path(topic), latest)
            await eventually(lambda: policy_of(second, topic, latest), timeout=5)
            await eventually(lambda: bool(updates), timeout=5)
            assert (updates[-1].topic, updates[-1].policy.kind, updates[-1].policy.max_rate) == (
                topic,
                "latest",
                5.0,
            )

            with cluster_router(config) as third:
                await eventually(lambda: policy_of(third, topic, latest), timeout=10)
                capped = {"kind": "best_effort", "max_rate": 2.0}
                await call(admin(third), "PUT", policy_path(topic), capped)
                for router in (first, second):
                    await eventually(lambda router=router: policy_of(router, topic, capped), timeout=5)


def policy_shard(n: int) -> int:
    return shard_of(f"/policy/t{n}".encode(), SHARDS)


async def policy_of(router: RouterProcess, topic: str, expected: dict[str, object]) -> bool:
    """Whether ``router`` applies a runtime policy with the ``expected`` fields to ``topic``."""
    reply = await call(admin(router), "GET", policy_path(topic))
    return bool(reply["overridden"]) and all(reply["policy"][key] == value for key, value in expected.items())
