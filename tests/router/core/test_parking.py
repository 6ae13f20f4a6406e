"""Parking (router/core/parking.py): bounds, order and expiry; then a state machine in which
messages are parked, passed on to owners that take or refuse them, and expire, against a model that
keeps every message's fate: each one is passed on once, in its shard's order, or handed back."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import note, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from router.core.parking import Parking
from tests.strategies import scaled_examples

SHARDS = 3
MAX_MESSAGES = 6
MAX_BYTES = 40
MAX_AGE = 5.0


def taking(into: list[str], limit: int = 1_000) -> Callable[[str], bool]:
    def send(message: str) -> bool:
        if len(into) >= limit:
            return False
        into.append(message)
        return True

    return send


def test_bounds_must_be_positive() -> None:
    for bounds in [(0, 1, 1.0), (1, 0, 1.0), (1, 1, 0.0)]:
        with pytest.raises(ValueError, match="positive"):
            Parking[str](*bounds)


def test_a_shard_passes_on_in_arrival_order_until_the_owner_takes_no_more() -> None:
    parking = Parking[str](10, 100, MAX_AGE)
    for n in range(4):
        assert parking.park(1, f"m{n}", 5, 0.0)
    assert parking.park(2, "other", 5, 0.0)
    sent: list[str] = []
    assert parking.pass_on(1, taking(sent, limit=3)) == 3
    assert sent == ["m0", "m1", "m2"]
    assert parking.holds(1)
    assert len(parking) == 2
    assert parking.bytes == 10
    assert parking.pass_on(1, taking(sent)) == 1
    assert sent[-1] == "m3"
    assert not parking.holds(1)
    assert parking.shards() == [2]


def test_the_count_and_the_bytes_are_bounds() -> None:
    parking = Parking[str](2, 100, MAX_AGE)
    assert parking.park(0, "a", 10, 0.0)
    assert parking.park(1, "b", 10, 0.0)
    assert not parking.park(0, "c", 1, 0.0)
    by_bytes = Parking[str](10, 20, MAX_AGE)
    assert by_bytes.park(0, "a", 15, 0.0)
    assert not by_bytes.park(0, "b", 6, 0.0)
    assert by_bytes.park(0, "c", 5, 0.0)
    assert by_bytes.bytes == 20


def test_what_waited_past_max_age_expires_oldest_first() -> None:
    parking = Parking[str](10, 100, MAX_AGE)
    parking.park(0, "old", 1, 0.0)
    parking.park(0, "new", 1, 3.0)
    parking.park(1, "mid", 1, 1.0)
    assert list(parking.expire(MAX_AGE)) == []
    assert list(parking.expire(MAX_AGE + 1.5)) == [(0, "old"), (1, "mid")]
    assert parking.shards() == [0]
    assert len(parking) == 1
    assert parking.bytes == 1


class ParkingMachine(RuleBasedStateMachine):
    """The model: each shard's waiting messages in order, with when they came and their size."""

    def __init__(self) -> None:
        super().__init__()
        self.parking = Parking[str](MAX_MESSAGES, MAX_BYTES, MAX_AGE)
        self.now = 0.0
        self.serial = 0
        self.waiting: dict[int, list[tuple[str, float, int]]] = {}
        self.arrived: dict[int, list[str]] = {shard: [] for shard in range(SHARDS)}
        self.sent: dict[int, list[str]] = {shard: [] for shard in range(SHARDS)}
        self.dropped: set[str] = set()

    def _waiting_count(self) -> int:
        return sum(len(queue) for queue in self.waiting.values())

    def _waiting_bytes(self) -> int:
        return sum(size for queue in self.waiting.values() for _, _, size in queue)

    @rule(shard=st.integers(0, SHARDS - 1), size=st.integers(0, 15))
    def park(self, shard: int, size: int) -> None:
        self.serial += 1
        message = f"s{shard}m{self.serial}"
        fits = self._waiting_count() < MAX_MESSAGES and self._waiting_bytes() + size <= MAX_BYTES
        assert self.parking.park(shard, message, size, self.now) is fits
        self.arrived[shard].append(message)
        if fits:
            self.waiting.setdefault(shard, []).append((message, self.now, size))
        else:
            self.dropped.add(message)

    @rule(shard=st.integers(0, SHARDS - 1), takes=st.integers(0, 4))
    def pass_on(self, shard: int, takes: int) -> None:
        taken: list[str] = []
        went = self.parking.pass_on(shard, taking(taken, limit=takes))
        queue = self.waiting.get(shard, [])
        expected = [message for message, _, _ in queue[:takes]]
        assert taken == expected
        assert went == len(expected)
        self.sent[shard] += taken
        del queue[:takes]
        if not queue:
            self.waiting.pop(shard, None)

    @rule(seconds=st.sampled_from([0.5, 2.0, MAX_AGE]))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds

    @rule()
    def expire(self) -> None:
        expired = list(self.parking.expire(self.now))
        expected = []
        for shard in list(self.waiting):
            queue = self.waiting[shard]
            while queue and queue[0][1] < self.now - MAX_AGE:
                expected.append((shard, queue.pop(0)[0]))
            if not queue:
                del self.waiting[shard]
        note(f"expired at {self.now}: {expired}")
        assert sorted(expired) == sorted(expected)
        self.dropped.update(message for _, message in expired)

    @invariant()
    def bounds_and_order_hold(self) -> None:
        assert len(self.parking) == self._waiting_count() <= MAX_MESSAGES
        assert self.parking.bytes == self._waiting_bytes() <= MAX_BYTES
        assert sorted(self.parking.shards()) == sorted(self.waiting)
        for shard in range(SHARDS):
            assert self.parking.holds(shard) is (shard in self.waiting)
            kept = [m for m in self.arrived[shard] if m not in self.dropped]
            waiting = [message for message, _, _ in self.waiting.get(shard, [])]
            assert self.sent[shard] + waiting == kept


ParkingMachine.TestCase.settings = settings(max_examples=scaled_examples(200), stateful_step_count=50)
TestParking = ParkingMachine.TestCase
