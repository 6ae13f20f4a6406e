"""Bench child: PUSH ``count`` messages ``[topic, payload]`` whose payload starts with its send time.

The first 8 bytes of every payload are ``time.time_ns()`` at the send (big-endian), so a receiver
in another process on the same machine gets the end-to-end latency as its own ``time.time_ns()``
minus those bytes. Without ``--rate`` it sends as fast as blocking sends allow; with it, on a fixed
schedule (a late send is not made up by a burst beyond the schedule).

Prints one JSON line when done: ``{"event": "done", "sent", "first_ns", "last_ns", "cpu"}``.
"""

from __future__ import annotations

import argparse
import json
import time

import zmq

STAMP_BYTES = 8


def stamped(pad: bytes) -> bytes:
    return time.time_ns().to_bytes(STAMP_BYTES, "big") + pad


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    with zmq.Context() as context, context.socket(zmq.PUSH) as push:
        push.sndtimeo = 200
        push.linger = 5_000
        push.connect(args.pull)
        topic, pad = args.topic.encode(), b"x" * max(0, args.size - STAMP_BYTES)
        cpu, first = time.process_time(), time.time_ns()
        deadline = time.monotonic() + args.cap
        if args.rate > 0:
            sent = send_paced(push, topic, pad, args.count, args.rate, deadline)
        else:
            sent = send_flat_out(push, topic, pad, args.count, deadline)
        done = {"sent": sent, "first_ns": first, "last_ns": time.time_ns(), "cpu": time.process_time() - cpu}
        print(json.dumps({"event": "done", **done}), flush=True)
    return 0


def send_flat_out(push: zmq.Socket[bytes], topic: bytes, pad: bytes, count: int, deadline: float) -> int:
    """A full queue blocks (backpressure) until ``deadline``; nothing is dropped here."""
    send_multipart = push.send_multipart
    sent = 0
    while sent < count and time.monotonic() < deadline:
        try:
            for _ in range(min(1024, count - sent)):
                send_multipart([topic, stamped(pad)])
                sent += 1
        except zmq.Again:
            continue
    return sent


def send_paced(
    push: zmq.Socket[bytes], topic: bytes, pad: bytes, count: int, rate: float, deadline: float
) -> int:
    start = time.perf_counter()
    sent = 0
    while sent < count and time.monotonic() < deadline:
        wait = start + sent / rate - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        try:
            push.send_multipart([topic, stamped(pad)])
        except zmq.Again:
            continue
        sent += 1
    return sent


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pull", required=True, help="the PULL endpoint to connect to")
    parser.add_argument("--topic", required=True)
    parser.add_argument("--size", type=int, required=True, help="payload bytes (at least 8)")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument(
        "--rate", type=float, default=0.0, help="messages per second (0: as fast as possible)"
    )
    parser.add_argument("--cap", type=float, default=60.0, help="stop sending after this many seconds")
    return parser


if __name__ == "__main__":
    raise SystemExit(main())
