"""``scripts/bench.py router`` runs end to end and prints well-formed JSON figures (not a speed test)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.io.harness import ROOT

pytestmark = pytest.mark.timeout(90)

KEYS = {"name", "value", "unit", "baseline", "ratio"}
COMMAND = [sys.executable, "scripts/bench.py", "router", "--quick", "--trials", "1", "--json"]


def run_bench(timeout: float = 75.0) -> subprocess.CompletedProcess[str]:
    """Run the bench; on timeout SIGTERM it, so it stops its own children before exiting."""
    process = subprocess.Popen(COMMAND, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.terminate()
        stdout, stderr = process.communicate(timeout=20)
        pytest.fail(f"the bench did not finish within {timeout} s:\n{stderr[-2000:]}")
    return subprocess.CompletedProcess(COMMAND, process.returncode, stdout, stderr)


def test_router_bench_prints_json_figures() -> None:
    result = run_bench()
    assert result.returncode == 0, result.stderr[-2000:]
    figures: list[dict[str, Any]] = [json.loads(line) for line in result.stdout.splitlines()]
    names = {figure["name"] for figure in figures}
    for size in ("100B", "64KiB"):
        expected = {f"router.{size}.{figure}" for figure in ("msgs_per_s", "vs_forwarder", "delivered")}
        assert expected <= names
    for figure in figures:
        assert set(figure) == KEYS, figure
        assert isinstance(figure["name"], str)
        assert isinstance(figure["unit"], str)
        assert figure["unit"]
        assert figure["value"] > 0, figure
        for key in ("baseline", "ratio"):
            assert figure[key] is None or figure[key] > 0, figure
