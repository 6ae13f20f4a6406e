"""``scripts/bench cluster``, failover: how long the topics of a killed router's shards go without
data, and what a client of a reliable topic lost or got twice over every kill.

The processes, on 127.0.0.1 with ports picked at run time: a redis-server, two cluster routers
(``lease_time`` :data:`LEASE_TIME`, ``tick`` :data:`TICK`), a WebSocket edge given the first
router only (it links to every router the shard map lists), one :mod:`benchlib.sequence_producer`
whose PUB socket is connected to both routers' XSUB sockets (each router asks upstream only for
its own shards' topics), sending every topic at a steady rate, and one
:mod:`benchlib.sequence_clients` child whose clients are subscribed to ``topics`` best_effort and
``topics`` reliable topics, half of each in shards of each router at the start.

Then, ``kills`` times: the owners are read from Redis; the router that owns at least one topic of
each policy (the two routers take turns) is sent SIGKILL; each of its topics is one sample of the
failover time, from the kill to when every client got the first message of that topic *sent* after
the kill (so what was in flight at the kill does not count); the killed router is started again on
the same ports, and the bench waits until Redis shows every shard on the router that prefers it and
every client gets every topic again. At the end the producer stops, and each client's frames of
each topic are counted by sequence number (:mod:`benchlib.sequence_tally`).
"""

from __future__ import annotations

import os
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchlib import sequence_clients, sequence_producer
from benchlib.cluster_setup import (
    FAST_POLL,
    PLACEMENT_TIMEOUT,
    ClusterWatch,
    router_command,
    router_drops,
    start_redis,
    start_router,
    topic_of,
    write_config,
)
from benchlib.procs import Child, ChildError, Children, python_module
from benchlib.report import Figure
from benchlib.sequence_tally import Tally
from router.core.shards import shard_of

LEASE_TIME = 2.0
TICK = 0.05
TARGET_P50 = 1.0
TARGET_MAX = 2.0
POLICIES = ("best_effort", "reliable")
PREFIXES = {"best_effort": "/failover", "reliable": "/bench/failover"}
"""The reliable ones are under :data:`benchlib.cluster_setup.RELIABLE_PATTERN`."""
START_TIMEOUT = 20.0
FAILOVER_TIMEOUT = 15.0
STEADY_TIMEOUT = 20.0
DRAIN_TIMEOUT = 10.0
EDGE_ARGS = ("--log-level", "warning", "--max-connections-per-ip", "100000")


@dataclass(frozen=True)
class Plan:
    kills: int
    topics: int
    """Topics per policy."""
    rate: float
    """Messages per second and topic."""
    clients: int
    immediate: bool = False
    """Whether the producer's PUB socket has ZMQ_IMMEDIATE set."""
    push: bool = False
    """Whether the producer is a ClusterProducer (PUSH to each owner) rather than a PUB socket."""


@dataclass
class Findings:
    """Seconds of failover by policy (``None``: no message within :data:`FAILOVER_TIMEOUT`), and
    what each policy's clients got over every kill."""

    samples: dict[str, list[float | None]] = field(default_factory=lambda: {p: [] for p in POLICIES})
    kills: int = 0
    tallies: dict[str, Tally] = field(default_factory=lambda: {p: Tally() for p in POLICIES})
    takeovers: list[float | None] = field(default_factory=list)
    """Seconds from each kill until Redis showed every measured shard held by the survivor."""
    restored: list[float | None] = field(default_factory=list)
    """Seconds from each kill until every moved topic reached every client again."""
    kill_times: list[int] = field(default_factory=list)
    rejoin_times: list[int] = field(default_factory=list)
    """When each kill was made and each killed router was started again (``time.monotonic_ns()``)."""
    router_drops: Counter[str] = field(default_factory=Counter)
    """What the routers counted as dropped, each read just before it was killed or at the end."""
    lost_subscriptions: int = 0
    stopped: str = ""
    """Why the kills stopped early, if they did."""


class Cluster:
    """The two routers, by index: their child, endpoints and id, and what Redis says of them."""

    def __init__(self, children: Children, config: Path, watch: ClusterWatch) -> None:
        self.children = children
        self.config = config
        self.watch = watch
        started = [start_router(children, f"router {n}", config) for n in range(2)]
        self.routers = [router for router, _ in started]
        self.endpoints = [endpoints for _, endpoints in started]
        self.ids = [watch.router_id(endpoints["pull"]) for endpoints in self.endpoints]
        self.dead: set[str] = set()
        """The ids of the routers killed so far."""

    def placed(self) -> list[str]:
        return self.watch.wait_placed(self.ids)

    def kill(self, index: int) -> int:
        """SIGKILL router ``index``; returns ``time.monotonic_ns()`` just before."""
        router = self.routers[index]
        self.dead.add(self.ids[index])
        at = time.monotonic_ns()
        os.kill(router.pid, signal.SIGKILL)
        router.process.wait()
        return at

    def restart(self, index: int) -> None:
        """Router ``index`` again, on the ports it had; it has a new id."""
        router = self.children.start(f"router {index}", router_command(self.config, self.endpoints[index]))
        router.expect("ready", START_TIMEOUT)
        self.routers[index] = router
        self.ids[index] = self.watch.router_id(self.endpoints[index]["pull"], dead=self.dead)


def run(plan: Plan) -> tuple[list[Figure], list[str]]:
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as directory, Children() as children:
        redis = start_redis(children, Path(directory))
        config = write_config(
            Path(directory) / "router.toml", redis.url, reliable=True, lease_time=LEASE_TIME, tick=TICK
        )
        cluster = Cluster(children, config, ClusterWatch(redis.client))
        topics = pick_topics(cluster.ids, cluster.placed(), plan.topics)
        every = [topic for policy in POLICIES for topic in topics[policy]]
        edge, url = start_edge(children, cluster.endpoints[0])
        producer = start_producer(children, cluster.endpoints, every, plan, redis.url)
        clients = start_clients(children, url, every, plan)
        if missing := not_flowing(clients, every, time.monotonic_ns(), STEADY_TIMEOUT):
            raise ChildError(f"no message of {', '.join(missing)} within {STEADY_TIMEOUT:.0f} s")
        findings = Findings()
        for kill in range(plan.kills):
            if not kill_once(kill, plan, cluster, clients, topics, findings):
                break
        if findings.stopped:
            for child in (edge, *cluster.routers):
                print(f"failover: {child.name}{child.stderr_tail(3000)}", file=sys.stderr, flush=True)
            raise ChildError(f"failover stopped after {len(findings.kill_times)} kill(s): {findings.stopped}")
        producer.send({"op": "stop"})
        for endpoints in cluster.endpoints:
            findings.router_drops.update(router_drops(endpoints))
        last: dict[str, int] = producer.expect("done", START_TIMEOUT)["last"]
        phases = {"kills": findings.kill_times, "rejoins": findings.rejoin_times}
        clients.send({"op": "tally", "last": last, **phases, "timeout": DRAIN_TIMEOUT})
        counted = clients.expect("tally", DRAIN_TIMEOUT + START_TIMEOUT)
    add_tallies(findings, topics, counted)
    return summarize(findings, plan)


def pick_topics(ids: list[str], owners: list[str], per_policy: int) -> dict[str, list[str]]:
    """``per_policy`` topics of each policy, in distinct shards, taking turns between the routers."""
    chosen: list[str] = []
    by_policy: dict[str, list[str]] = {}
    for policy in POLICIES:
        by_policy[policy] = []
        for n in range(per_policy):
            topic = topic_of(ids[n % len(ids)], owners, f"{PREFIXES[policy]}/{n}", avoid=chosen)
            chosen.append(topic)
            by_policy[policy].append(topic)
    return by_policy


def start_edge(children: Children, seed: dict[str, str]) -> tuple[Child, str]:
    """A WebSocket edge given the router ``seed``, and its URL."""
    args = ["--announce", "--port", "0", *EDGE_ARGS, "--control", seed["control"], "--xpub", seed["xpub"]]
    edge = children.start("edge", python_module("edges.websocket", *args))
    return edge, f"ws://127.0.0.1:{edge.expect('ready', START_TIMEOUT)['port']}/"


def cap(plan: Plan) -> float:
    """Seconds the producer and the clients may run at most."""
    return (
        START_TIMEOUT
        + STEADY_TIMEOUT
        + DRAIN_TIMEOUT
        + plan.kills * (FAILOVER_TIMEOUT + START_TIMEOUT + PLACEMENT_TIMEOUT + STEADY_TIMEOUT)
    )


def start_producer(
    children: Children, endpoints: list[dict[str, str]], topics: list[str], plan: Plan, redis_url: str
) -> Child:
    args = [word for router in endpoints for word in ("--xsub", router["xsub"])]
    args += ["--redis", redis_url] if plan.push else []
    args += ["--immediate"] if plan.immediate else []
    args += [word for topic in topics for word in ("--topic", topic)]
    args += ["--rate", str(plan.rate), "--cap", str(cap(plan))]
    producer = children.start("producer", python_module(sequence_producer.__name__, *args), stdin=True)
    producer.expect("ready", START_TIMEOUT)
    return producer


def start_clients(children: Children, url: str, topics: list[str], plan: Plan) -> Child:
    args = ["--url", url, "--clients", str(plan.clients), "--cap", str(cap(plan))]
    args += [word for topic in topics for word in ("--topic", topic)]
    clients = children.start("clients", python_module(sequence_clients.__name__, *args), stdin=True)
    clients.expect("ready", START_TIMEOUT)
    return clients


def ask_first_deliveries(clients: Child, topics: list[str], since: int, timeout: float) -> None:
    """Ask when every client got its first message of each topic sent at ``since`` or later
    (``time.monotonic_ns()``); :func:`first_deliveries` reads the answer."""
    clients.send({"op": "flowing", "since": since, "topics": topics, "timeout": timeout})


def first_deliveries(clients: Child, timeout: float) -> dict[str, int | None]:
    """For each topic asked, when the last of the clients got its first such message; ``None`` if
    one of them got none in time."""
    first: dict[str, list[int | None]] = clients.expect("flowing", timeout + START_TIMEOUT)["first"]
    return {topic: latest(times) for topic, times in first.items()}


def latest(times: list[int | None]) -> int | None:
    known = [t for t in times if t is not None]
    return max(known) if len(known) == len(times) else None


def not_flowing(clients: Child, topics: list[str], since: int, timeout: float) -> list[str]:
    """The topics of which some client got no message sent at ``since`` or later within ``timeout``."""
    ask_first_deliveries(clients, topics, since, timeout)
    return [topic for topic, first in first_deliveries(clients, timeout).items() if first is None]


def victim(kill: int, ids: list[str], owners: list[str], topics: dict[str, list[str]]) -> int:
    """The router that owns a topic of each policy, router ``kill % 2`` if both do; else the one
    that owns the most of them."""

    def owned(index: int) -> list[int]:
        return [sum(owner_of(t, owners) == ids[index] for t in topics[p]) for p in POLICIES]

    turns = [kill % 2, 1 - kill % 2]
    for index in turns:
        if min(owned(index)) > 0:
            return index
    return max(turns, key=lambda index: sum(owned(index)))


def owner_of(topic: str, owners: list[str]) -> str:
    return owners[shard_of(topic.encode(), len(owners))]


def kill_once(
    kill: int, plan: Plan, cluster: Cluster, clients: Child, topics: dict[str, list[str]], findings: Findings
) -> bool:
    """One kill, its samples, the restart and the wait until steady; ``False`` if it never was."""
    owners = cluster.watch.owners()
    if None in owners:
        findings.stopped = f"kill {kill + 1}: a shard had no owner before it"
        return False
    placed = [owner for owner in owners if owner is not None]
    index = victim(kill, cluster.ids, placed, topics)
    moved = {p: [t for t in topics[p] if owner_of(t, placed) == cluster.ids[index]] for p in POLICIES}
    every_moved = [t for p in POLICIES for t in moved[p]]
    findings.router_drops.update(router_drops(cluster.endpoints[index]))
    at = cluster.kill(index)
    findings.kill_times.append(at)
    ask_first_deliveries(clients, every_moved, at, FAILOVER_TIMEOUT)
    taken = cluster.watch.wait_taken(every_moved, cluster.ids[index], FAILOVER_TIMEOUT)
    first = first_deliveries(clients, FAILOVER_TIMEOUT)
    findings.kills += 1
    findings.takeovers.append(None if taken is None else (taken - at) / 1e9)
    for policy in POLICIES:
        findings.samples[policy] += [seconds(first[t], at) for t in moved[policy]]
    findings.restored.append(seconds(latest(list(first.values())), at))
    line = progress(index, moved, first, at, taken)
    print(f"failover [{kill + 1}/{plan.kills}] {line}", file=sys.stderr, flush=True)
    findings.rejoin_times.append(time.monotonic_ns())
    try:
        cluster.restart(index)
        cluster.placed()
    except ChildError as error:
        findings.stopped = f"kill {kill + 1}: after the restart, {error}"
        return False
    every = [t for p in POLICIES for t in topics[p]]
    if missing := not_flowing(clients, every, time.monotonic_ns(), STEADY_TIMEOUT):
        owners = cluster.watch.owners()
        where = ", ".join(
            f"{topic} (at {owners[shard_of(topic.encode(), len(owners))]})" for topic in missing
        )
        findings.stopped = (
            f"kill {kill + 1}: after the restart no message of {where} reached every client within "
            f"{STEADY_TIMEOUT:.0f} s; the routers are {', '.join(cluster.ids)}, the edge's first is router 0"
        )
        return False
    return True


def seconds(when: int | None, at: int) -> float | None:
    return None if when is None else (when - at) / 1e9


def progress(
    index: int, moved: dict[str, list[str]], first: dict[str, int | None], at: int, taken: int | None
) -> str:
    lease = "-" if taken is None else f"{(taken - at) / 1e9:.3f} s"
    parts = [f"killed router {index}: its leases taken over after {lease}"]
    for policy in POLICIES:
        times = [seconds(first[t], at) for t in moved[policy]]
        known = [t for t in times if t is not None]
        worst = f"{max(known):.3f} s" if known else "-"
        late = f", {len(times) - len(known)} not back" if len(known) < len(times) else ""
        parts.append(f"{policy}: {len(times)} topic(s) back after {worst} at most{late}")
    return "; ".join(parts)


def add_tallies(findings: Findings, topics: dict[str, list[str]], counted: dict[str, Any]) -> None:
    for policy in POLICIES:
        for topic in topics[policy]:
            for client in counted["topics"][topic]:
                findings.tallies[policy] += Tally(**client)
    findings.lost_subscriptions = counted["lost_subscriptions"]


def summarize(findings: Findings, plan: Plan) -> tuple[list[Figure], list[str]]:
    figures = [Figure("cluster.failover.kills", findings.kills, "kills")]
    for policy in POLICIES:
        figures += timing_figures(f"cluster.failover.{policy}", findings.samples[policy], "topic moves")
    figures += timing_figures("cluster.failover.every_moved_topic_back", findings.restored, "kills")
    figures += timing_figures("cluster.failover.leases_taken_over", findings.takeovers, "kills")
    for policy in POLICIES:
        figures += tally_figures(policy, findings.tallies[policy])
    return figures, notes(findings, plan)


def timing_figures(name: str, samples: list[float | None], unit: str) -> list[Figure]:
    """p50 and max of the samples measured, and how many there were; a sample that timed out
    (nothing within :data:`FAILOVER_TIMEOUT`) is a figure of its own, never a number in p50 or max.
    The targets are in the notes: no figure here has a baseline measured beside it."""
    measured = [sample for sample in samples if sample is not None]
    found = [Figure(f"{name}.samples", len(measured), unit)]
    if measured:
        found += [
            Figure(f"{name}.p50", statistics.median(measured), "s"),
            Figure(f"{name}.max", max(measured), "s"),
        ]
    if timed_out := samples.count(None):
        found.append(Figure(f"{name}.timed_out", timed_out, unit))
    return found


def tally_figures(policy: str, tally: Tally) -> list[Figure]:
    name = f"cluster.failover.{policy}"
    return [
        Figure(f"{name}.received", tally.received, "messages"),
        Figure(f"{name}.lost", tally.lost, "messages"),
        Figure(f"{name}.lost_without_offset_gap", tally.lost_silent_no_offset_gap, "messages"),
        Figure(f"{name}.lost_at_rejoins", tally.lost_silent_at_rejoins, "messages"),
        Figure(f"{name}.lost_reported", tally.lost_reported, "messages"),
        Figure(f"{name}.duplicated", tally.duplicated, "messages"),
    ]


def notes(findings: Findings, plan: Plan) -> list[str]:
    found = [f"failover: stopped early: {findings.stopped}"] if findings.stopped else []
    found.append(setup_note(plan))
    found += [timing_verdict(policy, findings) for policy in POLICIES if findings.samples[policy]]
    found += share_note(findings)
    found.append(reliable_verdict(findings.tallies["reliable"]))
    best_effort = findings.tallies["best_effort"]
    found.append(
        f"failover, best_effort: {best_effort.lost_reported} messages reported lost by restarted or "
        f"skipped frames (a moved best_effort topic starts a new epoch), {best_effort.lost} lost without "
        f"a word, {best_effort.duplicated} duplicated"
    )
    dropped = {reason: count for reason, count in sorted(findings.router_drops.items()) if count}
    found.append(
        f"failover: the routers counted as dropped, over every topic and router: {dropped or 'nothing'}; "
        "the rest of the loss is counted nowhere: in a PUB producer's socket, or in a router killed"
    )
    if findings.lost_subscriptions:
        found.append(f"failover: {findings.lost_subscriptions} subscriptions ended by an error frame")
    return found


def setup_note(plan: Plan) -> str:
    socket = "with ZMQ_IMMEDIATE" if plan.immediate else "with libzmq's defaults (no ZMQ_IMMEDIATE)"
    source = f"one PUB socket {socket} connected to both routers' XSUB"
    if plan.push:
        source = "a ClusterProducer (PUSH straight to each topic's owner, another router when it is down)"
    return (
        f"failover: {plan.topics} best_effort and {plan.topics} reliable topics at {plan.rate:g} msg/s each "
        f"from {source}, {plan.clients} WebSocket "
        "client(s) of one edge subscribed to all; a sample is one moved topic of one kill, from the "
        "SIGKILL to when every client got that topic's first message sent after it"
    )


def reliable_verdict(tally: Tally) -> str:
    met = "met" if tally.lost == 0 and tally.duplicated == 0 else "NOT met"
    return (
        f"failover, reliable: {tally.lost} lost without a word and {tally.duplicated} duplicated of "
        f"{tally.received} received (by the payloads' sequence numbers, every client and topic, over "
        f"every kill and rebalance); target 0 and 0: {met}. Of the lost, "
        f"{tally.lost_silent_no_offset_gap} left no gap in the offsets: no router that lived on ever "
        "sequenced them (a PUB socket drops a topic's messages while no router has asked for it; a "
        "router drops a PUSH message it parked past [cluster] park_time or could not park (no_owner, "
        "forward_full), counted below; or the killed router took them, or they were in flight to it, "
        f"and it died before they were durable); {tally.lost_silent_at_rejoins} were lost while "
        "shards moved to a router that had joined again, where no router died; "
        f"{tally.lost_at_end} were still missing "
        f"{DRAIN_TIMEOUT:g} s after the producer stopped. {tally.lost_reported} more were reported to the "
        "clients by skipped or restarted frames"
    )


def timing_verdict(policy: str, findings: Findings) -> str:
    samples = findings.samples[policy]
    measured = [sample for sample in samples if sample is not None]
    timed_out = len(samples) - len(measured)
    if not measured:
        return f"failover, {policy}: no topic moved back within {FAILOVER_TIMEOUT:g} s: targets NOT met"
    p50, worst = statistics.median(measured), max(measured)
    met = "met" if p50 <= TARGET_P50 and worst <= TARGET_MAX and not timed_out else "NOT met"
    late = f", and {timed_out} not back within {FAILOVER_TIMEOUT:g} s" if timed_out else ""
    return (
        f"failover, {policy}: p50 {p50:.3f} s, max {worst:.3f} s over {len(measured)} topic moves{late} in "
        f"{findings.kills} kills (lease_time {LEASE_TIME} s, tick {TICK} s); targets p50 <= {TARGET_P50} s, "
        f"max <= {TARGET_MAX} s: {met}"
    )


def share_note(findings: Findings) -> list[str]:
    """How much of a kill's failover passes before Redis shows the leases taken over."""
    restored = [s for s in findings.restored if s is not None]
    takeovers = [s for s in findings.takeovers if s is not None]
    if not restored or not takeovers:
        return []
    total, lease = statistics.median(restored), statistics.median(takeovers)
    return [
        f"failover: by the median kill, every moved topic reached every client again after {total:.3f} s, "
        f"and Redis showed the survivor holding every moved shard after {lease:.3f} s (polled every "
        f"{FAST_POLL * 1000:g} ms): the takeover of the leases is {min(1.0, lease / total):.0%} of the "
        "failover (the survivor takes a dead router's shards one after the other, each with its own Redis "
        "calls and the loading of its reliable topics); the rest is the survivor's announcing the shards, "
        "the edge moving the subscriptions there, the survivor asking the producer upstream for the "
        "topics, and the next message"
    ]
