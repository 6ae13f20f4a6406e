"""``switchboard events``: print the router's events as they happen (``docs/protocol.md``, 5)."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import TextIO

import msgspec
import zmq

from router.config import DEFAULT_EVENTS
from router.core.events import Event, decode_event
from router.curve import CurveKeyError, add_client_arguments, client_from_args

__all__ = ["add_events_command", "format_event", "run_events"]


def add_events_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    events = commands.add_parser("events", help="print the router's events (its [events] socket)")
    events.add_argument("--events", default=DEFAULT_EVENTS, help="the router's events endpoint")
    events.add_argument(
        "--filter", action="append", default=[], metavar="PREFIX", help="only these events (client., edge.up)"
    )
    events.add_argument("--json", action="store_true", help="print each event's JSON as it came")
    events.add_argument("--count", type=int, default=0, help="stop after this many events (0: never)")
    add_client_arguments(events)


def run_events(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    try:
        curve = client_from_args(args)
    except CurveKeyError as error:
        print(f"switchboard events: {error}", file=sys.stderr)
        return 2
    context = zmq.Context()
    sub = context.socket(zmq.SUB)
    sub.linger = 0
    if curve is not None:
        curve.secure(sub)
    for prefix in args.filter or [""]:
        sub.subscribe(prefix.encode())
    sub.connect(args.events)
    try:
        _print_events(sub, out, args.json, args.count)
    except KeyboardInterrupt:
        pass
    finally:
        sub.close()
        context.term()
    return 0


def _print_events(sub: zmq.Socket[bytes], out: TextIO, as_json: bool, count: int) -> None:
    printed = 0
    while not count or printed < count:
        frames = sub.recv_multipart()
        if len(frames) != 2:
            continue
        try:
            line = frames[1].decode() if as_json else format_event(decode_event(frames[1]))
        except (msgspec.DecodeError, UnicodeDecodeError):
            continue
        print(line, file=out, flush=True)
        printed += 1


def format_event(event: Event) -> str:
    """One line for people: the UTC time, the event's name, then its fields as ``key=value``."""
    fields = msgspec.structs.asdict(event)
    when = datetime.fromtimestamp(fields.pop("time"), UTC).isoformat(timespec="milliseconds")
    pairs = " ".join(f"{key}={value}" for key, value in fields.items())
    return f"{when} {event.__struct_config__.tag} {pairs}"
