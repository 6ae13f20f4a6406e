"""Latest video frame age: how old is the frame a slow viewer gets from a ``latest`` topic?

One router + edge stack; the router declares two topics with the same traffic and default bounds,
one ``latest`` and one ``best_effort`` (the baseline). Each trial starts a fresh
:mod:`benchlib.ws_raw` paced client on one of them, which reads one frame, then "processes" it for
:data:`PROCESS_SECONDS`, while a producer sends :data:`SIZE`-byte frames at :data:`FPS`. The client
notes each frame's age (its receive time minus the frame's send stamp). Topics alternate, and
figures are medians over trials: ``latest`` is the value, ``best_effort`` the baseline.
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
TOPICS = (LATEST_TOPIC, BACKLOG_TOPIC)
TCP_WMEM = "/proc/sys/net/ipv4/tcp_wmem"


@dataclass(frozen=True)
class Run:
    topic: str
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
            for topic in TOPICS if index % 2 == 0 else TOPICS[::-1]:
                runs.append(run_trial(children, stack, topic, plan))
                print(f"[latest {index + 1}/{plan.trials}] {progress(runs[-1])}", file=sys.stderr, flush=True)
    return figures(runs), notes(runs, plan)


def run_trial(children: Children, stack: Stack, topic: str, plan: Plan) -> Run:
    args = ["--mode", "paced", "--size", str(SIZE), "--pause", str(PROCESS_SECONDS)]
    args += ["--seconds", str(plan.video_seconds)]
    viewer = start_raw(children, f"viewer of {topic}", stack, topic, *args)
    producer = start_producer(children, stack.pull, topic, SIZE, FPS, plan.video_seconds)
    read = viewer.expect("done", plan.video_seconds + GRACE)
    producer.expect("done", GRACE)
    for child in (viewer, producer):
        child.stop()
    return measure(topic, read)


def measure(topic: str, read: dict[str, Any]) -> Run:
    return Run(
        topic=topic,
        frames=read["frames"],
        skipped=read["skipped"],
        window=(read["last_ns"] - read["first_ns"]) / 1e9,
        ages_us=Counter({value: count for value, count in read["age_us"]}),
    )


def progress(run: Run) -> str:
    return (
        f"{POLICY_KINDS[run.topic]}: frame age p50 {run.age_ms(0.5):,.0f} p99 {run.age_ms(0.99):,.0f} "
        f"max {run.age_ms(1.0):,.0f} ms, {run.frames_per_s:.1f} frames/s read, {run.skipped_per_s:.1f}/s "
        "skipped"
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
    return [
        Figure(f"policies.latest.{name}", median(latest, get), unit, median(backlog, get))
        for name, unit, get in _METRICS
    ]


def _split(runs: list[Run]) -> tuple[list[Run], list[Run]]:
    return [r for r in runs if r.topic == LATEST_TOPIC], [r for r in runs if r.topic == BACKLOG_TOPIC]


def median(runs: list[Run], metric: Callable[[Run], float]) -> float:
    return statistics.median(metric(run) for run in runs)


def notes(runs: list[Run], plan: Plan) -> list[str]:
    latest, backlog = _split(runs)
    p99 = median(latest, lambda r: r.age_ms(0.99))
    base = median(backlog, lambda r: r.age_ms(0.99))
    verdict = "met" if p99 < TARGET_P99_MS else "NOT met"
    return [
        f"latest: a viewer taking {PROCESS_SECONDS * 1000:g} ms per frame gets frames aged p99 {p99:,.0f} ms "
        f"with latest ({base:,.0f} ms with best_effort); target < {TARGET_P99_MS:g} ms: {verdict}",
        f"latest setup: {FPS:g} frames/s of {SIZE // 1024} KiB for {plan.video_seconds:g} s per trial, "
        f"{plan.trials} pair(s) alternating; both topics with default queue bounds; the viewer reads "
        "with a plain blocking socket and default socket buffers",
        send_buffer_note(),
    ]


def send_buffer_note() -> str:
    """Frames the edge has written to a socket are past conflation; say how many the kernel may hold."""
    try:
        limit = int(Path(TCP_WMEM).read_text().split()[2])
    except (OSError, IndexError, ValueError):
        return f"latest: {TCP_WMEM} is unreadable, so the kernel's send buffer bound is unknown"
    frames = limit / SIZE
    seconds = frames * PROCESS_SECONDS
    return (
        f"latest: the edge conflates only frames it has not written yet; here the kernel lets a TCP send "
        f"buffer grow to {limit:,} bytes ({TCP_WMEM}), {frames:.0f} frames or {seconds:.1f} s of this "
        "viewer's reading, and what is written arrives in order"
    )
