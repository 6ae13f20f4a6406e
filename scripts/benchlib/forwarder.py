"""Bench child: the baseline, a bare pyzmq forwarder (blocking PULL ``recv_multipart`` -> PUB).

It NUL-terminates the topic frame, as the router does, so the same exact-topic SUB filter works.
Prints ``{"event": "ready", "pull": ..., "xpub": ...}`` once bound, then forwards until killed.
"""

from __future__ import annotations

import argparse
import json
from typing import NoReturn

import zmq

LOOPBACK_ANY_PORT = "tcp://127.0.0.1:*"


def main(argv: list[str] | None = None) -> NoReturn:
    args = _parser().parse_args(argv)
    context = zmq.Context()
    pull = bind(context, zmq.PULL, zmq.RCVHWM, args.rcvhwm)
    pub = bind(context, zmq.PUB, zmq.SNDHWM, args.sndhwm)
    endpoints = {"pull": endpoint(pull), "xpub": endpoint(pub)}
    print(json.dumps({"event": "ready", **endpoints}), flush=True)
    forward(pull, pub)


def bind(context: zmq.Context[zmq.Socket[bytes]], kind: int, hwm_option: int, hwm: int) -> zmq.Socket[bytes]:
    sock = context.socket(kind)
    sock.setsockopt(hwm_option, hwm)
    sock.bind(LOOPBACK_ANY_PORT)
    return sock


def endpoint(sock: zmq.Socket[bytes]) -> str:
    return sock.getsockopt_string(zmq.LAST_ENDPOINT)


def forward(pull: zmq.Socket[bytes], pub: zmq.Socket[bytes]) -> NoReturn:
    receive = pull.recv_multipart
    send = pub.send_multipart
    while True:
        frames = receive()
        frames[0] += b"\0"
        send(frames, zmq.NOBLOCK)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rcvhwm", type=int, default=10_000, help="PULL high-water mark")
    parser.add_argument("--sndhwm", type=int, default=10_000, help="PUB high-water mark")
    return parser


if __name__ == "__main__":
    main()
