"""End-to-end latency, sampled: from the producer's header ``timestamp`` to the edge's write.

The producer header's ``timestamp`` (``docs/protocol.md`` 1.2: nanoseconds since the Unix epoch)
travels unchanged to the edge in the data frame's head. The edge offers every message that has a
header to :meth:`LatencySampler.offer`; one in :data:`SAMPLE_EVERY` is decoded and its timestamp
kept until :meth:`LatencySampler.written`, which the edge calls with the wall clock once it has
written the batch to its clients. A message without a ``timestamp`` key gives no sample.

Producer and edge clocks differ across hosts: the figure includes their offset (a negative one is
counted as 0), so compare it on hosts whose clocks are synchronized (NTP, PTP).
"""

from __future__ import annotations

import bisect
from typing import Final

from prometheus_client.metrics_core import HistogramMetricFamily

from router.wire import WireError, decode_producer_header

__all__ = ["BUCKETS", "SAMPLE_EVERY", "LatencySampler"]

SAMPLE_EVERY: Final = 16
BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Upper bounds in seconds; a last bucket, ``+Inf``, takes the rest."""


class LatencySampler:
    """A histogram of sampled producer-to-write latencies, read at scrape time."""

    __slots__ = ("_countdown", "_stamps", "buckets", "counts", "every", "total", "total_seconds")

    def __init__(self, every: int = SAMPLE_EVERY, buckets: tuple[float, ...] = BUCKETS) -> None:
        self.every = every
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0
        self.total_seconds = 0.0
        self._countdown = 0
        """Messages with a header still to skip before the next sample: the first one is taken."""
        self._stamps: list[int] = []

    def offer(self, header: bytes) -> None:
        """A message with this (non-empty) producer header is about to be written."""
        if self._countdown:
            self._countdown -= 1
            return
        self._countdown = self.every - 1
        try:
            timestamp = decode_producer_header(header).timestamp
        except WireError:
            return
        if timestamp is not None:
            self._stamps.append(timestamp)

    @property
    def waiting(self) -> bool:
        return bool(self._stamps)

    def written(self, now_ns: int) -> None:
        """The messages offered so far are written; ``now_ns`` is the wall clock in nanoseconds."""
        for stamp in self._stamps:
            self.observe(max(0, now_ns - stamp) / 1e9)
        self._stamps.clear()

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, seconds)] += 1
        self.total += 1
        self.total_seconds += seconds

    def family(self, name: str, documentation: str, labels: dict[str, str]) -> HistogramMetricFamily:
        """The histogram as a Prometheus family (cumulative buckets)."""
        family = HistogramMetricFamily(name, documentation, labels=list(labels))
        cumulative, running = [], 0
        for bound, count in zip([*map(str, self.buckets), "+Inf"], self.counts, strict=True):
            running += count
            cumulative.append((bound, float(running)))
        family.add_metric(list(labels.values()), cumulative, self.total_seconds)
        return family
