"""Bench child: one PUB socket connected to every ``--xsub``, sending each ``--topic`` at ``--rate``
messages per second, each payload its topic's sequence number and its send time.

The payload is :data:`PAYLOAD` (``!QQ``): the sequence number (1, 2, ... per topic, counted whether
or not a router subscribed, so what a PUB socket drops shows as a gap) and ``time.monotonic_ns()``
at the send, the system-wide monotonic clock that the other processes of the bench read too. Rounds
of one message per topic follow a fixed schedule; a late round is not made up by a burst.

With ``--redis URL`` it sends with :class:`~router.cluster.producer.ClusterProducer` instead (PUSH
straight to each topic's owner, another router when the owner is down), never blocking: a message
no router could take at once counts as sent and shows as a gap.

With ``--immediate`` the socket has ``ZMQ_IMMEDIATE`` set. Without it (libzmq's default), the
socket keeps what it had for an endpoint across a reconnection: the messages queued meanwhile and
the subscriptions of the process that was there before.

Prints ``{"event": "ready"}`` once connected, and at a line on stdin (or EOF, or ``--cap`` seconds)
stops and prints ``{"event": "done", "last": {topic: last sequence number sent}}``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import select
import struct
import sys
import time
from collections.abc import Callable

import zmq

from router.cluster.producer import ClusterProducer

PAYLOAD = struct.Struct("!QQ")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.redis:
        return _main_cluster(args)
    with zmq.Context() as context, context.socket(zmq.PUB) as pub:
        pub.linger = 0
        pub.setsockopt(zmq.IMMEDIATE, int(args.immediate))
        for endpoint in args.xsub:
            pub.connect(endpoint)
        print(json.dumps({"event": "ready"}), flush=True)
        last = send_until_stopped(pub, [topic.encode() for topic in args.topic], args.rate, args.cap)
    done = {"event": "done", "last": {topic.decode(): seq for topic, seq in last.items()}}
    print(json.dumps(done), flush=True)
    return 0


def _main_cluster(args: argparse.Namespace) -> int:
    with ClusterProducer(args.redis) as producer:
        print(json.dumps({"event": "ready"}), flush=True)

        def send(topic: bytes, payload: bytes) -> None:
            producer.publish(topic.decode(), payload, block=False)

        last = send_rounds(send, [topic.encode() for topic in args.topic], args.rate, args.cap)
    done = {"event": "done", "last": {topic.decode(): seq for topic, seq in last.items()}}
    print(json.dumps(done), flush=True)
    return 0


def send_until_stopped(
    pub: zmq.Socket[bytes], topics: list[bytes], rate: float, cap: float
) -> dict[bytes, int]:
    def send(topic: bytes, payload: bytes) -> None:
        with contextlib.suppress(zmq.Again):
            pub.send_multipart([topic, payload], zmq.NOBLOCK)

    return send_rounds(send, topics, rate, cap)


def send_rounds(
    send: Callable[[bytes, bytes], None], topics: list[bytes], rate: float, cap: float
) -> dict[bytes, int]:
    """Rounds at ``rate`` until stdin has a line (or closes) or ``cap`` seconds passed."""
    sent = dict.fromkeys(topics, 0)
    start = time.monotonic()
    rounds = 0
    while time.monotonic() - start < cap:
        wait = start + rounds / rate - time.monotonic()
        if select.select([sys.stdin], [], [], max(0.0, wait))[0]:
            break
        for topic in topics:
            sent[topic] += 1
            send(topic, PAYLOAD.pack(sent[topic], time.monotonic_ns()))
        rounds += 1
    return sent


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--xsub", action="append", default=[], help="a router's XSUB endpoint (repeat)")
    parser.add_argument("--redis", help="send with a ClusterProducer reading this Redis instead of PUB")
    parser.add_argument("--topic", action="append", required=True, help="a topic to send (repeat)")
    parser.add_argument("--rate", type=float, required=True, help="messages per second and topic")
    parser.add_argument("--cap", type=float, default=600.0, help="stop after this many seconds")
    parser.add_argument(
        "--immediate",
        action="store_true",
        help="ZMQ_IMMEDIATE: queue messages only to connected routers, and forget a router's "
        "subscriptions when its connection drops",
    )
    return parser


if __name__ == "__main__":
    raise SystemExit(main())
