"""``scripts/bench router``: the router's throughput beside a bare pyzmq forwarder.

Each trial starts fresh processes on 127.0.0.1 with ports picked at run time: the server (the real
router, or :mod:`benchlib.forwarder`), one :mod:`benchlib.receiver` and the
:mod:`benchlib.producer` processes. The receiver subscribes (through the router's control socket
when the server is the router), probes are sent until one arrives, and only then the producers
start. Router and forwarder trials alternate, and every figure is a median over trials.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq

from benchlib import forwarder, producer, receiver
from benchlib.procs import (
    Child,
    ChildError,
    Children,
    CpuTimes,
    MachineTicks,
    cpu_times,
    load_average,
    python_module,
)
from benchlib.report import Figure, Report
from router.config import RouterSection

HELP = "messages/s through the router process vs a bare pyzmq PULL->PUB forwarder"
TOPIC = "/bench/data"
PROBE = b"probe"
TARGET = 0.8
SATURATED = 0.9
CPU_BOUND = 0.75
SIZES = {"100B": 100, "64KiB": 64 * 1024}
MESSAGES = {"100B": 200_000, "64KiB": 20_000}
KINDS = ("router", "forwarder")
LOOPBACK_ANY_PORT = "tcp://127.0.0.1:0"
START_TIMEOUT = 20.0
GRACE = 10.0
PROBE_INTERVAL = 0.02


@dataclass(frozen=True)
class Plan:
    trials: int
    producers: int
    cap: float
    messages: dict[str, int]


@dataclass(frozen=True)
class Trial:
    """One run of one server with one payload size; ``*_busy`` is main-thread CPU / receive window."""

    kind: str
    label: str
    sent: int
    received: int
    rate: float
    server_cpu: CpuTimes
    server_busy: float
    producer_busy: float
    receiver_busy: float
    cores_busy: float
    machine_busy: float

    @property
    def delivered(self) -> float:
        return self.received / self.sent if self.sent else 0.0

    @property
    def cpu_us_per_message(self) -> float:
        return 1e6 * self.server_cpu.process / self.sent if self.sent else 0.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trials", type=int, help="trials per server and size (default 5; 2 with --quick)")
    parser.add_argument("--producers", type=int, default=1, help="producer processes per trial (default 1)")
    parser.add_argument("--scale", type=float, help="scale messages per trial (200k x 100 B, 20k x 64 KiB)")
    parser.add_argument("--cap", type=float, help="wall-clock cap per trial, seconds (default 30)")


def plan_from(args: argparse.Namespace) -> Plan:
    scale = args.scale or (0.1 if args.quick else 1.0)
    return Plan(
        trials=args.trials or (2 if args.quick else 5),
        producers=args.producers,
        cap=args.cap or (10.0 if args.quick else 30.0),
        messages={label: max(2_000, round(count * scale)) for label, count in MESSAGES.items()},
    )


def run(args: argparse.Namespace) -> Report:
    plan = plan_from(args)
    load_before = load_average()
    trials = run_trials(plan)
    return summarize(plan, trials, (load_before, load_average()))


def run_trials(plan: Plan) -> list[Trial]:
    """Alternate the servers, and which one goes first, so drift on a shared machine hits both."""
    trials: list[Trial] = []
    for index in range(plan.trials):
        kinds = KINDS if index % 2 == 0 else KINDS[::-1]
        for label in SIZES:
            for kind in kinds:
                trial = run_trial(kind, label, plan)
                print(f"[{index + 1}/{plan.trials}] {progress(trial)}", file=sys.stderr, flush=True)
                trials.append(trial)
    return trials


def progress(trial: Trial) -> str:
    return (
        f"{trial.label} {trial.kind}: {trial.rate:,.0f} msg/s, delivered {trial.delivered:.1%}, "
        f"server {trial.cpu_us_per_message:.1f} us/msg, busy: server {trial.server_busy:.0%} "
        f"producer {trial.producer_busy:.0%} receiver {trial.receiver_busy:.0%}"
    )


def run_trial(kind: str, label: str, plan: Plan) -> Trial:
    size, count = SIZES[label], plan.messages[label]
    with Children() as children:
        server = children.start(kind, server_command(kind))
        endpoints = server.expect("ready", START_TIMEOUT)
        expected = count * plan.producers
        sink = children.start("receiver", receiver_command(kind, endpoints, size, expected, plan.cap))
        wait_until_flowing(endpoints["pull"], sink)
        before, machine = cpu_times(server.pid), MachineTicks.now()
        command = producer_command(endpoints["pull"], size, count, plan.cap)
        sources = [children.start(f"producer {n}", command) for n in range(plan.producers)]
        received = sink.expect("done", plan.cap + GRACE)
        sent = [source.expect("done", plan.cap + GRACE) for source in sources]
        used = cpu_times(server.pid) - before
        machine_busy = MachineTicks.now().cores_busy_since(machine)
    return measure(kind, label, received, sent, used, machine_busy)


def server_command(kind: str) -> list[str]:
    if kind == "router":
        sockets = ("pull", "xsub", "xpub", "control")
        options = [word for name in sockets for word in (f"--{name}", LOOPBACK_ANY_PORT)]
        return python_module("router", "--announce", "--admin", "127.0.0.1:0", *options)
    section = RouterSection()
    hwms = ("--rcvhwm", str(section.ingest_hwm), "--sndhwm", str(section.fanout_hwm))
    return python_module(forwarder.__name__, *hwms)


def receiver_command(kind: str, endpoints: dict[str, Any], size: int, expected: int, cap: float) -> list[str]:
    args = ["--xpub", endpoints["xpub"], "--topic", TOPIC, "--size", str(size)]
    args += ["--expected", str(expected), "--cap", str(cap)]
    if kind == "router":
        args += ["--control", endpoints["control"]]
    return python_module(receiver.__name__, *args)


def producer_command(pull: str, size: int, count: int, cap: float) -> list[str]:
    args = ["--pull", pull, "--topic", TOPIC, "--size", str(size), "--count", str(count), "--cap", str(cap)]
    return python_module(producer.__name__, *args)


def wait_until_flowing(pull: str, sink: Child, timeout: float = START_TIMEOUT) -> None:
    """Send probes until the receiver reports one: the subscription is then live end to end."""
    with zmq.Context() as context, context.socket(zmq.PUSH) as push:
        push.linger = 0
        push.connect(pull)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(zmq.Again):
                push.send_multipart([TOPIC.encode(), PROBE], zmq.NOBLOCK)
            if sink.next_event("probe", PROBE_INTERVAL) is not None:
                return
    raise ChildError(f"no probe reached the receiver within {timeout:.0f} s{sink.stderr_tail()}")


def measure(
    kind: str,
    label: str,
    received: dict[str, Any],
    sent: list[dict[str, Any]],
    used: CpuTimes,
    machine_busy: float,
) -> Trial:
    span = received["span"]
    window = span["wall"]
    if window <= 0:
        raise ChildError(f"{label} {kind}: the receiver got {received['received']} messages in one batch")
    harness_cpu = span["process_cpu"] + sum(done["process_cpu"] for done in sent)
    return Trial(
        kind=kind,
        label=label,
        sent=sum(done["sent"] for done in sent),
        received=received["received"],
        rate=received["timed"] / window,
        server_cpu=used,
        server_busy=used.main_thread / window,
        producer_busy=max(done["thread_cpu"] / done["wall"] for done in sent),
        receiver_busy=span["thread_cpu"] / window,
        cores_busy=(used.process + harness_cpu) / window,
        machine_busy=machine_busy,
    )


def summarize(plan: Plan, trials: list[Trial], loads: tuple[float, float]) -> Report:
    title = (
        f"scripts/bench router: {plan.trials} trial(s) per server and size, alternating, "
        f"{plan.producers} producer(s) -> server -> 1 SUB receiver on 127.0.0.1; medians"
    )
    report = Report(title)
    for label in SIZES:
        router = [t for t in trials if t.label == label and t.kind == "router"]
        baseline = [t for t in trials if t.label == label and t.kind == "forwarder"]
        report.figures += figures(label, router, baseline)
        report.notes += notes(label, router, baseline)
    report.notes.append(context_note(plan, loads))
    return report


_METRICS: list[tuple[str, str, Callable[[Trial], float]]] = [
    ("msgs_per_s", "msg/s", lambda t: t.rate),
    ("delivered", "fraction", lambda t: t.delivered),
    ("cpu_per_msg", "us CPU/msg", lambda t: t.cpu_us_per_message),
    ("server_busy", "% of a core", lambda t: 100 * t.server_busy),
    ("producer_busy", "% of a core", lambda t: 100 * t.producer_busy),
    ("receiver_busy", "% of a core", lambda t: 100 * t.receiver_busy),
    ("bench_cores_busy", "cores", lambda t: t.cores_busy),
    ("machine_cores_busy", "cores", lambda t: t.machine_busy),
]


def figures(label: str, router: list[Trial], baseline: list[Trial]) -> list[Figure]:
    found = [
        Figure(f"router.{label}.{name}", median(router, metric), unit, median(baseline, metric))
        for name, unit, metric in _METRICS
    ]
    ratio = found[0].ratio or 0.0
    found.insert(1, Figure(f"router.{label}.vs_forwarder", ratio, "x forwarder rate", TARGET))
    return found


def median(trials: list[Trial], metric: Callable[[Trial], float]) -> float:
    return statistics.median(metric(trial) for trial in trials)


def notes(label: str, router: list[Trial], baseline: list[Trial]) -> list[str]:
    ratio = median(router, lambda t: t.rate) / median(baseline, lambda t: t.rate)
    verdict = "met" if ratio >= TARGET else "NOT met"
    found = [f"{label}: router at {ratio:.2f}x the forwarder's rate; target >= {TARGET}x: {verdict}"]
    found += [f"{label} {trials[0].kind} trials: {bottleneck(trials)}" for trials in (router, baseline)]
    return found


def bottleneck(trials: list[Trial]) -> str:
    busy = {
        "server": median(trials, lambda t: t.server_busy),
        "producer": median(trials, lambda t: t.producer_busy),
        "receiver": median(trials, lambda t: t.receiver_busy),
    }
    shares = ", ".join(f"{name} {value:.0%}" for name, value in busy.items())
    name, value = max(busy.items(), key=lambda item: item[1])
    if value >= SATURATED and name == "server":
        return f"bottleneck: the server ({shares})"
    if value >= SATURATED:
        return f"bottleneck: the {name}, not the server ({shares}); these rates are a floor"
    ours, machine = median(trials, lambda t: t.cores_busy), median(trials, lambda t: t.machine_busy)
    total = os.cpu_count() or 1
    limit = "the shared CPU" if machine >= CPU_BOUND * total else "hand-offs between processes"
    return (
        f"no main thread saturated a core ({shares}); of {total} cores the bench processes kept "
        f"{ours:.1f} busy and the whole machine {machine:.1f}, so the limit is {limit}"
    )


def context_note(plan: Plan, loads: tuple[float, float]) -> str:
    counts = ", ".join(f"{count:,} x {label}" for label, count in plan.messages.items())
    return (
        f"per trial: {counts} per producer; load average {loads[0]:.2f} before, {loads[1]:.2f} after; "
        "'busy' is main-thread CPU over the receive window, cpu_per_msg counts every thread"
    )
