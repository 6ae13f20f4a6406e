"""The edge's Prometheus collector (edges/metrics.py): one series per drop reason, summed where two
counters share a label."""

from __future__ import annotations

from types import SimpleNamespace
from typing import cast

from edges.core.hub import EdgeHub
from edges.core.reports import EdgeStats
from edges.metrics import EdgeCollector, EdgeProbe


def drop_rows(stats: EdgeStats) -> dict[str, float]:
    probe = SimpleNamespace(hub=EdgeHub(), link=SimpleNamespace(edge_id="e1"))
    collector = EdgeCollector(cast(EdgeProbe, probe))
    (family,) = collector._drops(stats)
    totals = (sample for sample in family.samples if sample.name.endswith("_total"))
    return {sample.labels["reason"]: sample.value for sample in totals}


def test_a_topic_rate_limit_and_a_client_request_rate_limit_add_up() -> None:
    stats = EdgeStats(
        clients=1,
        topics=1,
        delivered=0,
        dropped={"rate_limited": 3, "queue_full": 1},
        bad_client_messages=2,
        rate_limited_client_messages=4,
        unexpected_data=0,
        unexpected_replies=0,
    )
    assert drop_rows(stats) == {"bad_input": 2, "queue_full": 1, "rate_limited": 7}
