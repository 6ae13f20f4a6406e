"""``scripts/bench.py webrtc`` runs end to end and prints well-formed JSON (not a speed test)."""

from __future__ import annotations

import pytest

from tests.io.test_bench_smoke import BENCH, assert_well_formed, run_bench

pytestmark = pytest.mark.timeout(120)

WEBRTC = [*BENCH, "webrtc", "--quick", "--clients", "1", "2", "--video-seconds", "1", "--json"]
NON_NEGATIVE = ("edge_cpu", "edge_cpu_per_viewer")


def test_webrtc_bench_prints_json_figures() -> None:
    figures = run_bench(WEBRTC, timeout=100.0)
    names = {figure["name"] for figure in figures}
    for clients in (1, 2):
        assert {f"webrtc.data.N{clients}.deliveries_per_s", f"webrtc.data.N{clients}.delivered"} <= names
        video = ("fps_per_viewer", "fps_min_viewer", "first_frame_max", *NON_NEGATIVE)
        assert {f"webrtc.video.N{clients}.{name}" for name in video} <= names
    assert "webrtc.video.marginal_cpu_per_viewer" in names
    for figure in figures:
        name = figure["name"]
        values = (
            "any" if "marginal" in name else "non-negative" if name.endswith(NON_NEGATIVE) else "positive"
        )
        assert_well_formed(figure, values)
