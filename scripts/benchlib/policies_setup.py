"""What every ``scripts/bench policies`` scenario shares: its plan, the router's topics, the router +
edge stack, the client and producer children, and probes that prove a subscription is live."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

import zmq

from benchlib import stamped_producer, ws_raw
from benchlib.edge_bench import ONE_HOST_EDGE_ARGS, TOPIC, Stack
from benchlib.procs import Child, ChildError, Children, python_module
from benchlib.report import Figure
from benchlib.router_bench import server_command

DATA_TOPIC = TOPIC
"""The best_effort topic of the isolation and memory scenarios (the topic ws_load clients watch)."""
LATEST_TOPIC = "/bench/video/latest"
BACKLOG_TOPIC = "/bench/video/backlog"
POLICY_KINDS = {DATA_TOPIC: "best_effort", LATEST_TOPIC: "latest", BACKLOG_TOPIC: "best_effort"}
START_TIMEOUT = 20.0
GRACE = 10.0
PROBE_INTERVAL = 0.02
PROBE_PAD = b"p" * 8

Findings = tuple[list[Figure], list[str]]
"""What one scenario adds to the report: figures, then notes."""


@dataclass(frozen=True)
class Plan:
    trials: int
    """A/B pairs of the isolation and latest scenarios."""
    seconds: float
    """Length of one isolation trial."""
    video_seconds: float
    """Length of one latest trial: long enough for the buffers before the viewer to fill."""
    memory_seconds: float
    clients: int
    load_procs: int

    @property
    def sample_interval(self) -> float:
        return min(1.0, self.memory_seconds / 20)


def write_router_config(directory: Path) -> Path:
    """A router TOML declaring the bench's topics, each with its policy kind and default bounds."""
    path = directory / "router.toml"
    tables = [
        f'[[topics.declare]]\npattern = "{topic}"\n\n[topics.declare.policy]\nkind = "{kind}"\n'
        for topic, kind in POLICY_KINDS.items()
    ]
    path.write_text("\n".join(tables), encoding="utf-8")
    return path


def start_stack(children: Children, config: Path, *edge_args: str) -> Stack:
    """The router with ``config`` and one WebSocket edge given ``edge_args``, on ports picked now."""
    router = children.start("router", [*server_command("router"), "--config", str(config)])
    endpoints = router.expect("ready", START_TIMEOUT)
    args = ["--announce", "--port", "0", "--log-level", "warning", *ONE_HOST_EDGE_ARGS, *edge_args]
    args += ["--control", endpoints["control"], "--xpub", endpoints["xpub"]]
    edge = children.start("edge", python_module("edges.websocket", *args))
    port = edge.expect("ready", START_TIMEOUT)["port"]
    return Stack("edge", endpoints["pull"], port, edge, [router])


def start_raw(children: Children, name: str, stack: Stack, topic: str, *args: str) -> Child:
    """A :mod:`benchlib.ws_raw` child, once its clients are subscribed and data reaches them."""
    command = python_module(ws_raw.__name__, "--port", str(stack.port), "--topic", topic, *args)
    child = children.start(name, command, stdin=True)
    child.expect("ready", START_TIMEOUT)
    probe_until_flowing(stack.pull, topic, child)
    return child


def probe_until_flowing(pull: str, topic: str, child: Child, timeout: float = START_TIMEOUT) -> None:
    """Send small stamped probes on ``topic`` until ``child`` says ``flowing``."""
    with zmq.Context() as context, context.socket(zmq.PUSH) as push:
        push.linger = 0
        push.connect(pull)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(zmq.Again):
                push.send_multipart([topic.encode(), stamped_producer.stamped(PROBE_PAD)], zmq.NOBLOCK)
            if child.next_event("flowing", PROBE_INTERVAL) is not None:
                return
    raise ChildError(f"{child.name}: no probe on {topic} arrived within {timeout:.0f} s{child.stderr_tail()}")


def start_producer(
    children: Children, pull: str, topic: str, size: int, rate: float, seconds: float
) -> Child:
    """A :mod:`benchlib.stamped_producer` sending ``size``-byte messages at ``rate`` for ``seconds``."""
    args = ["--pull", pull, "--topic", topic, "--size", str(size), "--count", str(round(rate * seconds))]
    args += ["--rate", str(rate), "--cap", str(seconds + GRACE)]
    return children.start("producer", python_module(stamped_producer.__name__, *args))
