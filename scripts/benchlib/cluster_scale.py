"""``scripts/bench cluster``, scale: messages/s into two cluster routers beside one.

Each trial starts a redis-server of its own and one or two cluster routers on 127.0.0.1, with ports
picked at run time, and waits until every shard is held by the router that prefers it. Then, for
each of ``pairs`` pairs, a :mod:`benchlib.receiver` subscribes at a router through its control
socket to a topic of a shard that router owns (pair ``i`` at router ``i mod routers``), and once
probes reach every receiver, one :mod:`benchlib.producer` per pair PUSHes flat out to that router,
so no message is passed on to another router. The rate of a trial is every receiver's messages
over the time from the first receiver's first batch to the last one's last. One-router and
two-router trials alternate, and which goes first.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import zmq

from benchlib import producer, receiver
from benchlib.cluster_setup import ClusterWatch, start_redis, start_router, topic_of, write_config
from benchlib.procs import Child, ChildError, Children, MachineTicks, cpu_times, python_module
from benchlib.report import Figure
from benchlib.router_bench import GRACE, PROBE, PROBE_INTERVAL, START_TIMEOUT

ROUTERS = (2, 1)
SIZE = 100
TOPIC_PREFIX = "/scale"


@dataclass(frozen=True)
class Plan:
    trials: int
    pairs: int
    messages: int
    cap: float


@dataclass(frozen=True)
class Trial:
    routers: int
    sent: int
    received: int
    rate: float
    routers_busy: float
    """CPU seconds of every router over the receive window: cores."""
    machine_busy: float

    @property
    def delivered(self) -> float:
        return self.received / self.sent if self.sent else 0.0


def run(plan: Plan) -> tuple[list[Figure], list[str]]:
    trials: list[Trial] = []
    for index in range(plan.trials):
        for routers in ROUTERS if index % 2 == 0 else ROUTERS[::-1]:
            trial = run_trial(routers, plan)
            print(f"scale [{index + 1}/{plan.trials}] {progress(trial)}", file=sys.stderr, flush=True)
            trials.append(trial)
    return summarize(trials, plan)


def progress(trial: Trial) -> str:
    return (
        f"{trial.routers} router(s): {trial.rate:,.0f} msg/s, delivered {trial.delivered:.1%}, "
        f"routers {trial.routers_busy:.2f} cores, machine {trial.machine_busy:.2f} cores"
    )


def run_trial(routers: int, plan: Plan) -> Trial:
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as directory, Children() as children:
        redis = start_redis(children, Path(directory))
        config = write_config(Path(directory) / "router.toml", redis.url)
        started = [start_router(children, f"router {n}", config) for n in range(routers)]
        watch = ClusterWatch(redis.client)
        ids = [watch.router_id(endpoints["pull"]) for _, endpoints in started]
        owners = watch.wait_placed(ids)
        topics: list[str] = []
        sinks: list[Child] = []
        pulls: list[str] = []
        for pair in range(plan.pairs):
            _, endpoints = started[pair % routers]
            topic = topic_of(ids[pair % routers], owners, f"{TOPIC_PREFIX}/p{pair}")
            args = ["--xpub", endpoints["xpub"], "--control", endpoints["control"], "--topic", topic]
            args += ["--size", str(SIZE), "--expected", str(plan.messages), "--cap", str(plan.cap)]
            sinks.append(children.start(f"receiver {pair}", python_module(receiver.__name__, *args)))
            topics.append(topic)
            pulls.append(endpoints["pull"])
        wait_until_all_flow(pulls, topics, sinks)
        before = [cpu_times(router.pid).process for router, _ in started]
        machine = MachineTicks.now()
        sources = []
        for pair, (pull, topic) in enumerate(zip(pulls, topics, strict=True)):
            args = ["--pull", pull, "--topic", topic, "--size", str(SIZE)]
            args += ["--count", str(plan.messages), "--cap", str(plan.cap)]
            sources.append(children.start(f"producer {pair}", python_module(producer.__name__, *args)))
        received = [sink.expect("done", plan.cap + GRACE) for sink in sinks]
        sent = [source.expect("done", plan.cap + GRACE) for source in sources]
        used = sum(cpu_times(router.pid).process for router, _ in started) - sum(before)
        machine_busy = MachineTicks.now().cores_busy_since(machine)
    if min(done["span"]["wall"] for done in received) <= 0:
        raise ChildError(f"{routers} router(s): a receiver got all its messages in one batch")
    window = max(done["last_at"] for done in received) - min(done["first_at"] for done in received)
    return Trial(
        routers=routers,
        sent=sum(done["sent"] for done in sent),
        received=sum(done["received"] for done in received),
        rate=sum(done["timed"] for done in received) / window,
        routers_busy=used / window,
        machine_busy=machine_busy,
    )


def wait_until_all_flow(pulls: list[str], topics: list[str], sinks: list[Child]) -> None:
    """Send probes on each topic until its receiver reports one."""
    with zmq.Context() as context:
        pushes = []
        for pull in pulls:
            push = context.socket(zmq.PUSH)
            push.linger = 0
            push.connect(pull)
            pushes.append(push)
        try:
            waiting = set(range(len(sinks)))
            deadline = time.monotonic() + START_TIMEOUT
            while waiting and time.monotonic() < deadline:
                for index in sorted(waiting):
                    with contextlib.suppress(zmq.Again):
                        pushes[index].send_multipart([topics[index].encode(), PROBE], zmq.NOBLOCK)
                    if sinks[index].next_event("probe", PROBE_INTERVAL / len(sinks)) is not None:
                        waiting.discard(index)
        finally:
            for push in pushes:
                push.close(linger=0)
    if waiting:
        names = ", ".join(sinks[index].name for index in sorted(waiting))
        raise ChildError(f"no probe reached {names} within {START_TIMEOUT:.0f} s")


def summarize(trials: list[Trial], plan: Plan) -> tuple[list[Figure], list[str]]:
    two = [t for t in trials if t.routers == 2]
    one = [t for t in trials if t.routers == 1]
    if not two or not one:
        return [], []
    cpus = os.cpu_count() or 1
    rate = Figure(
        f"cluster.scale.msgs_per_s.2_vs_1_routers.producers_and_receivers_share_the_{cpus}_cpus",
        statistics.median(t.rate for t in two),
        "msg/s",
        statistics.median(t.rate for t in one),
    )
    figures = [
        rate,
        Figure("cluster.scale.2_routers_vs_1", rate.ratio or 0.0, "x one router's rate"),
        Figure(
            "cluster.scale.delivered",
            statistics.median(t.delivered for t in two),
            "fraction",
            statistics.median(t.delivered for t in one),
        ),
        Figure(
            "cluster.scale.routers_busy",
            statistics.median(t.routers_busy for t in two),
            "cores",
            statistics.median(t.routers_busy for t in one),
        ),
        Figure(
            "cluster.scale.machine_busy",
            statistics.median(t.machine_busy for t in two),
            "cores",
            statistics.median(t.machine_busy for t in one),
        ),
    ]
    machine = statistics.median(t.machine_busy for t in two)
    notes = [
        f"scale: two routers ingest {rate.ratio or 0.0:.2f}x one router's messages/s, {plan.pairs} PUSH "
        f"producer(s) each to the owner of its topic, one receiver each; on this {cpus}-core machine the "
        f"producers, receivers and routers share the CPUs ({machine:.2f} of {cpus} cores busy with two "
        "routers), so this ratio is a floor of what routers on hosts of their own would give"
    ]
    return figures, notes
