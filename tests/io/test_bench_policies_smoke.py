"""``scripts/bench.py policies`` runs end to end and prints well-formed JSON (not a speed test)."""

from __future__ import annotations

import sys

import pytest

from tests.io.test_bench_smoke import assert_well_formed, run_bench

pytestmark = pytest.mark.timeout(90)

CLIENTS = 10
TINY = ["--quick", "--trials", "1", "--seconds", "1", "--video-seconds", "1", "--memory-seconds", "3"]
POLICIES = [sys.executable, "scripts/bench.py", "policies", *TINY, "--clients", str(CLIENTS), "--json"]
ISOLATION = (
    "fast_deliveries_per_s",
    "fast_latency_p50",
    "fast_latency_p99",
    "fast_delivered",
    "other_client_frames_per_s",
)
RSS = ("rss_start", "rss_end", "rss_max", "growth", "late_growth")
MEMORY = (
    *(f"{process}_{name}" for process in ("edge", "router") for name in RSS),
    "edge_growth_bound",
    "clients_open_at_end",
)
LATEST = ("age_p50", "age_p99", "age_max", "frames_per_s", "skipped_per_s", "age_p99_without_window")
EXPECTED = {
    *(f"policies.isolation.{name}" for name in ISOLATION),
    *(f"policies.memory.{name}" for name in MEMORY),
    *(f"policies.latest.{name}" for name in LATEST),
}


def test_policies_bench_prints_json_figures() -> None:
    figures = {figure["name"]: figure for figure in run_bench(POLICIES, timeout=75.0)}
    assert set(figures) == EXPECTED
    for figure in figures.values():
        assert_well_formed(figure, "any")
    other = figures["policies.isolation.other_client_frames_per_s"]
    assert 0 < other["value"] < other["baseline"], "the slow client read more slowly than the fast one"
    assert figures["policies.isolation.fast_delivered"]["value"] > 0
    assert figures["policies.memory.clients_open_at_end"]["value"] == CLIENTS
    assert figures["policies.latest.frames_per_s"]["value"] > 0
