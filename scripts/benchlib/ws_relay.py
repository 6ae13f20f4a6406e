"""Bench child: the baseline, a plain ``websockets.broadcast`` relay.

It binds a PULL socket and a WebSocket server (``compression=None``) on 127.0.0.1, keeps every open
connection in a set, and calls ``websockets.broadcast(connections, payload)`` for each message it
drains from the PULL socket (``await poll`` then ``recv_multipart(NOBLOCK)`` until ``zmq.Again``, the
drain pattern of the field notes). It runs on the same event loop as the edge (uvloop when
installed). Prints ``{"event": "ready", "pull": ..., "port": ...}`` once bound.
"""

from __future__ import annotations

import contextlib
import json

import websockets
import zmq
import zmq.asyncio
from websockets.asyncio.server import ServerConnection, serve

from router.loop import run_async

BATCH = 1_000


def main() -> int:
    return run_async(relay())


async def relay() -> None:
    connections: set[ServerConnection] = set()

    async def hold(connection: ServerConnection) -> None:
        connections.add(connection)
        try:
            await connection.wait_closed()
        finally:
            connections.discard(connection)

    context = zmq.asyncio.Context()
    pull = context.socket(zmq.PULL)
    pull.linger = 0
    pull.bind("tcp://127.0.0.1:*")
    async with serve(hold, "127.0.0.1", 0, compression=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        endpoint = pull.getsockopt_string(zmq.LAST_ENDPOINT)
        print(json.dumps({"event": "ready", "pull": endpoint, "port": port}), flush=True)
        await forward(pull, connections)


async def forward(pull: zmq.asyncio.Socket, connections: set[ServerConnection]) -> None:
    receive = zmq.Socket.shadow(pull.underlying).recv_multipart
    broadcast = websockets.broadcast
    while True:
        await pull.poll(zmq.POLLIN)
        with contextlib.suppress(zmq.Again):
            for _ in range(BATCH):
                broadcast(connections, receive(zmq.NOBLOCK)[-1])


if __name__ == "__main__":
    raise SystemExit(main())
