"""``scripts/bench edge``: router + WebSocket edge beside a plain ``websockets.broadcast`` relay.

For each client count N, fresh processes start on 127.0.0.1 on ports picked at run time: the
router and the WebSocket edge, the relay (:mod:`benchlib.ws_relay`), and for each of the two
servers k load processes (:mod:`benchlib.ws_load`) holding N/k connections. The edge's and the
relay's RSS is read before the N clients connect (and subscribe) and after, while they are idle.
Probes are sent until every client got one. Then trials alternate between the two servers: a burst
of M messages from one :mod:`benchlib.stamped_producer` (M x N is bounded per payload size), timed
from its first send to the last frame any client received; at N = 100 (or the largest N below it)
also trials at a fixed 1,000 msg/s. Each payload carries its send time, so every client computes
each frame's latency. Every figure is a median over trials; see :mod:`benchlib.edge_summary`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import zmq

from benchlib import stamped_producer, ws_load, ws_relay
from benchlib.edge_summary import KINDS, SIZES, Memory, Trial, Usage, progress, summarize
from benchlib.procs import (
    Child,
    ChildError,
    Children,
    MachineTicks,
    cpu_split,
    cpu_times,
    load_average,
    python_module,
    raise_open_files_limit,
    rss_bytes,
    run_queue_wait,
)
from benchlib.report import Report
from benchlib.router_bench import server_command

HELP = "WebSocket deliveries/s, latency, idle memory: router + edge vs a websockets.broadcast relay"
TOPIC = "/bench/data"
CLIENTS = (1, 100, 1000)
DELIVERIES = {"100B": 400_000, "64KiB": 16_000}
MESSAGE_BOUNDS = {"100B": (500, 40_000), "64KiB": (20, 4_000)}
FIXED_RATE = 1_000.0
FIXED_RATE_CLIENTS = 100
FIXED_RATE_LABEL = "100B"
PROBE_SIZE = 16
START_TIMEOUT = 20.0
CONNECTS_PER_S = 100
GRACE = 10.0
PROBE_INTERVAL = 0.02
SETTLE = 0.5


@dataclass(frozen=True)
class Plan:
    trials: int
    clients: tuple[int, ...]
    load_procs: int
    scale: float
    cap: float
    idle: float
    rate_seconds: float
    placement: Placement = field(default_factory=lambda: Placement())

    def messages(self, label: str, clients: int) -> int:
        """M for one burst: about DELIVERIES x scale deliveries, within the bounds for the size."""
        low, high = MESSAGE_BOUNDS[label]
        wanted = round(DELIVERIES[label] * self.scale / clients)
        return max(low, min(round(high * self.scale), wanted))

    @property
    def rate_clients(self) -> int:
        return min(FIXED_RATE_CLIENTS, max(self.clients))

    @property
    def groups(self) -> list[int]:
        return sorted({*self.clients, self.rate_clients})


@dataclass(frozen=True)
class Placement:
    """The CPUs of the server under test, and those of every other process (``None``: any)."""

    server: frozenset[int] | None = None
    others: frozenset[int] | None = None


def placement(pin: bool) -> Placement:
    """With ``pin``, the server under test gets a CPU of its own (if there are two or more)."""
    split = cpu_split() if pin else None
    return Placement(*split) if split else Placement()


@dataclass
class Stack:
    """One server under test, the children it needs, and its load processes."""

    kind: str
    pull: str
    port: int
    server: Child
    helpers: list[Child] = field(default_factory=list)
    placement: Placement = field(default_factory=Placement)
    loads: list[Child] = field(default_factory=list)
    shares: list[int] = field(default_factory=list)
    """How many connections each load process holds."""

    @property
    def clients(self) -> int:
        return sum(self.shares)

    def usage(self) -> Usage:
        helpers = sum(cpu_times(child.pid).process for child in self.helpers)
        waits = tuple(run_queue_wait(load.pid) for load in self.loads)
        return Usage(cpu_times(self.server.pid), helpers, run_queue_wait(self.server.pid), waits)


# ---------------------------------------------------------------- command line and plan


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trials", type=int, help="trials per case (default 3; 2 with --quick)")
    parser.add_argument(
        "--clients", type=_client_counts, help="client counts N, comma-separated (1,100,1000)"
    )
    parser.add_argument("--load-procs", type=int, help="load processes per server (default: cores, >= 2)")
    parser.add_argument("--scale", type=float, help="scale messages per burst (default 1; 0.25 with --quick)")
    parser.add_argument("--cap", type=float, help="wall-clock cap per trial, seconds (default 30; 15 quick)")
    parser.add_argument(
        "--rate-seconds", type=float, help="length of a fixed-rate trial (default 10; 3 quick)"
    )
    parser.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the server under test (edge or relay) on CPU 0 alone, everything else on the others",
    )


def _client_counts(text: str) -> tuple[int, ...]:
    counts = tuple(int(word) for word in text.split(","))
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("client counts are positive integers")
    return counts


def plan_from(args: argparse.Namespace) -> Plan:
    return Plan(
        trials=args.trials or (2 if args.quick else 3),
        clients=args.clients or CLIENTS,
        load_procs=args.load_procs or max(2, os.cpu_count() or 1),
        scale=args.scale or (0.25 if args.quick else 1.0),
        cap=args.cap or (15.0 if args.quick else 30.0),
        idle=1.0 if args.quick else 2.0,
        rate_seconds=args.rate_seconds or (3.0 if args.quick else 10.0),
        placement=placement(args.pin),
    )


def run(args: argparse.Namespace) -> Report:
    plan = plan_from(args)
    files = raise_open_files_limit()
    loads = [load_average()]
    trials: list[Trial] = []
    memory: list[Memory] = []
    for clients in plan.groups:
        group_trials, group_memory = run_group(clients, plan)
        trials += group_trials
        memory += group_memory
    loads.append(load_average())
    return summarize(plan, trials, memory, (loads[0], loads[1], files))


# ---------------------------------------------------------------- one client count


def run_group(clients: int, plan: Plan) -> tuple[list[Trial], list[Memory]]:
    """Fresh servers and load processes for N clients; returns its trials and memory figures."""
    with Children() as children:
        stacks = {
            "edge": start_edge(children, plan.placement),
            "batched": start_edge(children, plan.placement, kind="batched"),
            "relay": start_relay(children, plan.placement),
        }
        idle_rss = {kind: rss_bytes(stack.server.pid) for kind, stack in stacks.items()}
        for stack in stacks.values():
            start_loads(children, stack, clients, plan.load_procs)
        for stack in stacks.values():
            await_loads(stack, clients)
        time.sleep(SETTLE)
        memory = [
            Memory(kind, clients, idle_rss[kind], rss_bytes(stack.server.pid))
            for kind, stack in stacks.items()
        ]
        for stack in stacks.values():
            wait_until_flowing(stack)
        trials = run_trials(children, stacks, clients, plan)
    return trials, memory


def run_trials(children: Children, stacks: dict[str, Stack], clients: int, plan: Plan) -> list[Trial]:
    """Alternate the servers, and which goes first, so drift on a shared machine hits both."""
    trials: list[Trial] = []
    for index in range(plan.trials):
        kinds = KINDS if index % 2 == 0 else KINDS[::-1]
        for label, count, rate in cases(clients, plan):
            for kind in kinds:
                trial = run_trial(children, stacks[kind], label, count, rate, plan)
                print(
                    f"[N={clients} {index + 1}/{plan.trials}] {progress(trial)}", file=sys.stderr, flush=True
                )
                trials.append(trial)
    return trials


def cases(clients: int, plan: Plan) -> list[tuple[str, int, float]]:
    """(size label, messages, fixed rate or 0) of each trial at this client count."""
    found = (
        [(label, plan.messages(label, clients), 0.0) for label in SIZES] if clients in plan.clients else []
    )
    if clients == plan.rate_clients:
        found.append((FIXED_RATE_LABEL, round(FIXED_RATE * plan.rate_seconds), FIXED_RATE))
    return found


# ---------------------------------------------------------------- processes


ONE_HOST_EDGE_ARGS = ("--max-connections-per-ip", "100000")
"""Every load client connects from 127.0.0.1, so the edge's per-address limit must not apply."""


def start_edge(children: Children, place: Placement, kind: str = "edge") -> Stack:
    """A router and a WebSocket edge; ``kind`` ``batched``: its clients ask for batches."""
    router = children.start(f"{kind} router", server_command("router"), cpus=place.others)
    endpoints = router.expect("ready", START_TIMEOUT)
    args = ["--announce", "--port", "0", "--log-level", "warning", *ONE_HOST_EDGE_ARGS]
    args += ["--control", endpoints["control"], "--xpub", endpoints["xpub"]]
    edge = children.start(kind, python_module("edges.websocket", *args), cpus=place.server)
    port = edge.expect("ready", START_TIMEOUT)["port"]
    return Stack(kind, endpoints["pull"], port, edge, [router], place)


def start_relay(children: Children, place: Placement) -> Stack:
    relay = children.start("relay", python_module(ws_relay.__name__), cpus=place.server)
    ready = relay.expect("ready", START_TIMEOUT)
    return Stack("relay", ready["pull"], ready["port"], relay, placement=place)


def start_loads(children: Children, stack: Stack, clients: int, procs: int) -> None:
    for index, share in enumerate(split(clients, min(clients, procs))):
        args = [
            "--port",
            str(stack.port),
            "--mode",
            stack.kind,
            "--connections",
            str(share),
            "--topic",
            TOPIC,
        ]
        load = children.start(
            f"{stack.kind} load {index}",
            python_module(ws_load.__name__, *args),
            stdin=True,
            cpus=stack.placement.others,
        )
        stack.loads.append(load)
        stack.shares.append(share)


def split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if index < total % parts else 0) for index in range(parts)]


def await_loads(stack: Stack, clients: int) -> None:
    for load in stack.loads:
        load.expect("ready", START_TIMEOUT + clients / CONNECTS_PER_S)


def producer_command(pull: str, size: int, count: int, rate: float, cap: float) -> list[str]:
    args = ["--pull", pull, "--topic", TOPIC, "--size", str(size), "--count", str(count)]
    args += ["--rate", str(rate), "--cap", str(cap)]
    return python_module(stamped_producer.__name__, *args)


# ---------------------------------------------------------------- trials


def arm(loads: list[Child], **command: Any) -> None:
    for load in loads:
        load.send({"cmd": "trial", **command})
    for load in loads:
        load.expect("armed", START_TIMEOUT)


def wait_until_flowing(stack: Stack, timeout: float = START_TIMEOUT) -> None:
    """Send probes until every client got one: each subscription is then live end to end."""
    arm(stack.loads, expected=1, size=PROBE_SIZE, idle=timeout, cap=timeout)
    pending = list(zip(stack.loads, stack.shares, strict=True))
    with zmq.Context() as context, context.socket(zmq.PUSH) as push:
        push.linger = 0
        push.connect(stack.pull)
        deadline = time.monotonic() + timeout + GRACE
        while pending and time.monotonic() < deadline:
            with contextlib.suppress(zmq.Again):
                push.send_multipart([TOPIC.encode(), stamped_producer.stamped(b"p" * 8)], zmq.NOBLOCK)
            wait = PROBE_INTERVAL / len(pending)
            pending = [(load, share) for load, share in pending if not _probed(load, share, wait)]
    if pending:
        raise ChildError(f"{stack.kind}: probes did not reach every client within {timeout:.0f} s")


def _probed(load: Child, connections: int, timeout: float) -> bool:
    """Whether every client of ``load`` got a probe; an incomplete report is an error."""
    done = load.next_event("done", timeout)
    if done is not None and done["complete"] < connections:
        lost = f"{done['complete']} of {connections} clients got a probe, {done['closed']} closed"
        raise ChildError(f"{load.name}: {lost}{load.stderr_tail()}")
    return done is not None


def run_trial(children: Children, stack: Stack, label: str, count: int, rate: float, plan: Plan) -> Trial:
    size = SIZES[label]
    arm(stack.loads, expected=count, size=size, idle=plan.idle, cap=plan.cap)
    before, machine = stack.usage(), MachineTicks.now()
    producer = children.start(
        "producer", producer_command(stack.pull, size, count, rate, plan.cap), cpus=stack.placement.others
    )
    sent = producer.expect("done", plan.cap + GRACE)
    received = [load.expect("done", plan.cap + GRACE) for load in stack.loads]
    used = stack.usage() - before
    machine_busy = MachineTicks.now().cores_busy_since(machine)
    producer.stop()
    return measure(stack, label, sent, received, used, rate, machine_busy)


def measure(
    stack: Stack,
    label: str,
    sent: dict[str, Any],
    received: list[dict[str, Any]],
    used: Usage,
    rate: float,
    machine_busy: float,
) -> Trial:
    last = max(done["last_ns"] for done in received)
    if not last:
        raise ChildError(f"{stack.kind} {label}: no client received a data frame")
    latency: Counter[int] = Counter()
    for done in received:
        latency.update({value: count for value, count in done["latency_us"]})
    return Trial(
        kind=stack.kind,
        label=label,
        clients=stack.clients,
        fixed_rate=rate,
        sent=sent["sent"],
        deliveries=sum(done["frames"] for done in received),
        reads=sum(done["reads"] for done in received),
        window=(last - sent["first_ns"]) / 1e9,
        latency_us=latency,
        usage=used,
        load_cpu=tuple(done["cpu"] for done in received),
        closed=sum(done["closed"] for done in received),
        machine_busy=machine_busy,
    )
