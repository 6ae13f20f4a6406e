"""``scripts/bench cluster``: what cluster mode (``docs/cluster.md``) costs and gives, each part on
processes of its own on 127.0.0.1, ports picked at run time, and a redis-server of the bench's own:

- cost (:mod:`benchlib.cluster_cost`): the router's CPU per message in cluster mode beside
  in-memory mode, on a best_effort and a reliable topic;
- scale (:mod:`benchlib.cluster_scale`): messages/s into two cluster routers beside one;
- failover (:mod:`benchlib.cluster_failover`): two routers behind a WebSocket edge, one killed again
  and again: how long its topics go without data, and what the clients of a reliable topic lost.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

from benchlib import cluster_cost, cluster_failover, cluster_scale
from benchlib.procs import load_average
from benchlib.report import Figure, Report

HELP = "cluster mode: router CPU per message vs in-memory, two routers' ingest vs one, failover time"
PARTS = ("cost", "scale", "failover")
MESSAGES = 200_000

Findings = tuple[list[Figure], list[str]]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    option = parser.add_argument
    option("--trials", type=int, help="trials per mode of cost and scale (default 5; 2 with --quick)")
    option("--scale", type=float, help="scale messages per producer (200k x 100 B; 0.25 with --quick)")
    option("--cap", type=float, help="wall-clock cap per trial, seconds (default 30; 10 with --quick)")
    option("--pairs", type=int, default=2, help="producer/receiver pairs of a scale trial (default 2)")
    option("--kills", type=int, help="routers killed in failover (default 10; 3 with --quick)")
    option("--topics", type=int, default=8, help="topics of each policy in failover (default 8)")
    option("--rate", type=float, default=100.0, help="messages/s per topic in failover (default 100)")
    option("--clients", type=int, default=2, help="WebSocket clients in failover (default 2)")
    option(
        "--immediate",
        action="store_true",
        help="set ZMQ_IMMEDIATE on the failover producer's PUB socket (default: libzmq's default)",
    )
    option(
        "--push",
        action="store_true",
        help="the failover producer is a ClusterProducer (PUSH to each topic's owner) instead of PUB",
    )
    option("--only", choices=PARTS, action="append", help="run only this part (repeatable)")


def run(args: argparse.Namespace) -> Report:
    trials = args.trials or (2 if args.quick else 5)
    scale = args.scale or (0.25 if args.quick else 1.0)
    messages = max(2_000, round(MESSAGES * scale))
    cap = args.cap or (10.0 if args.quick else 30.0)
    kills = args.kills or (3 if args.quick else 10)
    parts: dict[str, Callable[[], Findings]] = {
        "cost": lambda: cluster_cost.run(cluster_cost.Plan(trials, messages, cap)),
        "scale": lambda: cluster_scale.run(cluster_scale.Plan(trials, args.pairs, messages, cap)),
        "failover": lambda: cluster_failover.run(
            cluster_failover.Plan(kills, args.topics, args.rate, args.clients, args.immediate, args.push)
        ),
    }
    chosen = args.only or PARTS
    report = Report(
        f"scripts/bench cluster ({', '.join(chosen)}) on 127.0.0.1, a redis-server of the bench's own"
    )
    load_before = load_average()
    for name in chosen:
        figures, notes = parts[name]()
        report.figures += figures
        report.notes += notes
    if timed := [name for name in ("cost", "scale") if name in chosen]:
        report.notes.append(
            f"{' and '.join(timed)}: {trials} trial(s) per mode, alternating, each on fresh processes; "
            f"medians; {messages:,} messages of 100 B per producer and trial"
        )
    report.notes.append(
        f"load average {load_before:.2f} before, {load_average():.2f} after, on {os.cpu_count()} CPUs"
    )
    return report
