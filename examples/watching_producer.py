"""A camera that encodes frames only while someone watches them.

It publishes on an XPUB socket connected to the router's XSUB endpoint. The router subscribes
upstream (``0x01 + topic``) when a topic gets its first viewer anywhere and unsubscribes
(``0x00 + topic``) when the last one leaves, so this producer reads those messages and stops
encoding when nobody watches. Each change is printed as one line of JSON on stdout.

    python examples/watching_producer.py --xsub tcp://127.0.0.1:7751 --topic /demo/camera
"""

from __future__ import annotations

import argparse
import json
import time

import zmq
from demo_producer import camera_frame

from router.config import DEFAULT_XSUB


def report(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def watched_changes(sock: zmq.Socket[bytes], topic: bytes) -> bool | None:
    """Read pending subscription messages; the last word on ``topic``, or ``None`` if none."""
    state: bool | None = None
    while sock.poll(0):
        message = sock.recv()
        if message[1:] == topic and message[:1] in (b"\x00", b"\x01"):
            state = message[:1] == b"\x01"
    return state


def run(xsub: str, topic: str, fps: float, duration: float) -> None:
    context = zmq.Context()
    sock = context.socket(zmq.XPUB)
    sock.linger = 0
    sock.connect(xsub)
    raw_topic = topic.encode()
    watched = False
    encoded = 0
    report("started", topic=topic)
    deadline = time.monotonic() + duration if duration > 0 else float("inf")
    while time.monotonic() < deadline:
        change = watched_changes(sock, raw_topic)
        if change is not None and change != watched:
            watched = change
            report("watched" if watched else "unwatched", topic=topic, encoded=encoded)
        if watched:
            sock.send_multipart([raw_topic, camera_frame(encoded)])
            encoded += 1
            time.sleep(1 / fps)
        else:
            sock.poll(int(1000 / fps))
    report("stopped", topic=topic, encoded=encoded)
    sock.close()
    context.term()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--xsub", default=DEFAULT_XSUB, help="the router's XSUB endpoint")
    parser.add_argument("--topic", default="/demo/camera")
    parser.add_argument("--fps", type=float, default=20.0)
    parser.add_argument("--duration", type=float, default=0.0, help="seconds to run (0: until stopped)")
    args = parser.parse_args()
    run(args.xsub, args.topic, args.fps, args.duration)


if __name__ == "__main__":
    main()
