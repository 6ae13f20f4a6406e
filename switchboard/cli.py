"""The ``switchboard`` command: ``router``, ``publish``, ``tap``, ``events``, ``keys``, ``edge KIND``,
and the admin commands ``clients``, ``topics``, ``edges``, ``stats``, ``cluster``, ``policy``, ``kick``
and ``drain``."""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from router.admin.commands import ADMIN_COMMANDS, add_admin_commands, run_admin_command
from router.config import DEFAULT_CONTROL, DEFAULT_PULL, DEFAULT_XPUB
from router.core.topics import topic_error
from router.curve import CurveKeyError, Role, add_client_arguments, client_from_args, write_key_pair
from router.event_watch import add_events_command, run_events
from router.logfmt import add_log_arguments, configure_logging
from router.loop import run_async
from router.main import add_router_arguments, run_router

EDGE_KINDS = {"websocket": "edges.websocket.edge", "webrtc": "edges.webrtc.edge"}


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "edge":
        return _run_edge(args.kind, rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    configure_logging(args.log_level, args.log_format)
    handlers = {"router": run_router, "publish": _run_publish, "tap": _run_tap, "keys": _run_keys}
    handlers["events"] = run_events
    handlers |= dict.fromkeys(ADMIN_COMMANDS, run_admin_command)
    return handlers[args.command](args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="switchboard", description=__doc__)
    add_log_arguments(parser)
    commands = parser.add_subparsers(dest="command", required=True)
    router = commands.add_parser("router", help="run the central router")
    add_router_arguments(router)
    add_log_arguments(router, defaults=False)

    publish = commands.add_parser("publish", help="publish messages (stdin lines if no MESSAGE)")
    publish.add_argument("topic")
    publish.add_argument("message", nargs="?")
    publish.add_argument("--pull", default=DEFAULT_PULL, help="the router's PULL endpoint")
    publish.add_argument("--count", type=int, default=1, help="times to send MESSAGE")
    publish.add_argument("--rate", type=float, default=0.0, help="messages per second (0: no limit)")
    publish.add_argument("--content-type")
    add_client_arguments(publish)

    tap = commands.add_parser("tap", help="print what arrives on topics (a debugging subscriber)")
    tap.add_argument("topics", nargs="+")
    tap.add_argument("--control", default=DEFAULT_CONTROL)
    tap.add_argument("--xpub", default=DEFAULT_XPUB)
    tap.add_argument("--count", type=int, default=0, help="stop after this many messages (0: never)")
    add_client_arguments(tap)

    keys = commands.add_parser("keys", help="write a Curve key pair: NAME.key and NAME.key_secret")
    keys.add_argument("name", help="the key's name, such as router or edge-1")
    keys.add_argument("--dir", type=Path, default=Path("."), help="where to write the files")
    keys.add_argument(
        "--role",
        choices=[role.value for role in Role],
        help="what the key is for; another role's allow-list will not admit it (none for the router's key)",
    )

    add_events_command(commands)
    add_admin_commands(commands)
    edge = commands.add_parser("edge", help="run an edge process", add_help=False)
    edge.add_argument("kind", choices=sorted(EDGE_KINDS))
    return parser


def _run_publish(args: argparse.Namespace) -> int:
    from router.producer import Producer

    if args.message is not None:
        messages: Iterable[str] = [args.message] * args.count
    else:
        messages = (line.rstrip("\n") for line in sys.stdin)
    interval = 1.0 / args.rate if args.rate > 0 else 0.0
    reason = topic_error(args.topic)
    if reason is not None:
        print(f"switchboard publish: {args.topic!r}: {reason}", file=sys.stderr)
        return 2
    try:
        curve = client_from_args(args)
    except CurveKeyError as error:
        print(f"switchboard publish: {error}", file=sys.stderr)
        return 2
    with Producer(args.pull, curve=curve) as producer:
        for text in messages:
            producer.publish(args.topic, text.encode(), content_type=args.content_type)
            if interval:
                time.sleep(interval)
    return 0


def _run_tap(args: argparse.Namespace) -> int:
    from edges.tap import tap

    try:
        curve = client_from_args(args)
    except CurveKeyError as error:
        print(f"switchboard tap: {error}", file=sys.stderr)
        return 2
    return run_async(tap(args.topics, control=args.control, xpub=args.xpub, count=args.count, curve=curve))


def _run_keys(args: argparse.Namespace) -> int:
    try:
        role = Role(args.role) if args.role else None
        public, secret = write_key_pair(args.dir, args.name, role)
    except (CurveKeyError, OSError) as error:
        print(f"switchboard keys: {error}", file=sys.stderr)
        return 2
    if role is None:
        print(f"public key: {public}  (share it)")
    else:
        print(
            f"public key: {public}  (copy it to the router's {role.value}_keys_dir, then SIGHUP the router)"
        )
    print(f"secret key: {secret}  (keep it here, mode 0600)")
    return 0


def _run_edge(kind: str, argv: list[str]) -> int:
    module = importlib.import_module(EDGE_KINDS[kind])
    result: int = module.main(argv)
    return result


if __name__ == "__main__":
    sys.exit(main())
