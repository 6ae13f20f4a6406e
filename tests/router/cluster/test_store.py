"""ClusterStore against a real redis-server: leases and fencing, history, announcements, faults."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import redis.exceptions
from redis.asyncio import Redis

from router.cluster import Append, AppendResult, ClusterStore, Holder, StoreUnavailable
from router.cluster.store import redacted
from router.core.history import HistoryEntry
from tests.io.redis_server import RedisServer, free_port, running_sentinel
from tests.router.cluster.conftest import OpenStore

LONG = 60_000
SHORT = 50


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    """Wait until ``check()`` is true (a TTL ran out, a connection closed), failing after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "the condition did not come true in time"
        await asyncio.sleep(0.01)


async def lease_expired(store: ClusterStore, shard: int) -> None:
    async def free() -> bool:
        return (await store.holders(shard + 1))[shard] is None

    await eventually(free)


def entries(*offsets: int, tag: bytes = b"") -> list[HistoryEntry]:
    """Entries with a header on odd offsets only, and payloads that are not text."""
    return [HistoryEntry(n, b"h%d" % n if n % 2 else b"", tag + b"\x00\xff%d" % n) for n in offsets]


# ----------------------------------------------------------------------------------------------
# Shards and leases


async def test_the_first_shard_count_stays(open_store: OpenStore) -> None:
    a, b = await open_store("a"), await open_store("b")
    assert await a.check_shards(8) == 8
    assert await b.check_shards(16) == 8
    assert await b.check_shards(8) == 8


async def test_a_held_lease_is_refused_to_another(open_store: OpenStore) -> None:
    a, b = await open_store("a"), await open_store("b")
    token = await a.acquire(3, "a", LONG)
    assert token is not None
    assert await b.acquire(3, "b", LONG) is None
    assert await a.acquire(3, "a", LONG) is None
    assert await b.holders(5) == [None, None, None, Holder("a", token), None]


async def test_an_expired_lease_goes_to_another_with_a_higher_token(open_store: OpenStore) -> None:
    a, b = await open_store("a"), await open_store("b")
    first = await a.acquire(0, "a", SHORT)
    assert first is not None
    await lease_expired(b, 0)
    second = await b.acquire(0, "b", LONG)
    assert second is not None
    assert second > first
    assert await a.holders(1) == [Holder("b", second)]


async def test_renew_extends_only_the_leases_still_held(open_store: OpenStore, raw: Redis) -> None:
    a, b = await open_store("a"), await open_store("b")
    lost = await a.acquire(0, "a", SHORT)
    kept = await a.acquire(1, "a", 500)
    assert lost is not None
    assert kept is not None
    await lease_expired(b, 0)
    taken = await b.acquire(0, "b", LONG)
    assert taken is not None

    renewed = await a.renew("a", [(0, lost), (1, kept), (2, 1), (1, kept + 1)], LONG)
    assert renewed == [False, True, False, False]
    assert await raw.pttl("switchboard:lease:1") > 10_000
    assert await b.holders(2) == [Holder("b", taken), Holder("a", kept)]
    assert await b.renew("b", [(0, taken)], LONG) == [True]
    assert await a.renew("a", [], LONG) == []


async def test_replacing_takes_over_only_from_exactly_that_holder(open_store: OpenStore) -> None:
    a, b, c = await open_store("a"), await open_store("b"), await open_store("c")
    first = await a.acquire(2, "a", LONG)
    assert first is not None
    assert await b.acquire(2, "b", LONG, replacing=Holder("a", first + 1)) is None
    assert await b.acquire(2, "b", LONG, replacing=Holder("c", first)) is None
    assert await b.holders(3) == [None, None, Holder("a", first)]

    second = await b.acquire(2, "b", LONG, replacing=Holder("a", first))
    assert second is not None
    assert second > first
    assert await c.acquire(2, "c", LONG, replacing=Holder("a", first)) is None
    assert await c.holders(3) == [None, None, Holder("b", second)]


async def test_replacing_a_holder_whose_lease_is_gone_still_acquires(open_store: OpenStore) -> None:
    a = await open_store("a")
    assert await a.acquire(0, "a", LONG, replacing=Holder("z", 7)) is not None


async def test_only_the_holder_releases(open_store: OpenStore) -> None:
    a, b = await open_store("a"), await open_store("b")
    token = await a.acquire(0, "a", LONG)
    assert token is not None
    assert not await b.release(0, "b", token)
    assert not await a.release(0, "a", token + 1)
    assert await b.holders(1) == [Holder("a", token)]
    assert await a.release(0, "a", token)
    assert await b.holders(1) == [None]
    assert not await a.release(0, "a", token)
    taken = await b.acquire(0, "b", LONG)
    assert taken is not None
    assert taken > token


async def test_no_shards_no_holders(open_store: OpenStore) -> None:
    assert await (await open_store("a")).holders(0) == []


async def test_lease_ttls_name_each_holder_with_the_time_its_lease_has_left(
    open_store: OpenStore, raw: Redis
) -> None:
    a, b = await open_store("a"), await open_store("b")
    assert await a.lease_ttls(0) == []
    token_a = await a.acquire(0, "a", LONG)
    token_b = await b.acquire(2, "b", 5_000)
    assert token_a is not None
    assert token_b is not None
    await raw.set("switchboard:lease:3", "c 9")
    first, free, third, unlimited = await b.lease_ttls(4)
    assert (free, unlimited) == (None, None), "a free shard, and a lease with no time to live"
    assert first is not None
    assert third is not None
    assert (first[0], third[0]) == (Holder("a", token_a), Holder("b", token_b))
    assert LONG - 1_000 < first[1] <= LONG
    assert 4_000 < third[1] <= 5_000


# ----------------------------------------------------------------------------------------------
# History


async def test_append_with_the_lease_is_read_back_after_an_exclusive_offset(open_store: OpenStore) -> None:
    a = await open_store("a")
    token = await a.acquire(0, "a", LONG)
    assert token is not None
    written = entries(1, 2, 3, 4, 5)
    assert await a.append(0, "a", token, [Append("/t", written, 100)]) == AppendResult(True, 0)

    assert await a.read("/t", 0, 100) == written
    assert await a.read("/t", 2, 100) == written[2:]
    assert await a.read("/t", 2, 2) == written[2:4]
    assert await a.read("/t", 5, 100) == []
    assert await a.read("/t", 0, 0) == []
    assert await a.last_offset("/t") == 5
    assert await a.last_offset("/nothing") == 0
    assert await a.read("/nothing", 0, 10) == []


async def test_append_with_an_old_token_after_a_takeover_writes_nothing(open_store: OpenStore) -> None:
    a, b = await open_store("a"), await open_store("b")
    old = await a.acquire(0, "a", SHORT)
    assert old is not None
    await lease_expired(b, 0)
    new = await b.acquire(0, "b", LONG)
    assert new is not None

    batch = [Append("/x", entries(1, 2), 100), Append("/y", entries(1), 100)]
    assert await a.append(0, "a", old, batch) == AppendResult(False, 0)
    assert await b.last_offset("/x") == 0
    assert await b.last_offset("/y") == 0
    assert await b.append(0, "b", old, batch) == AppendResult(False, 0)
    assert await b.append(0, "b", new, batch) == AppendResult(True, 0)
    assert await a.read("/x", 0, 10) == entries(1, 2)


async def test_append_after_the_lease_expired_writes_nothing(open_store: OpenStore) -> None:
    a = await open_store("a")
    token = await a.acquire(0, "a", SHORT)
    assert token is not None
    await lease_expired(a, 0)
    assert await a.append(0, "a", token, [Append("/x", entries(1), 100)]) == AppendResult(False, 0)
    assert await a.last_offset("/x") == 0


async def test_append_after_the_fence_moved_on_writes_nothing(open_store: OpenStore, raw: Redis) -> None:
    a = await open_store("a")
    token = await a.acquire(0, "a", LONG)
    assert token is not None
    await raw.incr("switchboard:fence:0")
    assert await a.append(0, "a", token, [Append("/x", entries(1), 100)]) == AppendResult(False, 0)
    assert await a.last_offset("/x") == 0


async def test_append_for_another_shard_is_refused(open_store: OpenStore) -> None:
    a = await open_store("a")
    token = await a.acquire(0, "a", LONG)
    assert token is not None
    assert await a.append(1, "a", token, [Append("/x", entries(1), 100)]) == AppendResult(False, 0)


async def test_max_messages_trims_exactly(open_store: OpenStore, raw: Redis) -> None:
    a = await open_store("a")
    token = await a.acquire(0, "a", LONG)
    assert token is not None
    assert (await a.append(0, "a", token, [Append("/t", entries(*range(1, 21)), 7)])).accepted
    assert await raw.xlen("switchboard:history:/t") == 7
    assert await a.read("/t", 0, 100) == entries(*range(14, 21))

    assert (await a.append(0, "a", token, [Append("/t", entries(21, 22), 3)])).accepted
    assert await a.read("/t", 0, 100) == entries(20, 21, 22)


async def test_old_offsets_are_skipped_and_the_rest_written(open_store: OpenStore) -> None:
    a = await open_store("a")
    token = await a.acquire(0, "a", LONG)
    assert token is not None
    assert await a.append(0, "a", token, [Append("/a", entries(1, 2, 3), 100)]) == AppendResult(True, 0)

    again = [
        Append("/a", entries(2, 4, 3, 5, tag=b"again"), 100),
        Append("/b", entries(1, 1, 2, tag=b"b"), 100),
    ]
    assert await a.append(0, "a", token, again) == AppendResult(True, 3)
    assert await a.read("/a", 0, 100) == [*entries(1, 2, 3), *entries(4, 5, tag=b"again")]
    assert await a.read("/b", 0, 100) == entries(1, 2, tag=b"b")


async def test_offsets_start_at_one(open_store: OpenStore) -> None:
    a = await open_store("a")
    token = await a.acquire(0, "a", LONG)
    assert token is not None
    with pytest.raises(ValueError, match="offsets start at 1"):
        await a.append(0, "a", token, [Append("/a", entries(0), 100)])


async def test_the_first_epoch_stays(open_store: OpenStore) -> None:
    a, b = await open_store("a"), await open_store("b")
    assert await a.epoch("/t", 4, 111) == 111
    assert await b.epoch("/t", 4, 222) == 111
    assert await b.epoch("/u", 4, 333) == 333
    assert await b.epoch("/v", 5, 444) == 444
    assert await a.shard_topics(4) == ["/t", "/u"]
    assert await a.shard_topics(5) == ["/v"]
    assert await a.shard_topics(6) == []


# ----------------------------------------------------------------------------------------------
# Routers


async def test_policies_set_by_any_router_are_read_by_all_with_a_growing_version(
    open_store: OpenStore,
) -> None:
    a, b = await open_store("a"), await open_store("b")
    assert await b.policies_version() == 0
    assert await b.policies() == (0, {})
    assert await a.set_policy("/p/one", b'{"kind":"latest"}') == 1
    assert await b.set_policy("/p/two", b'{"max_rate":2.0}') == 2
    assert await a.set_policy("/p/one", b'{"kind":"reliable"}') == 3
    assert await a.policies_version() == 3
    assert await b.policies() == (3, {"/p/one": b'{"kind":"reliable"}', "/p/two": b'{"max_rate":2.0}'})


async def test_routers_forgets_an_expired_announcement(open_store: OpenStore, raw: Redis) -> None:
    a, b = await open_store("a"), await open_store("b")
    a_info = {"control": "tcp://10.0.0.1:7753", "admin": "http://10.0.0.1:7780"}
    await a.announce("a", a_info, LONG)
    await b.announce("b", {"control": "tcp://10.0.0.2:7753"}, SHORT)
    assert set(await a.routers()) == {"a", "b"}

    async def b_expired() -> bool:
        return await raw.exists("switchboard:router:b") == 0

    await eventually(b_expired)
    assert await raw.smembers("switchboard:routers") == {b"a", b"b"}
    assert await b.routers() == {"a": a_info}
    assert await raw.smembers("switchboard:routers") == {b"a"}

    await a.leave("a")
    assert await b.routers() == {}
    assert await raw.smembers("switchboard:routers") == set()


async def test_connected_routers_follows_the_connections(open_store: OpenStore) -> None:
    a, b = await open_store("a"), await open_store("b")
    assert {"a", "b"} <= await a.connected_routers()
    await a.close()

    async def a_gone() -> bool:
        return "a" not in await b.connected_routers()

    await eventually(a_gone)
    assert "b" in await b.connected_routers()


async def test_prefixes_keep_clusters_apart(redis_server: RedisServer) -> None:
    one = await ClusterStore.open(redis_server.url, router_id="a", prefix="one")
    two = await ClusterStore.open(redis_server.url, router_id="a", prefix="two")
    try:
        assert await one.check_shards(4) == 4
        assert await two.check_shards(8) == 8
        assert await one.acquire(0, "a", LONG) is not None
        assert await two.holders(1) == [None]
    finally:
        await one.close()
        await two.close()


# ----------------------------------------------------------------------------------------------
# Faults


async def test_every_call_raises_store_unavailable_when_the_server_is_gone(
    redis_server: RedisServer, open_store: OpenStore
) -> None:
    a = await open_store("a")
    token = await a.acquire(0, "a", LONG)
    assert token is not None
    redis_server.kill()
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: a.check_shards(4),
        lambda: a.announce("a", {}, LONG),
        a.routers,
        lambda: a.leave("a"),
        a.connected_routers,
        lambda: a.holders(4),
        lambda: a.lease_ttls(4),
        lambda: a.acquire(1, "a", LONG),
        lambda: a.renew("a", [(0, token)], LONG),
        lambda: a.release(0, "a", token),
        lambda: a.epoch("/t", 0, 1),
        lambda: a.append(0, "a", token, [Append("/t", entries(1), 10)]),
        lambda: a.last_offset("/t"),
        lambda: a.read("/t", 0, 10),
        lambda: a.shard_topics(0),
    ]
    for call in calls:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match=f"127.0.0.1:{redis_server.port}") as raised:
            await call()
        assert not isinstance(raised.value, redis.exceptions.RedisError)
        assert time.monotonic() - started < 1.0


async def test_a_hung_server_raises_store_unavailable_after_the_timeout(redis_server: RedisServer) -> None:
    store = await ClusterStore.open(redis_server.url, router_id="a", timeout=0.3)
    try:
        redis_server.freeze()
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await store.holders(1)
        assert 0.25 < time.monotonic() - started < 1.0
        redis_server.thaw()
        assert await store.holders(1) == [None]
    finally:
        redis_server.thaw()
        await store.close()


async def test_the_store_carries_on_after_a_server_restart(
    redis_server: RedisServer, open_store: OpenStore
) -> None:
    a, b = await open_store("a"), await open_store("b")
    before = await a.acquire(0, "a", LONG)
    assert before is not None
    redis_server.kill()
    redis_server.restart()
    after = await a.acquire(0, "a", LONG)
    assert after is not None
    assert after > before, "tokens must grow across a restart that lost every key"
    assert await b.holders(1) == [Holder("a", after)]
    assert {"a", "b"} <= await b.connected_routers()


async def test_open_names_the_server_but_not_the_password() -> None:
    url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as raised:
        await ClusterStore.open(url, router_id="a", timeout=0.5)
    assert time.monotonic() - started < 1.5
    assert "127.0.0.1" in str(raised.value)
    assert "s3cret" not in str(raised.value)


def test_redacted_hides_passwords() -> None:
    assert redacted("redis://u:pw@host:6379/0") == "redis://u:***@host:6379/0"
    assert redacted("redis://:pw@host/0") == "redis://:***@host/0"
    assert redacted("redis://host:6379/0?password=pw&db=1") == "redis://host:6379/0?password=***&db=1"
    assert redacted("unix:///run/redis.sock") == "unix:///run/redis.sock"


@pytest.mark.parametrize("router_id", ["", "a b", "a\nb", "é"])
async def test_a_router_id_must_name_a_connection(router_id: str) -> None:
    with pytest.raises(ValueError, match="router id"):
        await ClusterStore.open("redis://127.0.0.1:1/0", router_id=router_id)


async def test_sentinels_lead_to_the_master(redis_server: RedisServer, tmp_path: Path) -> None:
    with running_sentinel(tmp_path / "sentinel", redis_server, "main") as sentinel:
        sentinels = [("127.0.0.1", sentinel.port)]
        store = await ClusterStore.open("", router_id="a", sentinels=sentinels, sentinel_service="main")
        try:
            assert await store.acquire(0, "a", LONG) is not None
            assert "a" in await store.connected_routers()
            redis_server.kill()
            with pytest.raises(StoreUnavailable, match=f"'main' via 127.0.0.1:{sentinel.port}"):
                await store.holders(1)
        finally:
            await store.close()
