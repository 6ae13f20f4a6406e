"""Bench child: PUSH ``count`` messages ``[topic, payload]`` as fast as blocking sends allow.

Prints one JSON line when done: ``{"event": "done", "sent", "wall", "thread_cpu", "process_cpu"}``.
"""

from __future__ import annotations

import argparse
import json
import time

import zmq

from benchlib.clocks import Instant

CHUNK = 1024


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    with zmq.Context() as context, context.socket(zmq.PUSH) as push:
        push.sndtimeo = 200
        push.linger = 5_000
        push.connect(args.pull)
        frames = [args.topic.encode(), b"x" * args.size]
        started = Instant.now()
        sent = send(push, frames, args.count, time.monotonic() + args.cap)
        span = Instant.now() - started
        print(json.dumps({"event": "done", "sent": sent, **span.as_dict()}), flush=True)
    return 0


def send(push: zmq.Socket[bytes], frames: list[bytes], count: int, deadline: float) -> int:
    """Send until ``count`` or ``deadline``; a full queue blocks (backpressure), it never drops."""
    send_multipart = push.send_multipart
    sent = 0
    while sent < count and time.monotonic() < deadline:
        chunk = min(CHUNK, count - sent)
        try:
            for _ in range(chunk):
                send_multipart(frames)
                sent += 1
        except zmq.Again:
            continue
    return sent


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pull", required=True, help="the PULL endpoint to connect to")
    parser.add_argument("--topic", required=True)
    parser.add_argument("--size", type=int, required=True, help="payload bytes")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--cap", type=float, default=60.0, help="stop sending after this many seconds")
    return parser


if __name__ == "__main__":
    raise SystemExit(main())
