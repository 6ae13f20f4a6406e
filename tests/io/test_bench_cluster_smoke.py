"""``scripts/bench.py cluster`` runs end to end and prints well-formed JSON (not a speed test): cost
and scale at their smallest, and failover with one kill."""

from __future__ import annotations

import shutil
import sys

import pytest

from tests.io.test_bench_smoke import assert_well_formed, run_bench

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server: scripts/setup"),
]

TINY = ["--quick", "--trials", "1", "--scale", "0.05", "--only", "cost", "--only", "scale", "--json"]
CLUSTER = [sys.executable, "scripts/bench.py", "cluster", *TINY]
COST = ("router_cpu_per_msg", "vs_memory", "redis_cpu_per_msg", "msgs_per_s", "delivered")
SCALE = ("2_routers_vs_1", "delivered", "routers_busy", "machine_busy")
NOT_POSITIVE = {"cluster.cost.best_effort.redis_cpu_per_msg"}
"""Redis does nothing per message of a best_effort topic: its CPU may round to zero."""


def test_cluster_bench_prints_json_figures() -> None:
    figures = {figure["name"]: figure for figure in run_bench(CLUSTER, timeout=100.0)}
    expected = {f"cluster.cost.{policy}.{name}" for policy in ("best_effort", "reliable") for name in COST}
    expected |= {f"cluster.scale.{name}" for name in SCALE}
    assert expected <= set(figures), sorted(figures)
    [rate] = [name for name in figures if name.startswith("cluster.scale.msgs_per_s.2_vs_1_routers.")]
    assert rate.endswith("_cpus"), rate
    for name, figure in figures.items():
        assert_well_formed(figure, "non-negative" if name in NOT_POSITIVE else "positive")
    assert figures["cluster.cost.reliable.delivered"]["value"] == 1.0
    cost = figures["cluster.cost.reliable.router_cpu_per_msg"]
    assert figures["cluster.cost.reliable.vs_memory"]["value"] == pytest.approx(cost["ratio"])


FAILOVER = ["--only", "failover", "--kills", "1", "--topics", "1", "--clients", "1", "--immediate", "--json"]


def test_cluster_bench_failover_kills_once_and_duplicates_nothing() -> None:
    figures = {
        figure["name"]: figure
        for figure in run_bench([sys.executable, "scripts/bench.py", "cluster", *FAILOVER], timeout=100.0)
    }
    assert figures["cluster.failover.kills"]["value"] == 1
    for policy in ("best_effort", "reliable"):
        assert figures[f"cluster.failover.{policy}.samples"]["value"] >= 1
        assert 0 < figures[f"cluster.failover.{policy}.max"]["value"] < 15
        assert figures[f"cluster.failover.{policy}.received"]["value"] > 0
        assert figures[f"cluster.failover.{policy}.duplicated"]["value"] == 0
    for figure in figures.values():
        assert_well_formed(figure, "any")
