"""Deadlines (edges/core/deadlines.py); the hub closing clients past theirs, and ending requests no
router answered in time, is in test_hub.py."""

from __future__ import annotations

import pytest

from edges.core.deadlines import Deadlines


def test_deadlines_expire_in_opening_order() -> None:
    deadlines = Deadlines[str](10.0)
    assert deadlines.next_due() is None
    deadlines.add("a", 0.0)
    deadlines.add("b", 1.5)
    deadlines.add("c", 1.5)
    assert deadlines.next_due() == 10.0
    assert deadlines.expired(9.9) == []
    assert deadlines.expired(11.5) == ["a", "b", "c"]
    assert deadlines.expired(20.0) == []
    assert (len(deadlines), deadlines.next_due()) == (0, None)


def test_a_deadline_is_due_at_its_exact_time() -> None:
    deadlines = Deadlines[str](2.0)
    deadlines.add("a", 1.0)
    deadlines.add("b", 2.0)
    assert deadlines.expired(3.0) == ["a"]
    assert deadlines.next_due() == 4.0


@pytest.mark.parametrize("timeout", [0.0, -1.0, float("nan")])
def test_the_timeout_must_be_positive(timeout: float) -> None:
    with pytest.raises(ValueError, match="the connect timeout must be positive"):
        Deadlines[str](timeout, "the connect timeout")
