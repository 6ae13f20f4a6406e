"""TokenBucket against a model that counts whole seconds of tokens, and against its promise over
every window of time."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import given, note
from hypothesis import strategies as st

from router.core.token_bucket import TokenBucket

rates = st.sampled_from([0.5, 1.0, 2.0, 4.0, 10.0])
bursts = st.sampled_from([None, 1.0, 3.0, 8.0])
steps = st.lists(st.integers(min_value=-2, max_value=12), max_size=60)
"""Time steps in eighths of a second; a negative step is a clock that went back."""


def times(moves: list[int]) -> list[float]:
    now, out = 100.0, []
    for move in moves:
        now += move / 8
        out.append(now)
    return out


class ModelBucket:
    """Exact arithmetic: tokens earned since the latest time seen, capped, one per take."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = Fraction(rate)
        self.burst = Fraction(burst)
        self.tokens = self.burst
        self.latest: Fraction | None = None

    def take(self, now: float) -> bool:
        at = Fraction(now)
        if self.latest is not None and at > self.latest:
            self.tokens = min(self.burst, self.tokens + (at - self.latest) * self.rate)
        if self.latest is None or at > self.latest:
            self.latest = at
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


def test_starts_full_and_refills_at_its_rate() -> None:
    bucket = TokenBucket(2.0, 3)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.next_token_at() == 0.5
    assert not bucket.take(0.25)
    assert bucket.take(0.5)
    assert bucket.take(10.0)
    assert bucket.tokens == 2


def test_burst_defaults_to_one_second_and_at_least_one() -> None:
    assert TokenBucket(5.0).burst == 5.0
    assert TokenBucket(0.25).burst == 1.0
    assert TokenBucket(0.25).next_token_at() == -math.inf


def test_a_clock_that_steps_back_earns_nothing() -> None:
    bucket = TokenBucket(1.0, 1)
    assert bucket.take(10.0)
    assert not bucket.take(5.0)
    assert not bucket.take(10.5)
    assert bucket.take(11.0)


@pytest.mark.parametrize("rate", [0.0, -1.0, math.nan])
def test_rate_must_be_positive(rate: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        TokenBucket(rate)


@given(rates, bursts, steps)
def test_takes_what_the_model_takes(rate: float, burst: float | None, moves: list[int]) -> None:
    bucket = TokenBucket(rate, burst)
    model = ModelBucket(rate, bucket.burst)
    for now in times(moves):
        note(f"take at {now}")
        assert bucket.take(now) == model.take(now)
        assert math.isclose(bucket.tokens, float(model.tokens), abs_tol=1e-9)


@given(rates, bursts, steps)
def test_never_more_than_burst_plus_rate_over_any_window(
    rate: float, burst: float | None, moves: list[int]
) -> None:
    bucket = TokenBucket(rate, burst)
    taken, latest = [], -math.inf
    for now in times(moves):
        latest = max(latest, now)
        if bucket.take(now):
            taken.append(latest)
    for i, start in enumerate(taken):
        for j in range(i, len(taken)):
            assert j - i + 1 <= bucket.burst + (taken[j] - start) * rate + 1e-9


@given(rates, bursts, steps)
def test_a_refused_take_succeeds_at_next_token_at(rate: float, burst: float | None, moves: list[int]) -> None:
    bucket = TokenBucket(rate, burst)
    for now in times(moves):
        if not bucket.take(now):
            due = bucket.next_token_at()
            assert due > now
            assert bucket.take(due + 1e-9)
