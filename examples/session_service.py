"""A session service for ``[sessions] kind = "external"`` (``docs/session-service.md``).

It answers the router's ``authenticate`` requests from a table of tokens in a JSON file:

    {"tokens": {"alice-secret": {"user": "alice", "topics": ["/demo/**"], "ttl": 60}}}

An entry may also have ``"delay"`` (seconds to wait before answering, to try the router's timeout)
and ``"expires_at"``. Other tokens are refused. Replies wait without blocking the others. Each
request is logged on stderr, without its token.

    python examples/session_service.py --table tokens.json --bind tcp://127.0.0.1:7770

With a router that has Curve on, the service is a Curve server: its own key pair, and an
allow-list directory holding the router's public key (``docs/session-service.md``):

    python examples/session_service.py --table tokens.json --bind tcp://10.0.0.5:7770 \
        --curve-secret-key-file keys/sessions.key_secret --curve-allowed-keys-dir routers
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import json
import logging
import time
from pathlib import Path
from typing import Any

import zmq
from zmq.auth.thread import ThreadAuthenticator

from router.curve import CurveKeyError, read_allowed_keys, read_key_pair

log = logging.getLogger("session_service")

Reply = tuple[float, int, list[bytes]]


def decide(table: dict[str, Any], request: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """The delay and the reply for one request."""
    entry = table.get(request.get("token") or "")
    if request.get("kind") != "authenticate" or entry is None:
        return 0.0, {"id": request.get("id"), "allow": False, "reason": "unknown token", "ttl": 10}
    reply = {"id": request["id"], "allow": True, "user": entry["user"], "topics": entry["topics"]}
    reply |= {key: entry[key] for key in ("ttl", "expires_at") if key in entry}
    return float(entry.get("delay", 0)), reply


def serve(sock: zmq.Socket[bytes], table: dict[str, Any]) -> None:
    """Answer forever; a delayed reply waits in a heap, not in a sleep."""
    due: list[Reply] = []
    count = 0
    while True:
        timeout = max(0.0, due[0][0] - time.monotonic()) if due else None
        if sock.poll(None if timeout is None else int(timeout * 1000) + 1):
            *envelope, body = sock.recv_multipart()
            request = json.loads(body)
            delay, reply = decide(table, request)
            verdict = f"allowed as {reply['user']}" if reply["allow"] else "refused"
            log.info("request %s (%s): %s", request.get("id"), request.get("kind"), verdict)
            count += 1
            heapq.heappush(due, (time.monotonic() + delay, count, [*envelope, json.dumps(reply).encode()]))
        while due and due[0][0] <= time.monotonic():
            sock.send_multipart(heapq.heappop(due)[2])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--table", type=Path, required=True, help="the JSON file of tokens")
    parser.add_argument("--bind", default="tcp://127.0.0.1:7770", help="a ZeroMQ endpoint; port 0: any")
    parser.add_argument("--announce", action="store_true", help="print the bound endpoint as JSON")
    parser.add_argument(
        "--curve-secret-key-file", type=Path, help="this service's key pair (NAME.key_secret); turns Curve on"
    )
    parser.add_argument(
        "--curve-allowed-keys-dir", type=Path, help="the public keys (*.key) of the routers that may ask"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    table = json.loads(args.table.read_text())["tokens"]
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = context.socket(zmq.ROUTER)
    authenticator = curve_server(parser, args, context, sock)
    sock.bind(args.bind[:-2] + ":*" if args.bind.endswith(":0") else args.bind)
    if args.announce:
        print(
            json.dumps({"event": "ready", "endpoint": sock.getsockopt_string(zmq.LAST_ENDPOINT)}), flush=True
        )
    try:
        with contextlib.suppress(KeyboardInterrupt):
            serve(sock, table)
    finally:
        if authenticator is not None:
            authenticator.stop()


def curve_server(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    context: zmq.Context[zmq.Socket[bytes]],
    sock: zmq.Socket[bytes],
) -> ThreadAuthenticator | None:
    """Make ``sock`` a Curve server that admits the routers of the allow-list, with pyzmq's own
    ZAP handler, when the Curve options are given; ``None`` without them."""
    secret_file: Path | None = args.curve_secret_key_file
    allowed_dir: Path | None = args.curve_allowed_keys_dir
    if secret_file is None and allowed_dir is None:
        return None
    if secret_file is None or allowed_dir is None:
        parser.error("--curve-secret-key-file and --curve-allowed-keys-dir go together")
    try:
        public, secret = read_key_pair(secret_file)
        allowed = read_allowed_keys(allowed_dir)
    except CurveKeyError as error:
        parser.error(str(error))
    log.info(
        "Curve on: public key %s, %d allowed router key(s) in %s", public.decode(), len(allowed), allowed_dir
    )
    authenticator = ThreadAuthenticator(context)
    authenticator.start()
    authenticator.configure_curve(domain="*", location=str(allowed_dir))
    sock.curve_server = True
    sock.curve_secretkey = secret
    return authenticator


if __name__ == "__main__":
    main()
