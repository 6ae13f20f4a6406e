"""The admin API of a real router, acting on a real WebSocket edge and its clients."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from router.admin.client import AdminClient, AdminError, client_path, policy_path
from tests.io.admin_stack import TOKEN, Stack, Watcher, call, publishing, running_stack
from tests.io.harness import ROOT, eventually

pytestmark = pytest.mark.timeout(90)

RATE = 200.0


@pytest.fixture
def stack(monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    with running_stack(monkeypatch) as running:
        yield running


async def client_row(stack: Stack, client_id: str) -> dict[str, object] | None:
    reply = await call(stack.admin, "GET", "/api/clients")
    return next((row for row in reply["clients"] if row["client_id"] == client_id), None)


async def test_the_api_needs_the_token(stack: Stack) -> None:
    with pytest.raises(AdminError) as refused:
        await asyncio.to_thread(AdminClient(stack.router.admin_url, None).get, "/api/stats")
    assert (refused.value.status, refused.value.code) == (401, "unauthorized")
    assert (await call(stack.admin, "GET", "/api/stats"))["edges"] == 1


async def test_clients_and_edges_are_listed_with_their_edge_figures(stack: Stack) -> None:
    watcher = await Watcher.open(stack.edge.url, "/admin/list")
    try:
        row = await client_row(stack, watcher.client_id)
        assert row is not None
        assert (row["edge_id"], row["protocol"], row["subscriptions"]) == (
            stack.edge.announced["edge_id"],
            "websocket",
            ["/admin/list"],
        )
        assert str(row["remote"]).startswith("127.0.0.1:")
        assert abs(float(str(row["connected_at"])) - time.time()) < 30

        async def reported() -> bool:
            found = await client_row(stack, watcher.client_id)
            return found is not None and found["drops"] == 0 and found["queued_messages"] == 0

        await eventually(reported)
        [edge] = (await call(stack.admin, "GET", "/api/edges"))["edges"]
        assert (edge["edge_id"], edge["health"], edge["clients"], edge["topics"]) == (
            stack.edge.announced["edge_id"],
            "ok",
            1,
            1,
        )
    finally:
        await watcher.close()


async def test_kick_closes_the_client_with_4002_and_forgets_it(stack: Stack) -> None:
    watcher = await Watcher.open(stack.edge.url, "/admin/kick")
    reply = await call(stack.admin, "POST", client_path(watcher.client_id, "kick"), {"reason": "go away"})
    assert reply == {"client_id": watcher.client_id, "edge_id": stack.edge.announced["edge_id"]}
    assert await watcher.closed() == 4002
    assert {"op": "closing", "code": 4002, "reason": "go away"}.items() <= watcher.texts[-1].items()
    assert await client_row(stack, watcher.client_id) is None
    stats = await call(stack.admin, "GET", "/api/stats")
    assert (stats["clients"], stats["subscriptions"]) == (0, 0)


async def test_drain_asks_every_client_of_the_edge_to_reconnect(stack: Stack) -> None:
    watchers = [await Watcher.open(stack.edge.url, "/admin/drain") for _ in range(3)]
    edge_id = stack.edge.announced["edge_id"]
    reply = await call(stack.admin, "POST", f"/api/edges/{edge_id}/drain", {})
    assert sorted(reply["clients"]) == sorted(w.client_id for w in watchers)
    assert [await w.closed() for w in watchers] == [1001, 1001, 1001]
    [edge] = (await call(stack.admin, "GET", "/api/edges"))["edges"]
    assert (edge["edge_id"], edge["clients"]) == (edge_id, 0)
    again = await Watcher.open(stack.edge.url, "/admin/drain")
    assert await client_row(stack, again.client_id) is not None
    await again.close()


async def test_a_policy_change_reaches_the_edge_within_a_second(stack: Stack) -> None:
    topic = "/admin/policy"
    watcher = await Watcher.open(stack.edge.url, topic)
    try:
        async with publishing(stack.router.endpoints["pull"], topic, RATE):
            await eventually(lambda: len(watcher.data) >= 50)
            assert watcher.skipped == []
            policy = {"kind": "latest", "max_rate": 5.0}
            reply = await call(stack.admin, "PUT", policy_path(topic), policy)
            changed = time.monotonic()
            assert (reply["edges_told"], reply["overridden"]) == ([stack.edge.announced["edge_id"]], True)
            await eventually(lambda: watcher.skipped, timeout=5)
            assert watcher.skipped[0][0] - changed < 1.0
            await asyncio.sleep(max(0.0, changed + 2.5 - time.monotonic()))
            paced = [at for at, _ in watcher.data if changed + 0.5 < at <= changed + 2.5]
            assert 5 <= len(paced) <= 15

            async def counted() -> bool:
                topics = (await call(stack.admin, "GET", "/api/topics"))["topics"]
                row = next(t for t in topics if t["topic"] == topic)
                return bool(row["drops"] > 0 and row["drop_rate"] > 50 and row["rate"] > 50)

            await eventually(counted, timeout=5)
        row = await client_row(stack, watcher.client_id)
        assert row is not None
        assert int(str(row["drops"])) > 0
        stats = await call(stack.admin, "GET", "/api/stats")
        assert stats["edge_drops"].get("conflated", 0) > 0
    finally:
        await watcher.close()


def run_cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "switchboard", *args, "--admin", stack.router.admin_url],
        cwd=ROOT,
        env={**os.environ, "SWITCHBOARD_ADMIN_TOKEN": TOKEN},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


async def test_the_cli_shows_tables_json_and_changes_policies(stack: Stack) -> None:
    watcher = await Watcher.open(stack.edge.url, "/admin/cli")
    try:
        table = await asyncio.to_thread(run_cli, stack, "clients")
        assert table.returncode == 0, table.stderr
        header, row = table.stdout.splitlines()
        assert header.split()[:3] == ["CLIENT", "EDGE", "PROTOCOL"]
        assert row.split()[:3] == [watcher.client_id, stack.edge.announced["edge_id"], "websocket"]
        listed = await asyncio.to_thread(run_cli, stack, "edges", "--json")
        assert json.loads(listed.stdout)["edges"][0]["clients"] == 1
        changed = await asyncio.to_thread(run_cli, stack, "policy", "/admin/cli", "--set", '{"max_rate": 7}')
        assert "max_rate = 7.0" in changed.stdout
        policy = (await call(stack.admin, "GET", policy_path("/admin/cli")))["policy"]
        assert (policy["kind"], policy["max_rate"]) == ("best_effort", 7.0)
        kicked = await asyncio.to_thread(run_cli, stack, "kick", watcher.client_id)
        assert kicked.stdout.startswith(f"kicked {watcher.client_id}")
        assert await watcher.closed() == 4002
        missing = await asyncio.to_thread(run_cli, stack, "kick", watcher.client_id)
        assert (missing.returncode, missing.stderr.split(":")[1].strip()) == (1, "unknown_client")
    finally:
        await watcher.close()
