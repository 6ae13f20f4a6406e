"""``scripts/bench cluster``, cost: the router's CPU per message in cluster mode beside in-memory mode.

Each trial starts fresh processes on 127.0.0.1 with ports picked at run time: in cluster mode a
redis-server of the trial's own and ONE router (it owns every shard: the trial waits until it holds
every lease), in memory mode the router alone; then one :mod:`benchlib.receiver` subscribed through
the control socket, probes until one arrives, and one :mod:`benchlib.producer` pushing flat out.
The router's CPU (every thread, from ``/proc``) is read from the first probe that arrived to the
receiver's end. Modes alternate, and which goes first, so drift on a shared machine hits both; on a
``reliable`` topic (:data:`benchlib.cluster_setup.RELIABLE_PATTERN`) and a ``best_effort`` one. In
cluster mode the producer outruns the Redis writes of a reliable topic: the messages wait in the
router (:data:`MAX_PENDING` may), none is dropped, and the receiver gets them as their batches are
written.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchlib import producer
from benchlib.cluster_setup import ClusterWatch, router_drops, start_redis, start_router, write_config
from benchlib.procs import Children, cpu_times, python_module
from benchlib.report import Figure
from benchlib.router_bench import GRACE, TOPIC, receiver_command, wait_until_flowing

MODES = ("cluster", "memory")
POLICIES = ("best_effort", "reliable")
TARGETS = {"best_effort": 1.1, "reliable": 2.0}
"""Cluster-mode CPU per message over in-memory mode, at most."""
SIZE = 100
MAX_PENDING = 2_000_000
"""``[cluster] max_pending_messages`` of the trials: a producer faster than the Redis writes makes
reliable messages wait, and none may be dropped, so that every message's cost is counted."""


@dataclass(frozen=True)
class Plan:
    trials: int
    messages: int
    cap: float


@dataclass(frozen=True)
class Trial:
    mode: str
    policy: str
    sent: int
    received: int
    rate: float
    router_cpu: float
    redis_cpu: float
    drops: dict[str, int]
    """The router's drop counters at the end."""

    @property
    def cpu_us_per_message(self) -> float:
        return 1e6 * self.router_cpu / self.sent if self.sent else 0.0

    @property
    def redis_us_per_message(self) -> float:
        return 1e6 * self.redis_cpu / self.sent if self.sent else 0.0

    @property
    def delivered(self) -> float:
        return self.received / self.sent if self.sent else 0.0


def run(plan: Plan) -> tuple[list[Figure], list[str]]:
    trials: list[Trial] = []
    for index in range(plan.trials):
        modes = MODES if index % 2 == 0 else MODES[::-1]
        for policy in POLICIES:
            for mode in modes:
                trial = run_trial(mode, policy, plan)
                print(f"cost [{index + 1}/{plan.trials}] {progress(trial)}", file=sys.stderr, flush=True)
                trials.append(trial)
    return summarize(trials)


def progress(trial: Trial) -> str:
    return (
        f"{trial.policy} {trial.mode}: router {trial.cpu_us_per_message:.2f} us/msg, redis "
        f"{trial.redis_us_per_message:.2f} us/msg, {trial.rate:,.0f} msg/s, delivered {trial.delivered:.1%}"
    )


def run_trial(mode: str, policy: str, plan: Plan) -> Trial:
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as directory, Children() as children:
        redis = start_redis(children, Path(directory)) if mode == "cluster" else None
        config = write_config(
            Path(directory) / "router.toml",
            redis.url if redis else None,
            reliable=policy == "reliable",
            max_pending_messages=MAX_PENDING,
        )
        router, endpoints = start_router(children, "router", config)
        if redis is not None:
            watch = ClusterWatch(redis.client)
            watch.wait_placed([watch.router_id(endpoints["pull"])])
        command = receiver_command("router", endpoints, SIZE, plan.messages, plan.cap)
        sink = children.start("receiver", command)
        wait_until_flowing(endpoints["pull"], sink)
        router_before = cpu_times(router.pid).process
        redis_before = cpu_times(redis.pid).process if redis else 0.0
        args = ["--pull", endpoints["pull"], "--topic", TOPIC, "--size", str(SIZE)]
        args += ["--count", str(plan.messages), "--cap", str(plan.cap)]
        source = children.start("producer", python_module(producer.__name__, *args))
        received = sink.expect("done", plan.cap + GRACE)
        sent = source.expect("done", plan.cap + GRACE)
        router_cpu = cpu_times(router.pid).process - router_before
        redis_cpu = cpu_times(redis.pid).process - redis_before if redis else 0.0
        drops = router_drops(endpoints)
    window = received["span"]["wall"]
    return Trial(
        mode=mode,
        policy=policy,
        sent=sent["sent"],
        received=received["received"],
        rate=received["timed"] / window if window > 0 else 0.0,
        router_cpu=router_cpu,
        redis_cpu=redis_cpu,
        drops=drops,
    )


def summarize(trials: list[Trial]) -> tuple[list[Figure], list[str]]:
    figures: list[Figure] = []
    notes: list[str] = []
    for policy in POLICIES:
        cluster = [t for t in trials if t.policy == policy and t.mode == "cluster"]
        memory = [t for t in trials if t.policy == policy and t.mode == "memory"]
        if not cluster or not memory:
            continue
        found = policy_figures(policy, cluster, memory)
        figures += found
        notes.append(verdict(policy, found[1].value))
        notes += drop_notes(policy, cluster + memory)
    return figures, notes


_METRICS: list[tuple[str, str, Callable[[Trial], float]]] = [
    ("msgs_per_s", "msg/s", lambda t: t.rate),
    ("delivered", "fraction", lambda t: t.delivered),
]


def policy_figures(policy: str, cluster: list[Trial], memory: list[Trial]) -> list[Figure]:
    """The router's CPU per message (cluster beside memory), its ratio beside the target, then
    Redis's CPU per message and the context figures."""
    cost = Figure(
        f"cluster.cost.{policy}.router_cpu_per_msg",
        median(cluster, lambda t: t.cpu_us_per_message),
        "us CPU/msg",
        median(memory, lambda t: t.cpu_us_per_message),
    )
    found = [
        cost,
        Figure(f"cluster.cost.{policy}.vs_memory", cost.ratio or 0.0, "x in-memory CPU/msg"),
        Figure(
            f"cluster.cost.{policy}.redis_cpu_per_msg",
            median(cluster, lambda t: t.redis_us_per_message),
            "us CPU/msg",
        ),
    ]
    found += [
        Figure(f"cluster.cost.{policy}.{name}", median(cluster, metric), unit, median(memory, metric))
        for name, unit, metric in _METRICS
    ]
    return found


def verdict(policy: str, ratio: float) -> str:
    target = TARGETS[policy]
    met = "met" if ratio <= target else "NOT met"
    return (
        f"cost, {policy}: the router spends {ratio:.2f}x the CPU per message of in-memory mode in "
        f"cluster mode (one router owning every shard); target <= {target}x: {met}"
    )


def drop_notes(policy: str, trials: list[Trial]) -> list[str]:
    """What the routers dropped, if anything: those messages cost less than the others."""
    found = []
    for trial in trials:
        if dropped := {reason: count for reason, count in trial.drops.items() if count}:
            found.append(f"cost, {policy} {trial.mode}: the router dropped {dropped} in a trial")
    return found


def median(trials: list[Trial], metric: Callable[[Trial], float]) -> float:
    return statistics.median(metric(trial) for trial in trials)
