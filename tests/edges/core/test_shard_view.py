"""ShardView (edges/core/shard_view.py): owners merged by fencing token, routers listed while a live
router lists them; then a state machine against a model that keeps, per shard, the highest token."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from edges.core.shard_view import Owner, ShardView
from router.core.shards import shard_of
from router.wire import NO_OWNER, RouterEndpoints, ShardMap
from tests.strategies import scaled_examples

SHARDS = 4
ROUTERS = ["ra", "rb", "rc"]
KEEP = 5.0


def endpoints(router_id: str, port: int = 1) -> RouterEndpoints:
    return RouterEndpoints(control=f"tcp://127.0.0.1:{port}", xpub=f"tcp://127.0.0.1:{port + 1}")


def shard_map(owners: list[tuple[str, int]], routers: list[str] = ROUTERS) -> ShardMap:
    return ShardMap(
        shards=len(owners), owners=owners, routers={router: endpoints(router) for router in routers}
    )


# ---------------------------------------------------------------- owners


def test_an_empty_view_knows_no_owner() -> None:
    view = ShardView()
    assert view.shards == 0
    assert view.owner_of(b"/a") is None
    assert view.owner(0) is None
    assert view.routers(0.0) == {}


def test_the_first_map_gives_the_owners_it_shows() -> None:
    view = ShardView()
    changed = view.apply("ra", shard_map([("ra", 1), NO_OWNER, ("rb", 3), ("ra", 2)]), 0.0)
    assert changed == [0, 2, 3]
    assert [view.owner(shard) for shard in range(4)] == [Owner("ra", 1), None, Owner("rb", 3), Owner("ra", 2)]
    topic = next(f"/t{n}".encode() for n in range(100) if shard_of(f"/t{n}".encode(), 4) == 2)
    assert view.shard_of(topic) == 2
    assert view.owner_of(topic) == "rb"


def test_a_lower_token_or_no_owner_changes_nothing() -> None:
    view = ShardView()
    view.apply("ra", shard_map([("ra", 5), ("rb", 7)]), 0.0)
    assert view.apply("rb", shard_map([("rb", 4), NO_OWNER]), 0.0) == []
    assert view.apply("rb", shard_map([("ra", 5), ("rb", 7)]), 0.0) == []
    assert [view.owner(0), view.owner(1)] == [Owner("ra", 5), Owner("rb", 7)]


def test_a_new_lease_of_the_same_router_is_a_change() -> None:
    view = ShardView()
    view.apply("ra", shard_map([("ra", 5), ("rb", 7)]), 0.0)
    assert view.apply("ra", shard_map([("ra", 6), ("rb", 7)]), 0.0) == [0]
    assert view.owner(0) == Owner("ra", 6)


def test_another_shard_count_replaces_the_view() -> None:
    view = ShardView()
    view.apply("ra", shard_map([("ra", 5), ("rb", 7)]), 0.0)
    assert view.apply("ra", shard_map([("rb", 1), NO_OWNER, ("ra", 2)]), 0.0) == [0, 1, 2]
    assert view.shards == 3
    assert [view.owner(shard) for shard in range(3)] == [Owner("rb", 1), None, Owner("ra", 2)]


def test_a_map_with_the_wrong_number_of_owners_changes_no_owner() -> None:
    view = ShardView()
    view.apply("ra", shard_map([("ra", 5), ("rb", 7)]), 0.0)
    bad = ShardMap(shards=3, owners=[("rc", 9)], routers={"rc": endpoints("rc")})
    assert view.apply("rc", bad, 1.0) == []
    assert view.shards == 2
    assert view.owner(0) == Owner("ra", 5)
    assert "rc" in view.routers(1.0)


@st.composite
def lease_histories(draw: st.DrawFn) -> tuple[list[tuple[str, ShardMap]], dict[int, Owner]]:
    """Maps routers could send, in some order: each shard's leases are taken with growing tokens,
    and each map shows, per shard, one lease of that history (or none). Returns the maps and the
    owner each shard must end with: the lease of the highest token shown."""
    shards = draw(st.integers(1, 6))
    leases = [
        draw(st.lists(st.sampled_from(ROUTERS), max_size=5)) for _ in range(shards)
    ]  # leases[shard][i] holds token i + 1
    maps = []
    for _ in range(draw(st.integers(1, 6))):
        owners = []
        for history in leases:
            token = draw(st.integers(0, len(history)))
            owners.append((history[token - 1], token) if token else NO_OWNER)
        maps.append((draw(st.sampled_from(ROUTERS)), shard_map(owners)))
    best: dict[int, Owner] = {}
    for _, sent in maps:
        for shard, (router_id, token) in enumerate(sent.owners):
            if token and token > best.get(shard, Owner("", 0)).token:
                best[shard] = Owner(router_id, token)
    return maps, best


@given(lease_histories(), st.randoms(use_true_random=False))
@settings(max_examples=scaled_examples(200))
def test_the_owner_is_the_highest_token_in_any_order(
    history: tuple[list[tuple[str, ShardMap]], dict[int, Owner]], random: object
) -> None:
    maps, best = history
    shuffled = list(maps)
    random.shuffle(shuffled)  # type: ignore[attr-defined]
    view = ShardView()
    for sender, sent in shuffled:
        view.apply(sender, sent, 0.0)
    assert {shard: owner for shard, owner in view.owners() if owner is not None} == best


# ---------------------------------------------------------------- routers


def test_routers_stay_listed_while_a_live_router_lists_them() -> None:
    view = ShardView(keep_for=KEEP)
    view.apply("ra", shard_map([("ra", 1)], routers=["ra", "rb"]), 0.0)
    view.apply("rb", shard_map([("ra", 1)], routers=["ra", "rb"]), 0.0)
    view.apply("ra", shard_map([("ra", 1)], routers=["ra"]), 1.0)
    assert set(view.routers(KEEP)) == {"ra", "rb"}
    assert set(view.routers(1.0 + KEEP)) == {"ra"}
    view.heard("ra", 20.0)
    assert set(view.routers(20.0)) == {"ra"}
    assert view.routers(20.0 + KEEP + 0.1) == {}


def test_endpoints_come_from_the_newest_map() -> None:
    view = ShardView(keep_for=KEEP)
    moved = ShardMap(shards=1, owners=[("ra", 1)], routers={"rb": endpoints("rb", port=9)})
    view.apply("ra", shard_map([("ra", 1)], routers=["rb"]), 0.0)
    view.apply("rb", moved, 1.0)
    assert view.routers(1.0)["rb"] == endpoints("rb", port=9)


# ---------------------------------------------------------------- the machine


@dataclass
class Sent:
    routers: set[str]
    at: float


class ShardViewMachine(RuleBasedStateMachine):
    """Maps from several routers, stale or new, in any order, and time passing; the model keeps the
    highest token per shard and each sender's newest listing."""

    def __init__(self) -> None:
        super().__init__()
        self.view = ShardView(keep_for=KEEP)
        self.now = 0.0
        self.next_token = [1] * SHARDS
        self.taken: list[list[Owner]] = [[] for _ in range(SHARDS)]
        """Every lease each shard had, oldest first (what a router's map may show)."""
        self.best: dict[int, Owner] = {}
        self.listings: dict[str, Sent] = {}
        self.mapped = False

    @rule(shard=st.integers(0, SHARDS - 1), router=st.sampled_from(ROUTERS))
    def lease_taken(self, shard: int, router: str) -> None:
        owner = Owner(router, self.next_token[shard])
        self.next_token[shard] += 1
        self.taken[shard].append(owner)
        note(f"shard {shard} taken by {owner}")

    @rule(data=st.data(), sender=st.sampled_from(ROUTERS), routers=st.sets(st.sampled_from(ROUTERS)))
    def map_arrives(self, data: st.DataObject, sender: str, routers: set[str]) -> None:
        owners: list[tuple[str, int]] = []
        for history in self.taken:
            index = data.draw(st.integers(-1, len(history) - 1))
            owners.append(tuple(history[index]) if index >= 0 else NO_OWNER)  # type: ignore[arg-type]
        sent = ShardMap(shards=SHARDS, owners=owners, routers={r: endpoints(r) for r in routers})
        note(f"{sender} at {self.now}: {owners} {sorted(routers)}")
        expected = []
        for shard, (router_id, token) in enumerate(owners):
            if token > self.best.get(shard, Owner("", 0)).token:
                self.best[shard] = Owner(router_id, token)
                expected.append(shard)
        assert self.view.apply(sender, sent, self.now) == expected
        self.listings[sender] = Sent(set(routers), self.now)
        self.mapped = True

    @rule(sender=st.sampled_from(ROUTERS))
    def heard(self, sender: str) -> None:
        self.view.heard(sender, self.now)
        if sender in self.listings:
            self.listings[sender].at = self.now

    @rule(seconds=st.sampled_from([0.5, 2.0, KEEP, KEEP + 0.5]))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds

    @rule()
    def routers_listed(self) -> None:
        for sender in [s for s, sent in self.listings.items() if self.now - sent.at > KEEP]:
            del self.listings[sender]
        expected = set().union(*(sent.routers for sent in self.listings.values()))
        assert set(self.view.routers(self.now)) == expected

    @invariant()
    def owners_are_the_highest_tokens(self) -> None:
        assert {shard: owner for shard, owner in self.view.owners() if owner is not None} == self.best
        for n in range(8):
            topic = f"/m/{n}".encode()
            owner = self.best.get(shard_of(topic, SHARDS)) if self.mapped else None
            assert self.view.owner_of(topic) == (owner.router_id if owner is not None else None)


ShardViewMachine.TestCase.settings = settings(max_examples=scaled_examples(100), stateful_step_count=40)
TestShardView = ShardViewMachine.TestCase
