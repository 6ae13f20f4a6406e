"""Topic shards and their leases (``router/core/shards.py``).

The leases are driven by hypothesis through several routers sharing a model of Redis (leases with
a time to live, a fencing counter per shard, open connections), with routers killed, paused past
their lease and resumed. The rules checked: a router that serves a shard holds its lease in Redis
under the same token, so its fenced writes land; no two running routers serve one shard at once;
and once the cluster is quiet, each shard is served by exactly its preferred live router.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from router.core.shards import (
    EXPIRED,
    HANDED_OVER,
    TAKEN,
    Gained,
    Holder,
    Lost,
    ShardLeases,
    preferred_owner,
    shard_of,
)
from tests.strategies import scaled_examples

LEASE = 1.0
SHARDS = 6
ROUTERS = ["r1", "r2", "r3"]


# ---------------------------------------------------------------- the hash


@pytest.mark.parametrize(
    ("text", "value"),
    [("", 0x811C9DC5), ("a", 0xE40C292C), ("foobar", 0xBF9CF968), ("/video/main", 0xC087B63F)],
)
def test_shard_of_is_fnv1a_32_modulo_the_shard_count(text: str, value: int) -> None:
    assert shard_of(text.encode(), 2**32) == value
    assert shard_of(text.encode(), 64) == value % 64


@given(st.binary(max_size=64), st.integers(1, 4096))
def test_shard_of_is_in_range(topic: bytes, shards: int) -> None:
    assert 0 <= shard_of(topic, shards) < shards


@given(st.integers(0, 1000), st.sets(st.text(min_size=1, max_size=5), min_size=2, max_size=6))
def test_a_router_leaving_moves_only_its_own_shards(shard: int, routers: set[str]) -> None:
    before = preferred_owner(shard, routers)
    assert before in routers
    leaving = next(r for r in sorted(routers) if r != before)
    assert preferred_owner(shard, routers - {leaving}) == before


def test_preferred_owner_of_no_router_is_none() -> None:
    assert preferred_owner(3, []) is None


# ---------------------------------------------------------------- single router


def test_a_lone_router_takes_every_shard_and_serves_until_its_lease_would_end() -> None:
    leases = ShardLeases("r1", 3, LEASE)
    steps, changes = leases.plan(["r1"], [None, None, None], now=0.0)
    assert changes == []
    assert steps.acquire == [(0, None), (1, None), (2, None)]
    for shard, _ in steps.acquire:
        assert leases.acquired(shard, 7 + shard, asked_at=0.0) == [Gained(shard, 7 + shard)]
    assert leases.served(0.5) == {0: 7, 1: 8, 2: 9}
    assert leases.token(1, 0.74) == 8
    assert leases.token(1, 0.75) is None
    assert leases.expire(0.75) == [Lost(0, 7, EXPIRED), Lost(1, 8, EXPIRED), Lost(2, 9, EXPIRED)]
    assert leases.degraded() == {0: 7, 1: 8, 2: 9}


def test_a_degraded_shard_is_renewed_while_redis_still_holds_it_and_lost_to_another_holder() -> None:
    leases = ShardLeases("r1", 2, LEASE)
    leases.acquired(0, 3, asked_at=0.0)
    leases.acquired(1, 4, asked_at=0.0)
    assert leases.expire(0.8) == [Lost(0, 3, EXPIRED), Lost(1, 4, EXPIRED)]
    steps, changes = leases.plan(["r1"], [Holder("r1", 3), Holder("r2", 5)], now=0.9)
    assert changes == [Lost(1, 4, TAKEN)]
    assert steps.renew == [(0, 3)]
    assert leases.renewed([(0, 3, True)], asked_at=0.9) == [Gained(0, 3)]
    assert leases.served(1.0) == {0: 3}
    assert leases.degraded() == {}


def test_a_renewal_counts_from_when_it_was_asked() -> None:
    leases = ShardLeases("r1", 1, LEASE)
    leases.acquired(0, 1, asked_at=0.0)
    assert leases.renewed([(0, 1, True)], asked_at=0.5) == []
    assert leases.token(0, 1.24) == 1
    assert leases.token(0, 1.25) is None


def test_a_refused_renewal_or_another_holder_loses_the_shard() -> None:
    leases = ShardLeases("r1", 2, LEASE)
    leases.acquired(0, 1, asked_at=0.0)
    leases.acquired(1, 1, asked_at=0.0)
    assert leases.renewed([(0, 1, False)], asked_at=0.1) == [Lost(0, 1, TAKEN)]
    _, changes = leases.plan(["r1", "r2"], [Holder("r2", 2), Holder("r2", 5)], now=0.2)
    assert changes == [Lost(1, 1, TAKEN)]
    assert leases.served(0.2) == {}


def test_a_shard_another_router_prefers_is_handed_over() -> None:
    leases = ShardLeases("r1", 8, LEASE)
    for shard in range(8):
        leases.acquired(shard, 1, asked_at=0.0)
    holders = [Holder("r1", 1)] * 8
    steps, changes = leases.plan(["r1", "r2"], holders, now=0.1)
    moved = [shard for shard in range(8) if preferred_owner(shard, ["r1", "r2"]) == "r2"]
    assert moved, "with 8 shards, r2 prefers some"
    assert changes == [Lost(shard, 1, HANDED_OVER) for shard in moved]
    assert steps.release == [(shard, 1) for shard in moved]
    assert sorted(leases.served(0.1)) == sorted(set(range(8)) - set(moved))


def test_a_dead_holder_is_replaced_by_the_router_it_prefers_and_an_orphan_by_anyone() -> None:
    shards = 16
    mine = [s for s in range(shards) if preferred_owner(s, ["r1", "r3"]) == "r1"]
    theirs = [s for s in range(shards) if s not in mine]
    leases = ShardLeases("r1", shards, LEASE)
    holders: list[Holder | None] = [Holder("r2", 4)] * shards
    steps, _ = leases.plan(["r1", "r2", "r3"], holders, now=0.0, connected=["r1", "r3"])
    assert steps.acquire == [(s, Holder("r2", 4)) for s in mine]
    free: list[Holder | None] = [None] * shards
    steps, _ = leases.plan(["r1", "r3"], free, now=0.0)
    assert [s for s, _ in steps.acquire] == mine
    steps, _ = leases.plan(["r1", "r3"], free, now=2 * LEASE)
    assert [s for s, _ in steps.acquire] == sorted(mine + theirs)


def test_the_own_lease_has_left_the_lease_time_from_when_it_was_last_asked() -> None:
    leases = ShardLeases("r1", 2, LEASE)
    assert leases.lease_left(0, 0.0) is None
    leases.acquired(0, 1, asked_at=0.0)
    assert leases.lease_left(0, 0.3) == pytest.approx(0.7)
    leases.renewed([(0, 1, True)], asked_at=0.5)
    assert leases.lease_left(0, 0.6) == pytest.approx(0.9)
    assert leases.lease_left(0, 1.7) == 0.0
    leases.expire(1.7)
    assert leases.lease_left(0, 1.7) is None


def test_another_routers_lease_has_left_what_redis_said_while_the_same_router_holds_it() -> None:
    leases = ShardLeases("r1", 3, LEASE)
    leases.plan(["r1", "r2"], [Holder("r2", 3), Holder("r2", 4), None], now=1.0)
    leases.ttls_read([(Holder("r2", 3), 800), (Holder("r2", 4), 200), None], asked_at=1.0)
    assert leases.lease_left(0, 1.3) == pytest.approx(0.5)
    assert leases.lease_left(1, 1.3) == 0.0
    assert leases.lease_left(2, 1.3) is None
    leases.plan(["r1", "r2", "r3"], [Holder("r2", 3), Holder("r3", 5), None], now=1.4)
    assert leases.lease_left(0, 1.4) == pytest.approx(0.4)
    assert leases.lease_left(1, 1.4) is None, "read while r2 held it; r3 holds it now"
    with pytest.raises(ValueError, match="2 lease times for 3 shards"):
        leases.ttls_read([None, None], asked_at=2.0)


def test_after_redis_forgot_every_key_a_router_leaves_the_others_their_shards() -> None:
    shards = 16
    leases = ShardLeases("r1", shards, LEASE)
    everyone = [Holder("r2", 1)] * shards
    leases.plan(["r1", "r2"], everyone, now=0.0, connected=["r1", "r2"])
    free: list[Holder | None] = [None] * shards
    steps, _ = leases.plan(["r1"], free, now=0.5, connected=["r1"])
    mine = [s for s in range(shards) if preferred_owner(s, ["r1", "r2"]) == "r1"]
    assert [s for s, _ in steps.acquire] == mine
    steps, _ = leases.plan(["r1"], free, now=2 * LEASE + 0.5, connected=["r1"])
    assert [s for s, _ in steps.acquire] == list(range(shards))


# ---------------------------------------------------------------- many routers, one Redis


@dataclass
class RedisModel:
    """What the routers rely on in Redis, as simply as possible."""

    leases: dict[int, tuple[Holder, float]] = field(default_factory=dict)
    fences: dict[int, int] = field(default_factory=dict)
    announced: dict[str, float] = field(default_factory=dict)
    connected: set[str] = field(default_factory=set)

    def holder(self, shard: int, now: float) -> Holder | None:
        lease = self.leases.get(shard)
        return lease[0] if lease is not None and now < lease[1] else None

    def acquire(self, shard: int, router_id: str, replacing: Holder | None, now: float) -> int | None:
        if self.holder(shard, now) != replacing:
            return None
        token = self.fences.get(shard, 0) + 1
        self.fences[shard] = token
        self.leases[shard] = (Holder(router_id, token), now + LEASE)
        return token

    def renew(self, shard: int, holder: Holder, now: float) -> bool:
        if self.holder(shard, now) != holder:
            return False
        self.leases[shard] = (holder, now + LEASE)
        return True

    def release(self, shard: int, holder: Holder, now: float) -> None:
        if self.holder(shard, now) == holder:
            del self.leases[shard]

    def ttl(self, shard: int, now: float) -> tuple[Holder, int] | None:
        lease = self.leases.get(shard)
        if lease is None or now >= lease[1]:
            return None
        return lease[0], int((lease[1] - now) * 1000)

    def fenced_write(self, shard: int, holder: Holder, now: float) -> bool:
        return self.holder(shard, now) == holder and self.fences.get(shard) == holder.token


class Cluster(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.redis = RedisModel()
        self.routers = {r: ShardLeases(r, SHARDS, LEASE) for r in ROUTERS}
        self.running = set(ROUTERS)
        self.paused: set[str] = set()
        self.served_by: dict[int, Holder] = {}
        """Every token a router was ever given, so a token is never handed out twice."""

    def _tick(self, router_id: str) -> None:
        leases = self.routers[router_id]
        redis = self.redis
        redis.announced[router_id] = self.now + 3 * LEASE
        redis.connected.add(router_id)
        announced = [r for r, until in redis.announced.items() if self.now < until]
        holders = [redis.holder(s, self.now) for s in range(SHARDS)]
        steps, changes = leases.plan(announced, holders, self.now, connected=redis.connected)
        for shard, token in steps.release:
            redis.release(shard, Holder(router_id, token), self.now)
        renewed = [(s, t, redis.renew(s, Holder(router_id, t), self.now)) for s, t in steps.renew]
        changes += leases.renewed(renewed, self.now)
        for shard, replacing in steps.acquire:
            taken = redis.acquire(shard, router_id, replacing, self.now)
            if taken is not None:
                assert shard not in self.served_by or self.served_by[shard].token < taken
                self.served_by[shard] = Holder(router_id, taken)
                changes += leases.acquired(shard, taken, self.now)
        note(f"t={self.now:.2f} {router_id}: {steps} {changes}")
        leases.ttls_read([redis.ttl(s, self.now) for s in range(SHARDS)], self.now)

    @rule(dt=st.sampled_from([0.05, 0.2, 0.4, 0.9, 1.5]))
    def time_passes(self, dt: float) -> None:
        self.now += dt

    @rule(router_id=st.sampled_from(ROUTERS))
    def tick(self, router_id: str) -> None:
        if router_id in self.running and router_id not in self.paused:
            self._tick(router_id)

    @precondition(lambda self: len(self.running) > 1)
    @rule(router_id=st.sampled_from(ROUTERS))
    def kill(self, router_id: str) -> None:
        """SIGKILL: the process and its Redis connection are gone; its leases stay until they end."""
        self.running.discard(router_id)
        self.paused.discard(router_id)
        self.redis.connected.discard(router_id)

    @rule(router_id=st.sampled_from(ROUTERS))
    def pause(self, router_id: str) -> None:
        """SIGSTOP: the process stops, its connection stays open."""
        if router_id in self.running:
            self.paused.add(router_id)

    @rule(router_id=st.sampled_from(ROUTERS))
    def resume(self, router_id: str) -> None:
        self.paused.discard(router_id)

    @rule(router_id=st.sampled_from(ROUTERS))
    def restart(self, router_id: str) -> None:
        """A killed router comes back as a new process with the same id and no leases."""
        if router_id not in self.running:
            self.routers[router_id] = ShardLeases(router_id, SHARDS, LEASE)
            self.running.add(router_id)

    @rule()
    def settle(self) -> None:
        """Every running router unpaused and ticking for a while: the placement converges."""
        self.paused.clear()
        for _ in range(12):
            self.now += 0.2
            for router_id in sorted(self.running):
                self._tick(router_id)
        live = sorted(self.running)
        for shard in range(SHARDS):
            serving = [r for r in live if self.routers[r].token(shard, self.now) is not None]
            assert serving == [preferred_owner(shard, live)], (shard, serving)

    @invariant()
    def a_serving_router_holds_the_lease_so_its_writes_land(self) -> None:
        for router_id in self.running:
            for shard, token in self.routers[router_id].served(self.now).items():
                assert self.redis.fenced_write(shard, Holder(router_id, token), self.now), (router_id, shard)

    @invariant()
    def a_router_never_counts_more_time_left_on_its_own_lease_than_redis(self) -> None:
        for router_id in self.running:
            leases = self.routers[router_id]
            for shard, token in leases.served(self.now).items():
                left = leases.lease_left(shard, self.now)
                assert left is not None
                holder, until = self.redis.leases[shard]
                assert holder == Holder(router_id, token)
                assert left <= until - self.now + 1e-9, (router_id, shard, left, until - self.now)

    @invariant()
    def no_two_running_routers_serve_one_shard(self) -> None:
        for shard in range(SHARDS):
            serving = [r for r in self.running if self.routers[r].token(shard, self.now) is not None]
            assert len(serving) <= 1, (shard, serving)


Cluster.TestCase.settings = settings(max_examples=scaled_examples(200), stateful_step_count=40, deadline=None)
TestCluster = Cluster.TestCase
