"""``scripts/bench soak``: many idle subscribed WebSocket clients on one edge, a steady producer, for
a while, with everything on the same cores (and, with ``--busy``, a busy loop taking one of them).

It checks what an operator needs at that scale: the router never forgets the edge (no edge lost, by
reason), every client receives every message, and the router lists every client at the end. It
reports the largest heartbeat age the router saw for the edge while the run went on (sampled every
second from its ``/metrics``), and the most control messages the edge held for the router.
``tests/io/test_soak.py`` runs it behind ``--slow``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from benchlib.edge_bench import (
    ONE_HOST_EDGE_ARGS,
    START_TIMEOUT,
    Stack,
    arm,
    await_loads,
    producer_command,
    start_loads,
    wait_until_flowing,
)
from benchlib.procs import Child, ChildError, Children, cpu_times, python_module, raise_open_files_limit
from benchlib.report import Figure, Report
from benchlib.router_bench import server_command

HELP = "many idle clients on one edge for a while: no edge lost, every message to every client"
CONFIG = """
[limits]
max_clients = {max_clients}
max_subscribers_per_topic = {max_clients}
"""
SAMPLE_EVERY = 1.0
DRAIN_FACTOR = 3
"""Clients may take this many times the producer's run to get every message: an edge that falls
behind shows as a span longer than the run, not as loss."""
BUSY = "import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    pass\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=10.0, help="messages per second")
    parser.add_argument("--size", type=int, default=100, help="payload bytes")
    parser.add_argument("--load-procs", type=int, default=2, help="processes that hold the clients")
    parser.add_argument("--busy", action="store_true", help="a busy loop takes one core for the run")


@dataclass
class Soak:
    """What one run saw."""

    clients: int
    sent: int = 0
    complete: int = 0
    closed: int = 0
    deliveries: int = 0
    edges_lost: dict[str, float] = field(default_factory=dict)
    listed_clients: float = 0.0
    max_heartbeat_age: float = 0.0
    edge_held_peak: float = 0.0
    span: float = 0.0
    """Seconds from the producer's first send to the last frame a client received."""
    cpu: dict[str, float] = field(default_factory=dict)
    """CPU seconds of each process over the run, by name (the load processes summed)."""

    @property
    def forgets(self) -> int:
        return int(sum(self.edges_lost.values()))


def run(args: argparse.Namespace) -> Report:
    soak = soak_once(args.clients, args.seconds, args.rate, args.size, args.load_procs, args.busy)
    report = Report(
        f"soak: {args.clients} clients, {args.rate:g} msg/s x {args.size} B for {args.seconds:g} s"
    )
    report.figures += [
        Figure("clients that got every message", soak.complete, "clients", soak.clients),
        Figure("deliveries", soak.deliveries, "frames", soak.sent * soak.clients),
        Figure("edges lost by the router", soak.forgets, "edges"),
        Figure("clients the router lists at the end", soak.listed_clients, "clients", soak.clients),
        Figure("largest edge heartbeat age at the router", soak.max_heartbeat_age, "s"),
        Figure("most control messages the edge held", soak.edge_held_peak, "messages"),
        Figure("from the first send to the last frame", soak.span, "s", args.seconds),
        *[
            Figure(f"{name} CPU over that span", seconds / soak.span, "cores")
            for name, seconds in soak.cpu.items()
        ],
    ]
    report.notes.append(f"edges lost by reason: {soak.edges_lost or 'none'}; clients closed: {soak.closed}")
    if args.busy:
        report.notes.append("a busy loop took one core for the whole run")
    return report


def soak_once(clients: int, seconds: float, rate: float, size: int, procs: int, busy: bool) -> Soak:
    """One run on fresh processes; raises :class:`ChildError` if a process fails."""
    raise_open_files_limit()
    soak = Soak(clients)
    with tempfile.TemporaryDirectory() as scratch, Children() as children:
        config = Path(scratch) / "router.toml"
        config.write_text(CONFIG.format(max_clients=clients + 1_000), encoding="utf-8")
        stack, metrics = start(children, config, clients)
        start_loads(children, stack, clients, procs)
        await_loads(stack, clients)
        wait_until_flowing(stack, timeout=START_TIMEOUT + clients / 500)
        if busy:
            children.start("busy loop", [sys.executable, "-c", BUSY.format(seconds=seconds + 30)])
        count = round(rate * seconds)
        arm(stack.loads, expected=count, size=size, idle=15.0, cap=DRAIN_FACTOR * seconds + 30)
        before = {name: cpu_times(child.pid).process for name, child in processes(stack).items()}
        producer = children.start("producer", producer_command(stack.pull, size, count, rate, seconds + 10))
        deadline = time.monotonic() + seconds + 30
        while (sent := producer.next_event("done", SAMPLE_EVERY)) is None:
            sample(soak, metrics)
            if time.monotonic() > deadline:
                raise ChildError("the producer did not finish")
        soak.sent = sent["sent"]
        received = [load.expect("done", DRAIN_FACTOR * seconds + 40) for load in stack.loads]
        soak.complete = sum(done["complete"] for done in received)
        soak.closed = sum(done["closed"] for done in received)
        soak.deliveries = sum(done["frames"] for done in received)
        soak.span = max(1e-9, (max(done["last_ns"] for done in received) - sent["first_ns"]) / 1e9)
        after = {name: cpu_times(child.pid).process for name, child in processes(stack).items()}
        soak.cpu = {"edge": after["edge"] - before["edge"], "router": after["router"] - before["router"]}
        soak.cpu["load processes"] = sum(done["cpu"] for done in received)
        sample(soak, metrics)
        soak.edge_held_peak = edge_held_peak(stack)
    return soak


def processes(stack: Stack) -> dict[str, Child]:
    return {"edge": stack.server, "router": stack.helpers[0]}


def start(children: Children, config: Path, clients: int) -> tuple[Stack, str]:
    """The router (with ``/metrics``) and one WebSocket edge sized for ``clients``."""
    router = children.start(
        "router", [*server_command("router"), "--config", str(config), "--metrics", "127.0.0.1:0"]
    )
    endpoints = router.expect("ready", START_TIMEOUT)
    args = ["--announce", "--port", "0", "--log-level", "warning", *ONE_HOST_EDGE_ARGS]
    args += ["--max-connections", str(clients + 100)]
    args += ["--control", endpoints["control"], "--xpub", endpoints["xpub"]]
    edge = children.start("edge", python_module("edges.websocket", *args))
    port = edge.expect("ready", START_TIMEOUT)["port"]
    return Stack("edge", endpoints["pull"], port, edge, [router]), endpoints["metrics"]


def sample(soak: Soak, address: str) -> None:
    """Read the router's ``/metrics`` into ``soak``."""
    lost: dict[str, float] = {}
    listed = 0.0
    for found in metric_samples(address):
        if found.name == "switchboard_router_edges_lost_total":
            lost[found.labels["reason"]] = found.value
        elif found.name == "switchboard_router_clients":
            listed += found.value
        elif found.name == "switchboard_router_edge_heartbeat_age_seconds":
            soak.max_heartbeat_age = max(soak.max_heartbeat_age, found.value)
    soak.edges_lost = {reason: n for reason, n in lost.items() if n}
    soak.listed_clients = listed


def edge_held_peak(stack: Stack) -> float:
    """The most control messages the edge held, from its ``/metrics`` (its client port)."""
    wanted = "switchboard_edge_router_control_held_peak"
    return next(
        (found.value for found in metric_samples(f"127.0.0.1:{stack.port}") if found.name == wanted), 0.0
    )


def metric_samples(address: str) -> Iterator[Sample]:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        yield from family.samples
