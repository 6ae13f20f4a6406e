"""Per-second rates of ever-growing counters, from samples taken now and then. No I/O."""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["RateMeter"]


class RateMeter:
    """The rate of each named counter over the interval between its last two samples.

    A counter that went down was reset (its topic's state started again), so it counts from 0; a
    name missing from a sample is forgotten.
    """

    def __init__(self) -> None:
        self._last: dict[str, int] = {}
        self._rates: dict[str, float] = {}
        self._stamp: float | None = None

    def sample(self, now: float, counters: Mapping[str, int]) -> None:
        elapsed = None if self._stamp is None else now - self._stamp
        if elapsed is not None and elapsed <= 0:
            return
        rates = {}
        for name, value in counters.items():
            before = self._last.get(name)
            if elapsed is not None and before is not None:
                rates[name] = (value - before if value >= before else value) / elapsed
        self._last = dict(counters)
        self._rates = rates
        self._stamp = now

    def rate(self, name: str) -> float:
        """Per second; 0 before two samples of the name."""
        return self._rates.get(name, 0.0)
