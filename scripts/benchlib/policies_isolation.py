"""Slow-client isolation: do N-1 fast clients of a best_effort topic notice one slow client?

One router + edge stack and N-1 fast :mod:`benchlib.ws_load` clients stay up for every trial. Each
trial adds the N-th client, a fresh :mod:`benchlib.ws_raw` paced client: in run A it reads as fast
as it can, in run B it reads one frame and sleeps, at 1% of the message rate. Then one producer sends
100-byte messages at a fixed rate for a bounded time, and the fast clients report deliveries and
latencies. Runs A and B alternate (and which goes first), and figures are medians over trials: B is
the value, A the baseline.
"""

from __future__ import annotations

import statistics
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchlib.edge_bench import Stack, arm, await_loads, start_loads, wait_until_flowing
from benchlib.edge_summary import percentile
from benchlib.policies_setup import (
    DATA_TOPIC,
    GRACE,
    Findings,
    Plan,
    start_producer,
    start_raw,
    start_stack,
)
from benchlib.procs import Children
from benchlib.report import Figure

RATE = 1_000.0
SIZE = 100
SLOW_SHARE = 0.01
IDLE = 1.0
TARGET = 0.10
"""B within 10% of A: deliveries/s at least 90% of A's, p99 latency at most 110% of A's."""
RUNS = ("A", "B")


@dataclass(frozen=True)
class Run:
    """One trial: the fast clients' counts and latencies, and what the N-th client read."""

    kind: str
    sent: int
    fast_clients: int
    frames: int
    window: float
    latency_us: Counter[int]
    other_frames: int
    other_window: float

    @property
    def rate(self) -> float:
        return self.frames / self.window if self.window > 0 else 0.0

    @property
    def delivered(self) -> float:
        return self.frames / (self.sent * self.fast_clients) if self.sent else 0.0

    def latency_ms(self, fraction: float) -> float:
        return percentile(self.latency_us, fraction) / 1000

    @property
    def other_rate(self) -> float:
        return self.other_frames / self.other_window if self.other_window > 0 else 0.0


def run(plan: Plan, config: Path) -> Findings:
    runs: list[Run] = []
    with Children() as children:
        stack = start_stack(children, config)
        start_loads(children, stack, plan.clients - 1, plan.load_procs)
        await_loads(stack, plan.clients)
        wait_until_flowing(stack)
        for index in range(plan.trials):
            for kind in RUNS if index % 2 == 0 else RUNS[::-1]:
                runs.append(run_trial(children, stack, kind, plan))
                print(
                    f"[isolation {index + 1}/{plan.trials}] {progress(runs[-1])}", file=sys.stderr, flush=True
                )
    return figures(runs), notes(runs, plan)


def run_trial(children: Children, stack: Stack, kind: str, plan: Plan) -> Run:
    pause = 1 / (RATE * SLOW_SHARE) if kind == "B" else 0.0
    args = ["--mode", "paced", "--size", str(SIZE), "--pause", str(pause), "--seconds", str(plan.seconds)]
    other = start_raw(children, f"client {plan.clients} ({kind})", stack, DATA_TOPIC, *args)
    count = round(RATE * plan.seconds)
    arm(stack.loads, expected=count, size=SIZE, idle=IDLE, cap=plan.seconds + GRACE)
    producer = start_producer(children, stack.pull, DATA_TOPIC, SIZE, RATE, plan.seconds)
    sent = producer.expect("done", plan.seconds + GRACE)
    received = [load.expect("done", plan.seconds + GRACE) for load in stack.loads]
    read = other.expect("done", plan.seconds + GRACE)
    for child in (other, producer):
        child.stop()
    return measure(kind, stack, sent, received, read)


def measure(
    kind: str, stack: Stack, sent: dict[str, Any], received: list[dict[str, Any]], read: dict[str, Any]
) -> Run:
    latency: Counter[int] = Counter()
    for done in received:
        latency.update({value: count for value, count in done["latency_us"]})
    last = max(done["last_ns"] for done in received)
    return Run(
        kind=kind,
        sent=sent["sent"],
        fast_clients=stack.clients,
        frames=sum(done["frames"] for done in received),
        window=(last - sent["first_ns"]) / 1e9 if last else 0.0,
        latency_us=latency,
        other_frames=read["frames"],
        other_window=(read["last_ns"] - read["first_ns"]) / 1e9,
    )


def progress(run: Run) -> str:
    return (
        f"run {run.kind}: fast clients {run.rate:,.0f} deliveries/s, delivered {run.delivered:.1%}, "
        f"latency p50 {run.latency_ms(0.5):.2f} p99 {run.latency_ms(0.99):.2f} ms; "
        f"the other client read {run.other_rate:,.1f} frames/s"
    )


# ---------------------------------------------------------------- report

Metric = tuple[str, str, Callable[[Run], float]]
_METRICS: list[Metric] = [
    ("fast_deliveries_per_s", "deliveries/s", lambda r: r.rate),
    ("fast_latency_p50", "ms", lambda r: r.latency_ms(0.5)),
    ("fast_latency_p99", "ms", lambda r: r.latency_ms(0.99)),
    ("fast_delivered", "fraction", lambda r: r.delivered),
    ("other_client_frames_per_s", "frames/s", lambda r: r.other_rate),
]


def figures(runs: list[Run]) -> list[Figure]:
    slow, fast = _split(runs)
    return [
        Figure(f"policies.isolation.{name}", median(slow, get), unit, median(fast, get))
        for name, unit, get in _METRICS
    ]


def _split(runs: list[Run]) -> tuple[list[Run], list[Run]]:
    return [r for r in runs if r.kind == "B"], [r for r in runs if r.kind == "A"]


def median(runs: list[Run], metric: Callable[[Run], float]) -> float:
    return statistics.median(metric(run) for run in runs)


def notes(runs: list[Run], plan: Plan) -> list[str]:
    slow, fast = _split(runs)
    rate = median(slow, lambda r: r.rate) / median(fast, lambda r: r.rate)
    p99 = median(slow, lambda r: r.latency_ms(0.99)) / median(fast, lambda r: r.latency_ms(0.99))
    met = rate >= 1 - TARGET and p99 <= 1 + TARGET
    each = ", ".join(f"{r.kind} {r.latency_ms(0.99):.1f}" for r in runs)
    return [
        f"isolation: {plan.clients - 1} fast clients with one slow client (B) vs all fast (A): deliveries/s "
        f"{rate:.2f}x, p99 latency {p99:.2f}x; target within {TARGET:.0%}: {'met' if met else 'NOT met'}. "
        f"Per trial, p99 ms in run order: {each}",
        f"isolation setup: {RATE:,.0f} msg/s of {SIZE} B for {plan.seconds:g} s per trial, {plan.trials} "
        f"A/B pair(s) alternating; the slow client reads one frame then sleeps {1 / (RATE * SLOW_SHARE):g} s "
        "(plain blocking socket, recv only the frame it handles); edge queues at their defaults",
    ]
