"""Bench child: one SUB receiver that counts messages of one size on one topic.

With ``--control`` it is a real edge client first: a :class:`RouterLink` says hello, registers a
client (named after the process, so several receivers can share a router or a cluster) and
subscribes it, and keeps heartbeats going while data flows; other router messages, such as the
shard map of cluster mode, are ignored. Data is read the same way in both modes, by the drain
pattern on a SUB socket subscribed to ``topic + NUL``.

Messages of another size are probes: the first one prints ``{"event": "probe"}``, proof that the
path is open. When ``--expected`` messages arrived, or none came for ``--idle`` seconds, or
``--cap`` seconds passed, it prints ``{"event": "done", "received", "span": {...}, "first_at",
"last_at"}`` where the span runs from the first drained batch to the last and excludes the first
batch's messages; ``first_at`` and ``last_at`` are those batches' ``time.perf_counter()``, which on
Linux is the system-wide monotonic clock, so receivers running together can be compared.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import zmq
import zmq.asyncio

from benchlib.clocks import Instant
from edges.link import RouterLink
from router.wire import RegisterClient, Registered, Subscribe, SubscribeOk

BATCH = 1_000
COPY_BELOW = 16 * 1024

_Receive = Callable[[int, bool], "list[bytes] | list[zmq.Frame]"]


@dataclass
class Counts:
    """What arrived so far, and when the first and last data batches did."""

    received: int = 0
    in_first_batch: int = 0
    probes: int = 0
    first: Instant | None = None
    last: Instant | None = None

    def add(self, data: int, probes: int) -> None:
        if probes and not self.probes:
            print(json.dumps({"event": "probe"}), flush=True)
        self.probes += probes
        if not data:
            return
        self.last = Instant.now()
        if self.first is None:
            self.first, self.in_first_batch = self.last, data
        self.received += data

    def done(self) -> dict[str, object]:
        span = self.last - self.first if self.first and self.last else Instant(0.0, 0.0, 0.0)
        timed = self.received - self.in_first_batch
        ends = {
            "first_at": self.first.wall if self.first else 0.0,
            "last_at": self.last.wall if self.last else 0.0,
        }
        return {"event": "done", "received": self.received, "timed": timed, "span": span.as_dict(), **ends}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    counts = asyncio.run(receive(args))
    print(json.dumps(counts.done()), flush=True)
    return 0


async def receive(args: argparse.Namespace) -> Counts:
    context = zmq.asyncio.Context()
    sub = context.socket(zmq.SUB)
    sub.linger = 0
    sub.connect(args.xpub)
    sub.setsockopt(zmq.SUBSCRIBE, args.topic.encode() + b"\0")
    link_task = await subscribe_client(args) if args.control else None
    try:
        return await count(sub, args)
    finally:
        if link_task is not None:
            link_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await link_task
        context.destroy(linger=0)


async def subscribe_client(args: argparse.Namespace) -> asyncio.Task[None]:
    """Register and subscribe a client as an edge does; the link then runs until cancelled."""
    link = RouterLink(protocol="bench", control=args.control, xpub=args.xpub)
    client_id = f"bench-receiver-{os.getpid()}"
    task = asyncio.create_task(link.run())
    async with asyncio.timeout(10):
        await link.welcomed.wait()
        register = RegisterClient(request_id=link.next_request_id(), client_id=client_id)
        registered = await link.request(register)
        subscribe = Subscribe(request_id=link.next_request_id(), client_id=client_id, topic=args.topic)
        subscribed = await link.request(subscribe)
    if not isinstance(registered, Registered) or not isinstance(subscribed, SubscribeOk):
        raise RuntimeError(f"the router refused the bench client: {registered!r}, {subscribed!r}")
    return task


async def count(sub: zmq.asyncio.Socket, args: argparse.Namespace) -> Counts:
    receive = zmq.Socket.shadow(sub.underlying).recv_multipart
    copy = args.size < COPY_BELOW
    counts = Counts()
    deadline = time.monotonic() + args.cap
    while counts.received < args.expected:
        wait = deadline - time.monotonic()
        if counts.received:
            wait = min(wait, args.idle)
        if wait <= 0 or not await sub.poll(timeout=wait * 1000):
            break
        data, probes = drain(receive, args.size, copy)
        counts.add(data, probes)
        if data + probes == BATCH:
            await asyncio.sleep(0)
    return counts


def drain(receive: _Receive, size: int, copy: bool) -> tuple[int, int]:
    """Receive without blocking until the socket is empty or a batch is full: (data, probes)."""
    data = probes = 0
    with contextlib.suppress(zmq.Again):
        for _ in range(BATCH):
            if len(receive(zmq.NOBLOCK, copy)[-1]) == size:
                data += 1
            else:
                probes += 1
    return data, probes


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--xpub", required=True, help="the XPUB (or PUB) endpoint to connect to")
    parser.add_argument("--control", help="the router's control endpoint: register a client first")
    parser.add_argument("--topic", required=True)
    parser.add_argument("--size", type=int, required=True, help="payload bytes of data messages")
    parser.add_argument("--expected", type=int, required=True, help="stop after this many messages")
    parser.add_argument("--idle", type=float, default=1.0, help="stop after this long without data")
    parser.add_argument("--cap", type=float, default=60.0, help="stop after this many seconds")
    return parser


if __name__ == "__main__":
    raise SystemExit(main())
