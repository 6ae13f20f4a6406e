"""Every benchmark of Switchboard, one subcommand each: ``scripts/bench NAME [--quick] [--json]``.

A subcommand is a module of ``scripts/benchlib`` with ``HELP``, ``add_arguments`` and ``run``
(see :class:`benchlib.report.BenchCommand`); add it to ``COMMANDS``. By default the figures print
as a table; with ``--json`` as one JSON object per line:
``{"name", "value", "unit", "baseline", "ratio"}`` (``baseline`` and ``ratio`` may be null).
"""

from __future__ import annotations

import argparse
import signal
import sys
from types import FrameType

from benchlib import cluster_bench, edge_bench, policies_bench, router_bench, soak, webrtc_bench
from benchlib.procs import ChildError
from benchlib.report import BenchCommand, show

COMMANDS: dict[str, BenchCommand] = {
    "router": router_bench,
    "edge": edge_bench,
    "policies": policies_bench,
    "webrtc": webrtc_bench,
    "soak": soak,
    "cluster": cluster_bench,
}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        report = COMMANDS[args.command].run(args)
    except ChildError as error:
        print(f"bench {args.command}: {error}", file=sys.stderr)
        return 1
    show(report, as_json=args.json)
    return 0


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="one JSON object per figure and line")
    common.add_argument("--quick", action="store_true", help="a fast smoke run (fewer, shorter trials)")
    top = argparse.ArgumentParser(prog="scripts/bench", description=__doc__)
    commands = top.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        command.add_arguments(commands.add_parser(name, help=command.HELP, parents=[common]))
    return top


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    """Turn SIGTERM into SystemExit so every child is stopped on the way out."""
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    raise SystemExit(main())
