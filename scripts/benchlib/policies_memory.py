"""Memory under never-reading clients: do the edge's and the router's RSS stay flat?

Two runs, each on a fresh router + edge stack whose edge bounds each client's queue to
:data:`QUEUE_BYTES` (``--queue-bytes``) and pings only after the run (a client that never reads never
answers a ping, and would be closed after the ping interval and timeout, 40 s by default). In the
``never`` run N :mod:`benchlib.ws_raw` clients read one probe, then nothing; in the baseline N
:mod:`benchlib.ws_load` clients read everything. A producer sends :data:`SIZE`-byte messages at
:data:`RATE` per second, so a never-reading client's queue is full within a few seconds, and both
processes' RSS is sampled from just before the first message to the end of the run.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchlib.edge_bench import Stack, arm, await_loads, start_loads, wait_until_flowing
from benchlib.policies_setup import (
    DATA_TOPIC,
    GRACE,
    START_TIMEOUT,
    Findings,
    Plan,
    start_producer,
    start_raw,
    start_stack,
)
from benchlib.procs import Child, Children, rss_bytes
from benchlib.report import Figure
from edges.websocket.edge import WebSocketEdgeConfig

QUEUE_BYTES = 256 * 1024
SIZE = 16 * 1024
RATE = 200.0
PING_INTERVAL = 3600.0
WRITE_BUFFER_HIGH = WebSocketEdgeConfig().write_buffer_high
KINDS = ("never", "reading")
PROCESSES = ("edge", "router")
SHOWN_SAMPLES = 7


@dataclass(frozen=True)
class Sample:
    """Seconds since the producer started, and the RSS in bytes of the edge and of the router."""

    at: float
    edge: int
    router: int

    def of(self, process: str) -> int:
        return self.edge if process == "edge" else self.router


@dataclass(frozen=True)
class Run:
    kind: str
    samples: list[Sample]
    clients: int
    open_at_end: int
    delivered: float

    def start(self, process: str) -> int:
        return self.samples[0].of(process)

    def end(self, process: str) -> int:
        return self.samples[-1].of(process)

    def peak(self, process: str) -> int:
        return max(sample.of(process) for sample in self.samples)

    def growth(self, process: str) -> int:
        return self.end(process) - self.start(process)

    def late_growth(self, process: str) -> int:
        """Growth over the second half of the run, when the queues have long been full."""
        return self.end(process) - self.samples[len(self.samples) // 2].of(process)


def run(plan: Plan, config: Path) -> Findings:
    runs = {kind: run_one(kind, plan, config) for kind in KINDS}
    return figures(runs["never"], runs["reading"]), notes(runs["never"], runs["reading"], plan)


def run_one(kind: str, plan: Plan, config: Path) -> Run:
    with Children() as children:
        edge_args = ("--queue-bytes", str(QUEUE_BYTES), "--ping-interval", str(PING_INTERVAL))
        stack = start_stack(children, config, *edge_args)
        clients = None
        if kind == "never":
            clients = start_never_reading(children, stack, plan)
        else:
            start_readers(children, stack, plan)
        first = sample(stack, 0.0)
        producer = start_producer(children, stack.pull, DATA_TOPIC, SIZE, RATE, plan.memory_seconds)
        samples = [first, *sample_during(stack, plan)]
        sent = producer.expect("done", GRACE)["sent"]
        open_at_end, delivered = finish(stack, clients, plan, sent)
    found = Run(kind, samples, plan.clients, open_at_end, delivered)
    print(f"[memory] {progress(found)}", file=sys.stderr, flush=True)
    return found


def start_never_reading(children: Children, stack: Stack, plan: Plan) -> Child:
    cap = plan.memory_seconds + 2 * START_TIMEOUT + GRACE
    args = ["--mode", "never", "--connections", str(plan.clients), "--cap", str(cap)]
    return start_raw(children, "never-reading clients", stack, DATA_TOPIC, *args)


def start_readers(children: Children, stack: Stack, plan: Plan) -> None:
    start_loads(children, stack, plan.clients, plan.load_procs)
    await_loads(stack, plan.clients)
    wait_until_flowing(stack)
    expected = round(RATE * plan.memory_seconds)
    arm(stack.loads, expected=expected, size=SIZE, idle=2.0, cap=plan.memory_seconds + GRACE)


def sample(stack: Stack, at: float) -> Sample:
    return Sample(at, rss_bytes(stack.server.pid), rss_bytes(stack.helpers[0].pid))


def sample_during(stack: Stack, plan: Plan) -> list[Sample]:
    """One sample each ``plan.sample_interval`` seconds for ``plan.memory_seconds``."""
    start, interval = time.monotonic(), plan.sample_interval
    found = []
    for index in range(1, round(plan.memory_seconds / interval) + 1):
        time.sleep(max(0.0, start + index * interval - time.monotonic()))
        found.append(sample(stack, time.monotonic() - start))
    return found


def finish(stack: Stack, clients: Child | None, plan: Plan, sent: int) -> tuple[int, float]:
    """How many clients are still connected, and the share of messages readers got (never: 0)."""
    if clients is not None:
        clients.send({"cmd": "report"})
        return clients.expect("done", GRACE)["open"], 0.0
    received = [load.expect("done", plan.memory_seconds + GRACE) for load in stack.loads]
    frames = sum(done["frames"] for done in received)
    closed = sum(done["closed"] for done in received)
    return plan.clients - closed, frames / (sent * plan.clients) if sent else 0.0


def progress(run: Run) -> str:
    return (
        f"{run.kind}: edge RSS {mb(run.start('edge')):.1f} -> {mb(run.end('edge')):.1f} MB "
        f"(max {mb(run.peak('edge')):.1f}), router {mb(run.start('router')):.1f} -> "
        f"{mb(run.end('router')):.1f} MB, {run.open_at_end} of {run.clients} clients connected at the end"
    )


def mb(size: float) -> float:
    return size / 1e6


# ---------------------------------------------------------------- report

Metric = tuple[str, str, Callable[[Run], float]]


def _metrics(process: str) -> list[Metric]:
    return [
        (f"{process}_rss_start", "MB", lambda r: mb(r.start(process))),
        (f"{process}_rss_end", "MB", lambda r: mb(r.end(process))),
        (f"{process}_rss_max", "MB", lambda r: mb(r.peak(process))),
        (f"{process}_growth", "kB", lambda r: r.growth(process) / 1000),
        (f"{process}_late_growth", "kB", lambda r: r.late_growth(process) / 1000),
    ]


def growth_bound(clients: int) -> int:
    """What N clients' queues and transport buffers may hold at the edge, in bytes: the queue, the
    write buffer up to its high-water mark, and the one write that took it over the mark."""
    return clients * (2 * QUEUE_BYTES + WRITE_BUFFER_HIGH)


def figures(never: Run, reading: Run) -> list[Figure]:
    found = [
        Figure(f"policies.memory.{name}", get(never), unit, get(reading))
        for process in PROCESSES
        for name, unit, get in _metrics(process)
    ]
    found.append(Figure("policies.memory.edge_growth_bound", growth_bound(never.clients) / 1000, "kB"))
    found.append(
        Figure("policies.memory.clients_open_at_end", never.open_at_end, "clients", reading.open_at_end)
    )
    return found


def notes(never: Run, reading: Run, plan: Plan) -> list[str]:
    bound = growth_bound(never.clients)
    growth, late = never.growth("edge"), never.late_growth("edge")
    met = growth <= bound and never.open_at_end == never.clients
    return [
        f"memory: with {never.clients} never-reading clients the edge grew {growth / 1000:,.0f} kB "
        f"({late / 1000:,.0f} kB over the second half), the router {never.growth('router') / 1000:,.0f} kB; "
        f"bound {bound / 1000:,.0f} kB = clients x (2 x --queue-bytes {QUEUE_BYTES:,} + write buffer "
        f"high-water {WRITE_BUFFER_HIGH:,}); target flat, within the bound: {'met' if met else 'NOT met'}",
        f"memory setup: {RATE:g} msg/s of {SIZE:,} B for {plan.memory_seconds:g} s per run, RSS every "
        f"{plan.sample_interval:g} s from just before the first message; edge --queue-bytes {QUEUE_BYTES:,}, "
        f"--ping-interval {PING_INTERVAL:g}; readers (baseline) got {reading.delivered:.1%} of the messages; "
        "the socket buffers, which take a never-reading client's first megabytes, are kernel memory, not RSS",
        *(shown_samples(run) for run in (never, reading)),
    ]


def shown_samples(run: Run) -> str:
    step = max(1, (len(run.samples) - 1) // (SHOWN_SAMPLES - 1))
    shown = run.samples[::step]
    if shown[-1] is not run.samples[-1]:
        shown.append(run.samples[-1])
    text = ", ".join(f"{s.at:.0f}s {mb(s.edge):.1f}/{mb(s.router):.1f}" for s in shown)
    return f"memory {run.kind} run, edge/router RSS in MB: {text}"
