"""What ``scripts/bench edge`` measured, as figures and notes: trials and memory in, a Report out."""

from __future__ import annotations

import os
import statistics
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from benchlib.procs import CpuTimes
from benchlib.report import Figure, Report

if TYPE_CHECKING:
    from benchlib.edge_bench import Plan

KINDS = ("edge", "batched", "relay")
"""The servers each case runs on: router+edge, the same with clients that ask for batches
(``docs/protocol.md`` 4.4.5), and the websockets.broadcast relay."""
SIZES = {"100B": 100, "64KiB": 64 * 1024}
TARGET_RATIOS = {("100B", 100): 5.0, ("100B", 1000): 5.0, ("64KiB", 1): 1.0}
"""The edge's deliveries/s over the relay's that each burst case aims at."""
TARGET_P99_MS = 5.0
TARGET_P99_CLIENTS = 100
TARGET_KB_PER_CONN = 15.0
TARGET_MEMORY_CLIENTS = 1000
SATURATED = 0.9
CPU_BOUND = 0.75
BURST_LATENCY = (
    "burst latencies are queueing delays: all M messages are sent at once, so the last waits for "
    "every one before it; compare them between the two servers, not with the fixed-rate figures"
)


@dataclass(frozen=True)
class Memory:
    """RSS of one server before its N clients connected and after, with all of them idle."""

    kind: str
    clients: int
    before: int
    after: int

    @property
    def kb_per_conn(self) -> float:
        return (self.after - self.before) / self.clients / 1000


@dataclass(frozen=True)
class Usage:
    """CPU seconds of the server and of its helpers (the router), and seconds that the server's and
    each load process's main thread spent runnable but waiting for a CPU (the machine is shared)."""

    server: CpuTimes
    helpers_cpu: float
    server_wait: float
    load_wait: tuple[float, ...]

    def __sub__(self, other: Usage) -> Usage:
        waits = tuple(a - b for a, b in zip(self.load_wait, other.load_wait, strict=True))
        return Usage(
            self.server - other.server,
            self.helpers_cpu - other.helpers_cpu,
            self.server_wait - other.server_wait,
            waits,
        )


@dataclass(frozen=True)
class Trial:
    """One burst (or fixed-rate run) through one server to N clients."""

    kind: str
    label: str
    clients: int
    fixed_rate: float
    sent: int
    deliveries: int
    reads: int
    window: float
    latency_us: Counter[int]
    usage: Usage
    load_cpu: tuple[float, ...]
    closed: int
    machine_busy: float

    @property
    def case(self) -> tuple[str, int, float]:
        return self.label, self.clients, self.fixed_rate

    @property
    def rate(self) -> float:
        return self.deliveries / self.window if self.window > 0 else 0.0

    @property
    def delivered(self) -> float:
        return self.deliveries / (self.sent * self.clients) if self.sent else 0.0

    def latency_ms(self, fraction: float) -> float:
        return percentile(self.latency_us, fraction) / 1000

    @property
    def cpu_us_per_delivery(self) -> float:
        """Every thread of the server process and of its helpers (the router), per delivery."""
        return 1e6 * (self.usage.server.process + self.usage.helpers_cpu) / max(1, self.deliveries)

    @property
    def server_us_per_delivery(self) -> float:
        """The server process alone (the edge without the router; the relay), per delivery."""
        return 1e6 * self.usage.server.process / max(1, self.deliveries)

    @property
    def server_busy(self) -> float:
        return self.usage.server.main_thread / self.window if self.window > 0 else 0.0

    @property
    def server_waiting(self) -> float:
        """Share of the window the server's main thread was ready to run but had no CPU."""
        return self.usage.server_wait / self.window if self.window > 0 else 0.0

    @property
    def load_waiting(self) -> float:
        """The same for the load process that waited most."""
        return max(self.usage.load_wait) / self.window if self.window > 0 else 0.0

    @property
    def load_busy(self) -> tuple[float, ...]:
        return tuple(cpu / self.window if self.window > 0 else 0.0 for cpu in self.load_cpu)

    @property
    def load_us_per_frame(self) -> float:
        return 1e6 * sum(self.load_cpu) / max(1, self.deliveries)

    @property
    def frames_per_read(self) -> float:
        return self.deliveries / max(1, self.reads)


def percentile(histogram: Counter[int], fraction: float) -> float:
    """The smallest value with at least ``fraction`` of the counts at or below it (0 if empty)."""
    rank, seen = fraction * histogram.total(), 0
    for value in sorted(histogram):
        seen += histogram[value]
        if seen >= rank:
            return float(value)
    return 0.0


def progress(trial: Trial) -> str:
    loads = "/".join(f"{busy:.0%}" for busy in trial.load_busy)
    return (
        f"{case_text(trial.case)} {trial.kind}: {trial.rate:,.0f} deliveries/s, delivered "
        f"{trial.delivered:.1%}, latency p50 {trial.latency_ms(0.5):.2f} p99 {trial.latency_ms(0.99):.2f} "
        f"ms, {trial.cpu_us_per_delivery:.2f} us CPU/delivery, busy: server {trial.server_busy:.0%} "
        f"loads {loads}, waiting for a CPU: server {trial.server_waiting:.0%}, {trial.frames_per_read:.1f} "
        f"frames/read, machine {trial.machine_busy:.1f} cores"
    )


def case_text(case: tuple[str, int, float]) -> str:
    label, clients, rate = case
    return f"{label} N={clients}" + (f" at {rate:,.0f} msg/s" if rate else " burst")


def case_name(case: tuple[str, int, float]) -> str:
    label, clients, rate = case
    return f"edge.fixed{rate:.0f}.{label}.N{clients}" if rate else f"edge.{label}.N{clients}"


# ---------------------------------------------------------------- the report


def summarize(
    plan: Plan, trials: list[Trial], memory: list[Memory], context: tuple[float, float, int]
) -> Report:
    title = (
        f"scripts/bench edge: {plan.trials} trial(s) per case, alternating router+edge (value) with a "
        "websockets.broadcast relay (baseline), and router+edge with clients that ask for batches (value, "
        "edge.batched.*) with the same without (baseline); 1 producer -> server -> N WebSocket clients on "
        "127.0.0.1; medians"
    )
    report = Report(title)
    for case in sorted({trial.case for trial in trials}, key=lambda case: (case[2], case[0], case[1])):
        edge, batched, relay = ([t for t in trials if t.case == case and t.kind == kind] for kind in KINDS)
        report.figures += figures(case, edge, relay)
        if batched:
            report.figures += batched_figures(case, batched, edge)
        runs_of_each = [runs for runs in (edge, batched, relay) if runs]
        report.notes += [f"{case_text(case)} {runs[0].kind}: {bottleneck(runs)}" for runs in runs_of_each]
    report.figures += memory_figures(memory)
    report.notes = [*targets(trials, memory), load_check(trials), BURST_LATENCY, *report.notes]
    report.notes.append(context_note(plan, trials, context))
    return report


Metric = tuple[str, str, Callable[[Trial], float]]
_BURST: list[Metric] = [
    ("deliveries_per_s", "deliveries/s", lambda t: t.rate),
    ("latency_p50", "ms", lambda t: t.latency_ms(0.5)),
    ("latency_p99", "ms", lambda t: t.latency_ms(0.99)),
    ("delivered", "fraction", lambda t: t.delivered),
    ("cpu_per_delivery", "us CPU/delivery", lambda t: t.cpu_us_per_delivery),
    ("server_cpu_per_delivery", "us CPU/delivery", lambda t: t.server_us_per_delivery),
    ("server_busy", "% of a core", lambda t: 100 * t.server_busy),
    ("server_cpu_wait", "% of window", lambda t: 100 * t.server_waiting),
    ("load_busy_max", "% of a core", lambda t: 100 * max(t.load_busy)),
    ("load_cpu_per_frame", "us CPU/frame", lambda t: t.load_us_per_frame),
    ("load_cpu_wait_max", "% of window", lambda t: 100 * t.load_waiting),
]


def figures(case: tuple[str, int, float], edge: list[Trial], relay: list[Trial]) -> list[Figure]:
    name = case_name(case)
    found = [
        Figure(f"{name}.{metric}", median(edge, get), unit, median(relay, get))
        for metric, unit, get in _BURST
    ]
    if not case[2]:
        target = TARGET_RATIOS.get(case[:2])
        found.insert(1, Figure(f"{name}.vs_relay", found[0].ratio or 0.0, "x relay rate", target))
    return found


_BATCHED_METRICS = (
    "deliveries_per_s",
    "latency_p50",
    "latency_p99",
    "delivered",
    "cpu_per_delivery",
    "server_cpu_per_delivery",
    "load_cpu_per_frame",
)
_BATCHED: list[Metric] = [metric for metric in _BURST if metric[0] in _BATCHED_METRICS]


def batched_figures(case: tuple[str, int, float], batched: list[Trial], edge: list[Trial]) -> list[Figure]:
    """Clients that ask for batches (value) beside clients that do not (baseline), same edge code."""
    name = case_name(case).replace("edge.", "edge.batched.", 1)
    return [
        Figure(f"{name}.{metric}", median(batched, get), unit, median(edge, get))
        for metric, unit, get in _BATCHED
    ]


def memory_figures(memory: list[Memory]) -> list[Figure]:
    largest = max(entry.clients for entry in memory)
    edge = next(m for m in memory if m.kind == "edge" and m.clients == largest)
    relay = next(m for m in memory if m.kind == "relay" and m.clients == largest)
    return [
        Figure(f"edge.idle.N{largest}.memory_per_conn", edge.kb_per_conn, "kB RSS/conn", relay.kb_per_conn)
    ]


def median(trials: Sequence[Trial], metric: Callable[[Trial], float]) -> float:
    return statistics.median(metric(trial) for trial in trials)


# ---------------------------------------------------------------- notes


def targets(trials: list[Trial], memory: list[Memory]) -> list[str]:
    found = [ratio_target(trials, label, clients, ratio) for (label, clients), ratio in TARGET_RATIOS.items()]
    return [*found, latency_target(trials), memory_target(memory)]


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def ratio_target(trials: list[Trial], label: str, clients: int, target: float) -> str:
    case = (label, clients, 0.0)
    edge = [t for t in trials if t.case == case and t.kind == "edge"]
    relay = [t for t in trials if t.case == case and t.kind == "relay"]
    if not edge or not relay:
        return f"target {label} N={clients} >= {target:g}x the relay: not measured (N not in --clients)"
    ratio = median(edge, lambda t: t.rate) / median(relay, lambda t: t.rate)
    return (
        f"target {label} N={clients}: edge at {ratio:.2f}x the relay's deliveries/s; "
        f"target >= {target:g}x: {verdict(ratio >= target)}"
    )


def latency_target(trials: list[Trial]) -> str:
    fixed = [t for t in trials if t.fixed_rate]
    edge = [t for t in fixed if t.kind == "edge"]
    relay = [t for t in fixed if t.kind == "relay"]
    p99, base = median(edge, lambda t: t.latency_ms(0.99)), median(relay, lambda t: t.latency_ms(0.99))
    clients, rate = edge[0].clients, edge[0].fixed_rate
    caveat = "" if clients == TARGET_P99_CLIENTS else f" (only N={clients}: not the target's setting)"
    each = ", ".join(f"{t.latency_ms(0.99):.1f} ms with {t.server_waiting:.0%}" for t in edge)
    return (
        f"target p99 at {rate:,.0f} msg/s to N={clients}{caveat}: edge {p99:.2f} ms (relay {base:.2f} ms); "
        f"target <= {TARGET_P99_MS:g} ms: {verdict(p99 <= TARGET_P99_MS)}. Per trial, edge p99 beside the "
        f"share of the window its main thread waited for a CPU: {each}"
    )


def memory_target(memory: list[Memory]) -> str:
    figure = memory_figures(memory)[0]
    clients = max(entry.clients for entry in memory)
    caveat = "" if clients >= TARGET_MEMORY_CLIENTS else f" (only N={clients}: RSS pages make this rough)"
    return (
        f"target idle memory over N={clients}{caveat}: edge {figure.value:.1f} kB/conn "
        f"(relay {figure.baseline or 0.0:.1f}); target <= {TARGET_KB_PER_CONN:g} kB: "
        f"{verdict(figure.value <= TARGET_KB_PER_CONN)}"
    )


def load_check(trials: list[Trial]) -> str:
    worst = max(trials, key=lambda t: max(t.load_busy))
    saturated = [t for t in trials if max(t.load_busy) >= SATURATED]
    verdict_text = (
        f"{len(saturated)} trial(s) had a load process at >= {SATURATED:.0%} of a core: rates are floors"
        if saturated
        else f"none reached {SATURATED:.0%}, so no load process capped a rate"
    )
    return (
        "load clients checked: each load process measures its own CPU time (time.process_time) "
        "from arming to its report, over the trial window (first send -> its last frame); busiest was "
        f"{max(worst.load_busy):.0%} of a core ({case_text(worst.case)} {worst.kind}); {verdict_text}. "
        "Per case, load_cpu_per_frame (the clients' CPU per frame) stands beside cpu_per_delivery (the "
        "server's), and the notes below name each case's busiest process"
    )


def bottleneck(trials: list[Trial]) -> str:
    server = median(trials, lambda t: t.server_busy)
    loads = [statistics.median(column) for column in zip(*(t.load_busy for t in trials), strict=True)]
    shares = f"{trials[0].kind} main thread {server:.0%}, load processes " + "/".join(
        f"{b:.0%}" for b in loads
    )
    if max(loads) >= SATURATED:
        return f"a load process saturated ({shares}); the rate is a floor"
    if server >= SATURATED:
        return f"bottleneck: the {trials[0].kind} process ({shares})"
    machine, cores = median(trials, lambda t: t.machine_busy), os.cpu_count() or 1
    limit = "the shared CPU" if machine >= CPU_BOUND * cores else "hand-offs between processes"
    return (
        f"no process saturated a core ({shares}); machine {machine:.1f} of {cores} cores busy: limit {limit}"
    )


def context_note(plan: Plan, trials: list[Trial], context: tuple[float, float, int]) -> str:
    bursts = sorted({(t.label, t.clients, t.sent) for t in trials if t.kind == "edge" and not t.fixed_rate})
    counts = ", ".join(f"{label} N={clients}: {sent:,}" for label, clients, sent in bursts)
    return (
        f"messages per burst: {counts}; {plan.load_procs} load processes per server (fewer if N is smaller); "
        f"load average {context[0]:.2f} before, {context[1]:.2f} after; open-files limit {context[2]:,}; "
        "cpu_per_delivery counts every thread of edge + router (or relay); kB = 1000 bytes; "
        + placement_text(plan)
    )


def placement_text(plan: Plan) -> str:
    place = plan.placement
    if place.server is None:
        return "processes on any CPU"
    return (
        f"the edge (or relay) alone on CPU {_cpus(place.server)}; router, producer and load processes "
        f"on CPU {_cpus(place.others)} (--no-pin: any CPU)"
    )


def _cpus(cpus: frozenset[int] | None) -> str:
    return ",".join(map(str, sorted(cpus or ())))
