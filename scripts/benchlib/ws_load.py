"""Bench child: ``--connections`` WebSocket clients that count data frames and their latency.

The clients are raw asyncio protocols, not a WebSocket library: after the HTTP upgrade, a frame
parser reads only each frame's header and, in binary frames, the 8-byte send stamp of
:mod:`benchlib.stamped_producer` (after the 14-byte data header with ``--mode edge``). Bodies are
skipped, not buffered. Pings are answered. With ``--mode edge`` each client speaks switchboard.v1
first (``connect``, then ``subscribe`` to ``--topic``); with ``--mode relay`` it only connects.
With ``--mode batched`` it is an edge client that asks for batches (``docs/protocol.md`` 4.4.5):
each binary message is then read whole and its records counted as frames.
Prints ``{"event": "ready", "connections": n}`` once every client is ready.

Then it obeys one JSON command per stdin line, and ends at EOF. ``{"cmd": "trial", "expected": M,
"size": S, "idle": s, "cap": s}`` prints ``{"event": "armed"}``, counts binary frames whose payload
has S bytes, and prints ``{"event": "done", ...}`` (see :meth:`Trial.report`) when every client got
M of them, or none came for ``idle`` seconds after the first, or ``cap`` seconds passed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import sys
import time
from array import array
from collections import Counter
from typing import Any, cast

from benchlib.procs import raise_open_files_limit
from edges.core.client_wire import DATA_HEADER, SUBPROTOCOL
from router.loop import run_async

STAMP_BYTES = 8
CONNECTING_AT_ONCE = 64
IDLE_CHECK = 0.05
OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING = 1, 2, 8, 9
OP_PONG = 10


class Trial:
    """What every client of this process received since the trial was armed."""

    def __init__(self, size: int, stamp_offset: int, expected: int, clients: int) -> None:
        self.body = size + stamp_offset
        self.expected = expected
        self.clients = clients
        self.frames = 0
        self.reads = 0
        self.other = 0
        self.complete = 0
        self.first_ns = 0
        self.last_ns = 0
        self.latencies_ns = array("q")
        self.all_in = asyncio.Event()
        self.cpu_started = time.process_time()

    def client_complete(self) -> None:
        self.complete += 1
        if self.complete == self.clients:
            self.all_in.set()

    async def wait(self, idle: float, cap: float) -> None:
        """Until every client has its frames, or none came for ``idle`` s, or ``cap`` s passed."""
        deadline = time.monotonic() + cap
        while not self.all_in.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (self.last_ns and time.time_ns() - self.last_ns > idle * 1e9):
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(remaining, IDLE_CHECK)):
                    await self.all_in.wait()

    def report(self, closed: int) -> dict[str, Any]:
        """Counts, the span of data frames (wall clock), process CPU since armed, and latencies."""
        return {
            "event": "done",
            "frames": self.frames,
            "reads": self.reads,
            "other": self.other,
            "complete": self.complete,
            "closed": closed,
            "first_ns": self.first_ns,
            "last_ns": self.last_ns,
            "cpu": time.process_time() - self.cpu_started,
            "latency_us": histogram(self.latencies_ns),
        }


def histogram(latencies_ns: array[int]) -> list[list[int]]:
    """Latencies in microseconds, rounded to 3 significant digits, as [[value, count], ...]."""
    counts = Counter(int(float(f"{max(0, ns // 1000):.3g}")) for ns in latencies_ns)
    return [[value, count] for value, count in sorted(counts.items())]


def frame_header(data: bytes, pos: int, end: int) -> tuple[int, int] | None:
    """Where the body of the server frame at ``pos`` starts and how long it is; ``None`` when its
    header is not all in ``data[:end]`` yet."""
    length = data[pos + 1] & 0x7F
    body = pos + 2
    if length >= 126:
        body += 2 if length == 126 else 8
        if body > end:
            return None
        length = int.from_bytes(data[pos + 2 : body], "big")
    return body, length


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A final, masked client frame (RFC 6455 5.3 allows any key; zero leaves the payload as is)."""
    if len(payload) >= 126:
        raise ValueError("client control frames here are short")
    return bytes((0x80 | opcode, 0x80 | len(payload))) + b"\0\0\0\0" + payload


class Load:
    """This process's clients, and the trial they count for."""

    def __init__(self, port: int, mode: str, topic: str) -> None:
        self.port = port
        self.mode = mode
        self.topic = topic
        self.speaks_switchboard = mode in ("edge", "batched")
        self.batches = mode == "batched"
        self.stamp_offset = DATA_HEADER.size if self.speaks_switchboard else 0
        self.clients: list[Client] = []
        self.closed = 0
        self.trial = Trial(size=-1, stamp_offset=0, expected=1, clients=1)

    async def connect(self, count: int) -> None:
        loop = asyncio.get_running_loop()
        gate = asyncio.Semaphore(CONNECTING_AT_ONCE)

        async def one() -> None:
            async with gate:
                _, client = await loop.create_connection(lambda: Client(self), "127.0.0.1", self.port)
                await client.ready
                self.clients.append(client)

        async with asyncio.TaskGroup() as group:
            for _ in range(count):
                group.create_task(one())

    async def run_trial(self, command: dict[str, Any]) -> dict[str, Any]:
        self.trial = Trial(command["size"], self.stamp_offset, command["expected"], len(self.clients))
        for client in self.clients:
            client.count = 0
        print(json.dumps({"event": "armed"}), flush=True)
        await self.trial.wait(command["idle"], command["cap"])
        return self.trial.report(self.closed)


class Client(asyncio.Protocol):
    """One WebSocket connection: handshake, switchboard.v1 setup, then counting."""

    def __init__(self, load: Load) -> None:
        self.load = load
        self.count = 0
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self._response: bytes | None = b""
        self._carry = b""
        self._skip = 0
        self._skipped_length = 0
        self._skipped_stamp = 0

    # ------------------------------------------------------------ connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        key = base64.b64encode(os.urandom(16)).decode()
        protocol = f"Sec-WebSocket-Protocol: {SUBPROTOCOL}\r\n" if self.load.speaks_switchboard else ""
        self.transport.write(
            f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{self.load.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"{protocol}\r\n".encode()
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.load.closed += 1
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed before it was ready: {exc}"))

    def _send(self, opcode: int, payload: bytes) -> None:
        if self.transport is not None:
            self.transport.write(client_frame(opcode, payload))

    def _send_json(self, message: dict[str, Any]) -> None:
        self._send(OP_TEXT, json.dumps(message).encode())

    # ------------------------------------------------------------ input

    def data_received(self, data: bytes) -> None:
        if self._response is not None:
            data = self._upgrade(data)
        if data and self.load.batches:
            self._batches(data)
        elif data:
            self._frames(data)

    def _batches(self, data: bytes) -> None:
        """Parse whole messages, each binary one a batch of records; count those of the trial's
        frames as :meth:`_frames` counts frames."""
        now = time.time_ns()
        trial = self.load.trial
        trial.reads += 1
        data, pos, self._carry = self._carry + data, 0, b""
        end = len(data)
        matched = other = 0
        while end - pos >= 2:
            header = frame_header(data, pos, end)
            if header is None:
                break
            body, length = header
            frame_end = body + length
            if frame_end > end:
                break
            if data[pos] & 0x0F == OP_BINARY:
                found, missed = self._records(data, body, frame_end, trial, now)
                matched, other = matched + found, other + missed
            else:
                self._control(data[pos] & 0x0F, data[body:frame_end])
            pos = frame_end
        self._carry = data[pos:]
        if matched or other:
            self._tally(trial, matched, other, now)

    def _records(self, data: bytes, pos: int, end: int, trial: Trial, now: int) -> tuple[int, int]:
        matched = other = 0
        stamp_offset = self.load.stamp_offset
        while end - pos >= 4:
            length = int.from_bytes(data[pos : pos + 4], "big")
            stamp = pos + 4 + stamp_offset
            if length == trial.body:
                matched += 1
                trial.latencies_ns.append(now - int.from_bytes(data[stamp : stamp + STAMP_BYTES], "big"))
            else:
                other += 1
            pos += 4 + length
        return matched, other

    def _upgrade(self, data: bytes) -> bytes:
        """Collect the HTTP response; returns what follows it (already WebSocket frames)."""
        assert self._response is not None
        response = self._response + data
        head, found, rest = response.partition(b"\r\n\r\n")
        if not found:
            self._response = response
            return b""
        self._response = None
        if not head.startswith(b"HTTP/1.1 101"):
            self._fail(f"upgrade refused: {head[:200]!r}")
        elif self.load.speaks_switchboard:
            self._send_json({"op": "connect", "batch": self.load.batches})
        else:
            self.ready.set_result(None)
        return rest

    def _frames(self, data: bytes) -> None:
        """Parse frames; count complete binary ones of the trial's size. The hot path."""
        now = time.time_ns()
        trial = self.load.trial
        trial.reads += 1
        pos = 0
        if self._skip:
            if self._skip > len(data):
                self._skip -= len(data)
                return
            pos, self._skip = self._skip, 0
            self._count(trial, self._skipped_length == trial.body, self._skipped_stamp, now)
        if self._carry:
            data, pos, self._carry = self._carry + data[pos:], 0, b""
        end = len(data)
        stamp_offset = self.load.stamp_offset
        body_length, latencies = trial.body, trial.latencies_ns
        matched = other = 0
        while end - pos >= 2:
            header = frame_header(data, pos, end)
            if header is None:
                break
            body, length = header
            frame_end = body + length
            if data[pos] & 0x0F == OP_BINARY and length >= stamp_offset + STAMP_BYTES:
                stamp = body + stamp_offset
                if stamp + STAMP_BYTES > end:
                    break
                sent = int.from_bytes(data[stamp : stamp + STAMP_BYTES], "big")
                if frame_end > end:
                    self._skip, self._skipped_length, self._skipped_stamp = frame_end - end, length, sent
                    pos = end
                    break
                if length == body_length:
                    matched += 1
                    latencies.append(now - sent)
                else:
                    other += 1
            elif frame_end > end:
                break
            else:
                self._control(data[pos] & 0x0F, data[body:frame_end])
            pos = frame_end
        if pos < end:
            self._carry = data[pos:]
        if matched or other:
            self._tally(trial, matched, other, now)

    def _count(self, trial: Trial, matched: bool, sent: int, now: int) -> None:
        if matched:
            trial.latencies_ns.append(now - sent)
        self._tally(trial, int(matched), int(not matched), now)

    def _tally(self, trial: Trial, matched: int, other: int, now: int) -> None:
        trial.other += other
        if not matched:
            return
        trial.frames += matched
        trial.last_ns = now
        if not trial.first_ns:
            trial.first_ns = now
        before, self.count = self.count, self.count + matched
        if before < trial.expected <= self.count:
            trial.client_complete()

    def _control(self, opcode: int, payload: bytes) -> None:
        if opcode == OP_TEXT:
            self._reply(json.loads(payload))
        elif opcode == OP_PING:
            self._send(OP_PONG, payload)
        elif opcode == OP_CLOSE and self.transport is not None:
            self.transport.close()

    def _reply(self, message: dict[str, Any]) -> None:
        op = message.get("op")
        if op == "connected":
            self._send_json({"op": "subscribe", "id": 1, "topic": self.load.topic})
        elif op == "subscribed" and not self.ready.done():
            self.ready.set_result(None)
        elif op in ("error", "closing"):
            self._fail(f"the edge said {message}")

    def _fail(self, why: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(why))
        if self.transport is not None:
            self.transport.close()


# ---------------------------------------------------------------- process


async def serve(args: argparse.Namespace) -> None:
    load = Load(args.port, args.mode, args.topic)
    await load.connect(args.connections)
    print(json.dumps({"event": "ready", "connections": len(load.clients)}), flush=True)
    loop = asyncio.get_running_loop()
    commands = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(commands), sys.stdin)
    while line := await commands.readline():
        command = json.loads(line)
        if command.get("cmd") == "trial":
            print(json.dumps(await load.run_trial(command)), flush=True)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    raise_open_files_limit()
    return run_async(serve(args))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True, help="the WebSocket server's port on 127.0.0.1")
    parser.add_argument("--mode", choices=["edge", "batched", "relay"], required=True)
    parser.add_argument("--connections", type=int, required=True)
    parser.add_argument("--topic", default="/bench/data", help="what edge clients subscribe to")
    return parser


if __name__ == "__main__":
    raise SystemExit(main())
