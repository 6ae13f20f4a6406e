"""Latest video frame age: how old is the frame a slow viewer gets from a ``latest`` topic?

One router + edge stack; the router declares two topics with the same traffic and default bounds,
one ``latest`` and one ``best_effort`` (the baseline). Each trial starts a fresh
:mod:`benchlib.ws_raw` paced client on one of them, which reads one frame, then "processes" it for
:data:`PROCESS_SECONDS`, while a producer sends :data:`SIZE`-byte frames at :data:`FPS`. The client
notes each frame's age (its receive time minus the frame's send stamp). It subscribes with a window
of one frame and acknowledges each frame when done with it, as docs/protocol.md tells a viewer to.
Cases alternate, and figures are medians over trials: ``latest`` is the value, ``best_effort`` the
baseline. One more case, ``latest`` read by a viewer that subscribes without a window, shows what
the socket buffers between the edge and such a viewer add.
"""

from __future__ import annotations

import statistics
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchlib.edge_bench import Stack
from benchlib.edge_summary import percentile
from benchlib.policies_setup import (
    BACKLOG_TOPIC,
    GRACE,
    LATEST_TOPIC,
    POLICY_KINDS,
    Findings,
    Plan,
    start_producer,
    start_raw,
    start_stack,
)
from benchlib.procs import Children
from benchlib.report import Figure

FPS = 30.0
SIZE = 64 * 1024
PROCESS_SECONDS = 0.1
TARGET_P99_MS = 200.0
WINDOW = 1
CASES: tuple[tuple[str, int | None], ...] = (
    (LATEST_TOPIC, WINDOW),
    (BACKLOG_TOPIC, WINDOW),
    (LATEST_TOPIC, None),
)


@dataclass(frozen=True)
class Run:
    topic: str
    ack_window: int | None
    frames: int
    skipped: int
    window: float
    ages_us: Counter[int]

    def age_ms(self, fraction: float) -> float:
        return percentile(self.ages_us, fraction) / 1000

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.window if self.window > 0 else 0.0

    @property
    def skipped_per_s(self) -> float:
        return self.skipped / self.window if self.window > 0 else 0.0


def run(plan: Plan, config: Path) -> Findings:
    runs: list[Run] = []
    with Children() as children:
        stack = start_stack(children, config)
        for index in range(plan.trials):
            for topic, window in CASES if index % 2 == 0 else CASES[::-1]:
                runs.append(run_trial(children, stack, topic, window, plan))
                print(f"[latest {index + 1}/{plan.trials}] {progress(runs[-1])}", file=sys.stderr, flush=True)
    return figures(runs), notes(runs, plan)


def run_trial(children: Children, stack: Stack, topic: str, window: int | None, plan: Plan) -> Run:
    args = ["--mode", "paced", "--size", str(SIZE), "--pause", str(PROCESS_SECONDS)]
    if window is not None:
        args += ["--window", str(window)]
    args += ["--seconds", str(plan.video_seconds)]
    viewer = start_raw(children, f"viewer of {topic}", stack, topic, *args)
    producer = start_producer(children, stack.pull, topic, SIZE, FPS, plan.video_seconds)
    read = viewer.expect("done", plan.video_seconds + GRACE)
    producer.expect("done", GRACE)
    for child in (viewer, producer):
        child.stop()
    return measure(topic, window, read)


def measure(topic: str, ack_window: int | None, read: dict[str, Any]) -> Run:
    return Run(
        topic=topic,
        ack_window=ack_window,
        frames=read["frames"],
        skipped=read["skipped"],
        window=(read["last_ns"] - read["first_ns"]) / 1e9,
        ages_us=Counter({value: count for value, count in read["age_us"]}),
    )


def progress(run: Run) -> str:
    window = f"window {run.ack_window}" if run.ack_window else "no window"
    return (
        f"{POLICY_KINDS[run.topic]}, {window}: frame age p50 {run.age_ms(0.5):,.0f} "
        f"p99 {run.age_ms(0.99):,.0f} max {run.age_ms(1.0):,.0f} ms, "
        f"{run.frames_per_s:.1f} frames/s read, {run.skipped_per_s:.1f}/s skipped"
    )


# ---------------------------------------------------------------- report

Metric = tuple[str, str, Callable[[Run], float]]
_METRICS: list[Metric] = [
    ("age_p50", "ms", lambda r: r.age_ms(0.5)),
    ("age_p99", "ms", lambda r: r.age_ms(0.99)),
    ("age_max", "ms", lambda r: r.age_ms(1.0)),
    ("frames_per_s", "frames/s", lambda r: r.frames_per_s),
    ("skipped_per_s", "messages/s", lambda r: r.skipped_per_s),
]


def figures(runs: list[Run]) -> list[Figure]:
    latest, backlog = _split(runs)
    unwindowed = _without_window(runs)
    return [
        *(
            Figure(f"policies.latest.{name}", median(latest, get), unit, median(backlog, get))
            for name, unit, get in _METRICS
        ),
        Figure("policies.latest.age_p99_without_window", median(unwindowed, lambda r: r.age_ms(0.99)), "ms"),
    ]


def _split(runs: list[Run]) -> tuple[list[Run], list[Run]]:
    """The runs with a window: ``latest`` ones, then the ``best_effort`` baseline."""
    windowed = [r for r in runs if r.ack_window is not None]
    return [r for r in windowed if r.topic == LATEST_TOPIC], [r for r in windowed if r.topic == BACKLOG_TOPIC]


def _without_window(runs: list[Run]) -> list[Run]:
    return [r for r in runs if r.ack_window is None]


def median(runs: list[Run], metric: Callable[[Run], float]) -> float:
    return statistics.median(metric(run) for run in runs)


def notes(runs: list[Run], plan: Plan) -> list[str]:
    latest, backlog = _split(runs)
    p99 = median(latest, lambda r: r.age_ms(0.99))
    base = median(backlog, lambda r: r.age_ms(0.99))
    verdict = "met" if p99 < TARGET_P99_MS else "NOT met"
    bare = median(_without_window(runs), lambda r: r.age_ms(0.99))
    return [
        f"latest: a viewer taking {PROCESS_SECONDS * 1000:g} ms per frame gets frames aged p99 {p99:,.0f} ms "
        f"with latest ({base:,.0f} ms with best_effort); target < {TARGET_P99_MS:g} ms: {verdict}",
        f"latest setup: {FPS:g} frames/s of {SIZE // 1024} KiB for {plan.video_seconds:g} s per trial, "
        f"{plan.trials} round(s) alternating; both topics with default queue bounds; the viewer reads "
        f"with a plain blocking socket and default socket buffers, with a window of {WINDOW} frame",
        f"latest without a window: p99 {bare:,.0f} ms; the frames in the socket buffers between the edge "
        "and the viewer (the edge keeps its own share small: --unsent-bytes, --write-buffer) are past "
        "conflation",
    ]
