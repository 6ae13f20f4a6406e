"""``scripts/bench.py router`` and ``edge`` run end to end and print well-formed JSON (not a speed test)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.io.harness import ROOT

pytestmark = pytest.mark.timeout(90)

KEYS = {"name", "value", "unit", "baseline", "ratio"}
BENCH = [sys.executable, "scripts/bench.py"]
ROUTER = [*BENCH, "router", "--quick", "--trials", "1", "--json"]
EDGE = [*BENCH, "edge", "--quick", "--trials", "1", "--clients", "10", "--rate-seconds", "1", "--json"]
EDGE_FIGURES = (
    "deliveries_per_s",
    "vs_relay",
    "latency_p50",
    "latency_p99",
    "delivered",
    "server_cpu_per_delivery",
    "load_busy_max",
)
RSS_FIGURE = "edge.idle.N10.memory_per_conn"
BATCHED_FIGURES = ("deliveries_per_s", "latency_p99", "delivered", "cpu_per_delivery", "load_cpu_per_frame")
"""RSS grows by pages and arenas: over 10 clients it may not grow at all, so only its type is checked."""
WAIT_FIGURES = ("server_cpu_wait", "load_cpu_wait_max")
"""Time spent waiting for a CPU, which is zero on an idle machine."""


def run_bench(command: list[str], timeout: float = 75.0) -> list[dict[str, Any]]:
    """Run a bench and return its figures; on timeout SIGTERM it, so it stops its own children."""
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.terminate()
        stdout, stderr = process.communicate(timeout=20)
        pytest.fail(f"the bench did not finish within {timeout} s:\n{stderr[-2000:]}")
    assert process.returncode == 0, stderr[-2000:]
    return [json.loads(line) for line in stdout.splitlines()]


def assert_well_formed(figure: dict[str, Any], values: str = "positive") -> None:
    """Keys and types; then ``value``, ``baseline`` and ``ratio`` (unless null) are ``values``:
    "positive", "non-negative" or "any"."""
    assert set(figure) == KEYS, figure
    assert isinstance(figure["name"], str)
    assert isinstance(figure["unit"], str)
    assert figure["unit"]
    assert isinstance(figure["value"], int | float), figure
    numbers = [figure[key] for key in ("value", "baseline", "ratio") if figure[key] is not None]
    if values == "positive":
        assert min(numbers) > 0, figure
    elif values == "non-negative":
        assert min(numbers) >= 0, figure


def expected_values(name: str) -> str:
    if name == RSS_FIGURE:
        return "any"
    return "non-negative" if name.endswith(WAIT_FIGURES) else "positive"


def test_router_bench_prints_json_figures() -> None:
    figures = run_bench(ROUTER)
    names = {figure["name"] for figure in figures}
    for size in ("100B", "64KiB"):
        expected = {f"router.{size}.{figure}" for figure in ("msgs_per_s", "vs_forwarder", "delivered")}
        assert expected <= names
    for figure in figures:
        assert_well_formed(figure)


def test_edge_bench_prints_json_figures() -> None:
    figures = run_bench(EDGE, timeout=60.0)
    names = {figure["name"] for figure in figures}
    expected = {f"edge.{size}.N10.{name}" for size in ("100B", "64KiB") for name in EDGE_FIGURES}
    expected |= {f"edge.fixed1000.100B.N10.{name}" for name in ("latency_p50", "latency_p99", "delivered")}
    expected |= {f"edge.batched.{size}.N10.{name}" for size in ("100B", "64KiB") for name in BATCHED_FIGURES}
    assert expected | {RSS_FIGURE} <= names
    for figure in figures:
        assert_well_formed(figure, expected_values(figure["name"]))
