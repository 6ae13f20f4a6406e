"""Bench child: switchboard.v1 clients on plain blocking sockets, which read slowly or not at all.

Unlike :mod:`benchlib.ws_load`, these clients pace their reads at the TCP level: a client calls
``recv`` only for the bytes of the one frame it is about to handle, so whatever it has not read stays
in the kernel's socket buffers and, behind them, in the edge's queue for it.

``--mode paced``: one client. It reads one frame at a time; for each data frame whose payload has
``--size`` bytes it notes the frame's age (its ``time.time_ns()`` minus the send stamp of
:mod:`benchlib.stamped_producer`), then sleeps ``--pause`` seconds (0: it reads as fast as it can).
It stops ``--seconds`` after the first such frame and prints ``{"event": "done", ...}`` (see
:meth:`Tally.report`). With ``--window N`` it subscribes with that window and acknowledges each data
frame once it is done with it, as a viewer should (docs/protocol.md, 4.2).

``--mode never``: ``--connections`` clients. Each reads until its first data frame, then never reads
again. At a line (or EOF) on stdin it prints ``{"event": "done", "open": n}``: how many of its
connections the edge has not closed.

Both modes print ``{"event": "ready"}`` once every client is subscribed to ``--topic``, and
``{"event": "flowing"}`` once every client got a data frame (probes of another size will do). Every
wait ends by ``--cap`` seconds after the start.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import select
import socket
import sys
import time
from array import array
from typing import Any

from benchlib.stamped_producer import STAMP_BYTES
from benchlib.ws_load import OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, client_frame, histogram
from edges.core.client_wire import DATA_HEADER, FRAME_DATA, FRAME_SKIPPED, SKIPPED_FRAME, SUBPROTOCOL

CLOSED_MASK = select.POLLHUP | select.POLLERR | select.POLLRDHUP
DATA_TYPE = bytes((FRAME_DATA,))
SKIPPED_TYPE = bytes((FRAME_SKIPPED,))


class ClosedError(ConnectionError):
    """The edge closed the connection (close frame or end of stream)."""


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


class RawClient:
    """One connection to the edge, read exactly one frame at a time."""

    def __init__(self, port: int, deadline: float) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=_remaining(deadline))
        self._pending = b""
        """Bytes read past the HTTP response, before the first frame."""

    # ------------------------------------------------------------ opening

    def open(self, port: int, topic: str, deadline: float, window: int | None = None) -> None:
        """HTTP upgrade, ``connect``, then ``subscribe`` to ``topic`` (with ``window``); returns once
        subscribed."""
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Protocol: {SUBPROTOCOL}\r\n\r\n".encode()
        )
        self._read_response(deadline)
        self.send_json({"op": "connect"})
        self._await_reply("connected", deadline)
        subscribe: dict[str, Any] = {"op": "subscribe", "id": 1, "topic": topic}
        if window is not None:
            subscribe["window"] = window
        self.send_json(subscribe)
        self._await_reply("subscribed", deadline)

    def _read_response(self, deadline: float) -> None:
        response = b""
        while b"\r\n\r\n" not in response:
            response += self._recv(4096, deadline)
        head, _, self._pending = response.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(f"upgrade refused: {head[:200]!r}")

    def _await_reply(self, op: str, deadline: float) -> None:
        while True:
            opcode, payload = self.frame(deadline)
            message = json.loads(payload) if opcode == OP_TEXT else {}
            if message.get("op") == op:
                return
            if message.get("op") in ("error", "closing"):
                raise ConnectionError(f"the edge said {message}")

    def send_json(self, message: dict[str, Any]) -> None:
        self.sock.sendall(client_frame(OP_TEXT, json.dumps(message).encode()))

    def ack(self, data_frame: bytes) -> None:
        """Done with this data frame: the edge may send the next one of its window."""
        _, _, channel, offset = DATA_HEADER.unpack_from(data_frame)
        self.send_json({"op": "ack", "channel": channel, "offset": offset})

    # ------------------------------------------------------------ reading

    def frame(self, deadline: float) -> tuple[int, bytes]:
        """The next data or text frame's opcode and payload, answering pings on the way.
        Raises ``TimeoutError`` at ``deadline`` and :class:`ClosedError` if the edge closes."""
        while True:
            head = self._exactly(2, deadline)
            length = head[1] & 0x7F
            if length >= 126:
                length = int.from_bytes(self._exactly(2 if length == 126 else 8, deadline), "big")
            opcode, payload = head[0] & 0x0F, self._exactly(length, deadline)
            if opcode == OP_PING:
                self.sock.sendall(client_frame(OP_PONG, payload))
            elif opcode == OP_CLOSE:
                raise ClosedError(f"the edge closed the connection: {payload[2:]!r}")
            else:
                return opcode, payload

    def _exactly(self, count: int, deadline: float) -> bytes:
        chunks, self._pending = [self._pending[:count]], self._pending[count:]
        got = len(chunks[0])
        while got < count:
            chunk = self._recv(count - got, deadline)
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def _recv(self, count: int, deadline: float) -> bytes:
        self.sock.settimeout(_remaining(deadline))
        chunk = self.sock.recv(count)
        if not chunk:
            raise ClosedError("the edge ended the stream")
        return chunk

    def await_data(self, deadline: float) -> bytes:
        """Read until the first data frame; returns it."""
        while True:
            opcode, payload = self.frame(deadline)
            if _is_data(opcode, payload):
                return payload

    def is_open(self) -> bool:
        """Whether the edge has not closed or reset the connection (its unread bytes do not count)."""
        poller = select.poll()
        poller.register(self.sock, select.POLLRDHUP)
        return not any(mask & CLOSED_MASK for _, mask in poller.poll(0))


def _remaining(deadline: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("the deadline passed")
    return remaining


def _is_data(opcode: int, payload: bytes) -> bool:
    return opcode == OP_BINARY and payload[:1] == DATA_TYPE


# ---------------------------------------------------------------- paced


class Tally:
    """What a paced client read: its timed frames with their ages, and the messages skipped."""

    def __init__(self, size: int) -> None:
        self.body = DATA_HEADER.size + size
        self.frames = 0
        self.skipped = 0
        self.first_ns = 0
        self.last_ns = 0
        self.ages_ns = array("q")

    def timed(self, opcode: int, payload: bytes) -> bool:
        """Count one frame; whether it is a data frame of the timed size."""
        if opcode == OP_BINARY and payload[:1] == SKIPPED_TYPE:
            self.skipped += SKIPPED_FRAME.unpack(payload)[-1]
        if not _is_data(opcode, payload) or len(payload) != self.body:
            return False
        now = time.time_ns()
        sent = int.from_bytes(payload[DATA_HEADER.size : DATA_HEADER.size + STAMP_BYTES], "big")
        self.ages_ns.append(now - sent)
        self.first_ns = self.first_ns or now
        self.last_ns = now
        self.frames += 1
        return True

    def report(self, closed: bool) -> dict[str, Any]:
        return {
            "frames": self.frames,
            "skipped": self.skipped,
            "first_ns": self.first_ns,
            "last_ns": self.last_ns,
            "closed": closed,
            "age_us": histogram(self.ages_ns),
        }


def run_paced(client: RawClient, args: argparse.Namespace, cap: float) -> dict[str, Any]:
    """Read one frame, and after a timed one sleep ``--pause``, until ``--seconds`` after the first."""
    tally, end = Tally(args.size), cap
    first = client.await_data(end)
    if args.window:
        client.ack(first)
    emit("flowing")
    try:
        while time.monotonic() < end:
            opcode, payload = client.frame(end)
            if tally.timed(opcode, payload):
                if tally.frames == 1:
                    end = min(cap, time.monotonic() + args.seconds)
                if args.pause:
                    time.sleep(args.pause)
            if args.window and _is_data(opcode, payload):
                client.ack(payload)
    except TimeoutError:
        pass
    except ClosedError:
        return tally.report(closed=True)
    return tally.report(closed=False)


# ---------------------------------------------------------------- never


def run_never(clients: list[RawClient], cap: float) -> dict[str, Any]:
    """After one data frame each, read nothing; report which connections are open at a stdin line."""
    for client in clients:
        client.await_data(cap)
    emit("flowing")
    if select.select([sys.stdin], [], [], _remaining(cap))[0]:
        sys.stdin.readline()
    return {"open": sum(client.is_open() for client in clients)}


# ---------------------------------------------------------------- process


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    cap = time.monotonic() + args.cap
    count = 1 if args.mode == "paced" else args.connections
    clients = [RawClient(args.port, cap) for _ in range(count)]
    for client in clients:
        client.open(args.port, args.topic, cap, args.window)
    emit("ready", connections=len(clients))
    done = run_paced(clients[0], args, cap) if args.mode == "paced" else run_never(clients, cap)
    emit("done", **done)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True, help="the edge's port on 127.0.0.1")
    parser.add_argument("--mode", choices=["paced", "never"], required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--connections", type=int, default=1, help="clients (--mode never)")
    parser.add_argument("--size", type=int, default=100, help="payload bytes of the timed frames (paced)")
    parser.add_argument("--pause", type=float, default=0.0, help="seconds of sleep after each timed frame")
    parser.add_argument("--window", type=int, help="subscribe with this window and acknowledge frames")
    parser.add_argument(
        "--seconds", type=float, default=5.0, help="how long to read after the first timed frame"
    )
    parser.add_argument(
        "--cap", type=float, default=120.0, help="every wait ends this many seconds after start"
    )
    return parser


if __name__ == "__main__":
    raise SystemExit(main())
