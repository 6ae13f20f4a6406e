"""``scripts/bench policies``: what delivery policies do for the other clients, the memory, and the viewer.

Three scenarios, each on router + WebSocket edge processes started on 127.0.0.1 with ports picked
at run time, and each figure beside a baseline run in the same process tree:

- isolation (:mod:`benchlib.policies_isolation`): fast clients of a best_effort topic with one client
  that reads at 1% of the message rate, vs all clients fast;
- memory (:mod:`benchlib.policies_memory`): edge and router RSS with clients that never read, vs
  clients that read;
- latest (:mod:`benchlib.policies_latest`): the age of the frames a slow viewer gets from a
  ``latest`` topic, vs a best_effort one.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from benchlib import policies_isolation, policies_latest, policies_memory
from benchlib.policies_setup import Findings, Plan, write_router_config
from benchlib.procs import load_average, raise_open_files_limit
from benchlib.report import Report

HELP = "slow-client isolation, memory under never-reading clients, frame age on a latest topic"
SCENARIOS = {
    "isolation": policies_isolation.run,
    "memory": policies_memory.run,
    "latest": policies_latest.run,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    option = parser.add_argument
    option("--trials", type=int, help="A/B pairs of isolation and latest trials (default 3; 1 quick)")
    option("--seconds", type=float, help="length of an isolation trial (default 6; 2 quick)")
    option("--video-seconds", type=float, help="length of a latest trial (default 15; 4 quick)")
    option("--memory-seconds", type=float, help="length of a memory run (default 60; 10 quick)")
    option("--clients", type=int, default=100, help="clients of isolation and memory (default 100)")
    option("--load-procs", type=int, help="ws_load processes of fast clients (default: cores, >= 2)")
    parser.add_argument(
        "--only", choices=sorted(SCENARIOS), action="append", help="run only this scenario (repeatable)"
    )


def plan_from(args: argparse.Namespace) -> Plan:
    if args.clients < 2:
        raise SystemExit("scripts/bench policies: --clients must be at least 2")
    return Plan(
        trials=args.trials or (1 if args.quick else 3),
        seconds=args.seconds or (2.0 if args.quick else 6.0),
        video_seconds=args.video_seconds or (4.0 if args.quick else 15.0),
        memory_seconds=args.memory_seconds or (10.0 if args.quick else 60.0),
        clients=args.clients,
        load_procs=args.load_procs or max(2, os.cpu_count() or 1),
    )


def run(args: argparse.Namespace) -> Report:
    plan = plan_from(args)
    files = raise_open_files_limit()
    report = Report(
        "scripts/bench policies: each figure with a policy under stress (value) beside a baseline run "
        "(isolation: all clients fast; memory: clients that read; latest: a best_effort topic); medians"
    )
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="bench-policies-") as directory:
        config = write_router_config(Path(directory))
        for name in args.only or SCENARIOS:
            add(report, SCENARIOS[name](plan, config))
    report.notes.append(
        f"load average {load_before:.2f} before, {load_average():.2f} after; open-files limit {files:,}; "
        "kB and MB are 1000 and 10^6 bytes"
    )
    return report


def add(report: Report, findings: Findings) -> None:
    figures, notes = findings
    report.figures += figures
    report.notes += notes
