"""A camera that encodes frames only while someone watches them, and no faster than they want.

It publishes on an XPUB socket connected to the router's XSUB endpoint. The router subscribes
upstream (``0x01 + topic``) when a topic gets its first viewer anywhere and unsubscribes
(``0x00 + topic``) when the last one leaves, so this producer reads those messages and stops
encoding when nobody watches. With ``--demand`` (the router's ``[router] demand`` endpoint), it
also reads the most frames per second any viewer wants, and encodes at that rate when it is below
``--fps``. Each change is printed as one line of JSON on stdout.

    python examples/watching_producer.py --xsub tcp://127.0.0.1:7751 --topic /demo/camera \
        --demand tcp://127.0.0.1:7755
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


def demand_changes(sock: zmq.Socket[bytes] | None, topic: bytes) -> float | None:
    """Read pending demand messages (``[topic, rate]``); the last rate for exactly ``topic`` (a
    SUB subscription matches every topic it is a prefix of), or ``None`` if none came."""
    rate: float | None = None
    while sock is not None and sock.poll(0):
        name, value = sock.recv_multipart()
        if name == topic:
            rate = float(value)
    return rate


def run(xsub: str, topic: str, fps: float, duration: float, demand: str | None = None) -> None:
    context = zmq.Context()
    sock = context.socket(zmq.XPUB)
    sock.linger = 0
    sock.connect(xsub)
    raw_topic = topic.encode()
    wanted: zmq.Socket[bytes] | None = None
    if demand:
        wanted = context.socket(zmq.SUB)
        wanted.linger = 0
        wanted.subscribe(raw_topic)
        wanted.connect(demand)
    watched, encoded, rate = False, 0, fps if wanted is None else 0.0
    report("started", topic=topic)
    deadline = time.monotonic() + duration if duration > 0 else float("inf")
    while time.monotonic() < deadline:
        change = watched_changes(sock, raw_topic)
        if change is not None and change != watched:
            watched = change
            report("watched" if watched else "unwatched", topic=topic, encoded=encoded)
        wants = demand_changes(wanted, raw_topic)
        if wants is not None and min(wants, fps) != rate:
            rate = min(wants, fps)
            report("demand", topic=topic, rate=wants, fps=rate)
        if watched and rate > 0:
            sock.send_multipart([raw_topic, camera_frame(encoded)])
            encoded += 1
            time.sleep(1 / rate)
        else:
            sock.poll(int(1000 / fps))
    report("stopped", topic=topic, encoded=encoded)
    sock.close()
    if wanted is not None:
        wanted.close()
    context.term()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--xsub", default=DEFAULT_XSUB, help="the router's XSUB endpoint")
    parser.add_argument("--topic", default="/demo/camera")
    parser.add_argument("--fps", type=float, default=20.0)
    parser.add_argument("--duration", type=float, default=0.0, help="seconds to run (0: until stopped)")
    parser.add_argument("--demand", help="the router's demand endpoint: encode no faster than viewers want")
    args = parser.parse_args()
    run(args.xsub, args.topic, args.fps, args.duration, args.demand)


if __name__ == "__main__":
    main()
