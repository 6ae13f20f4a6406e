"""Small builders of Prometheus metric families for custom collectors (router and edges)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily

__all__ = ["Rows", "counter", "gauge"]

Rows = Iterable[tuple[Sequence[str], float]]
"""``(label values, value)`` pairs, label values in the order of the family's label names."""


def gauge(name: str, documentation: str, labels: Sequence[str], rows: Rows) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=list(labels))
    for values, value in rows:
        family.add_metric(list(values), value)
    return family


def counter(name: str, documentation: str, labels: Sequence[str], rows: Rows) -> CounterMetricFamily:
    """A counter family; ``name`` without ``_total``, which the exposition adds."""
    family = CounterMetricFamily(name, documentation, labels=list(labels))
    for values, value in rows:
        family.add_metric(list(values), value)
    return family
