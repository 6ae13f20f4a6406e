"""Real processes and real sockets for integration tests: start, wait until ready, stop by pid."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import zmq
from websockets.asyncio.client import ClientConnection, connect

from edges.link import DataBatch, RouterLink
from router.curve import CurveClient
from router.wire import (
    DataMeta,
    EdgeMessage,
    RegisterClient,
    Registered,
    RouterMessage,
    Stats,
    StatsRequest,
    Subscribe,
    SubscribeOk,
    Unsubscribe,
    parse_data_head,
)

ROOT = Path(__file__).resolve().parents[2]
LOOPBACK_ANY_PORT = "tcp://127.0.0.1:0"


class AnnouncingProcess:
    """A Switchboard process started with ``--announce``: it prints one JSON ``ready`` line with
    what it bound, which :meth:`start` waits for. Stopped by its pid."""

    name = "process"
    log_path: Path | None = None
    """Where the process's stderr (its log) goes, appended; ``None``: the test's own stderr."""

    def __init__(self, extra_args: Sequence[str] = ()) -> None:
        self.extra_args = list(extra_args)
        self.announced: dict[str, str] = {}
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout: float = 15.0) -> dict[str, str]:
        log = self.log_path.open("ab") if self.log_path is not None else None
        try:
            self.process = subprocess.Popen(
                [*self.command(), *self.extra_args],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=log,
                env={**os.environ},
            )
        finally:
            if log is not None:
                log.close()
        self.announced = _read_ready_line(self.process, self.name, timeout)
        return self.announced

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self, signum: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signum)
            self.process.wait(timeout=10)

    def stop(self) -> int | None:
        """Ask the process to stop (SIGTERM); kill it if it does not within 5 s."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        return self.process.returncode


class RouterProcess(AnnouncingProcess):
    """``python -m router`` bound to ports it picks (or, after a restart, the same ones), its
    admin API included."""

    name = "router"

    def __init__(self, extra_args: Sequence[str] = ()) -> None:
        super().__init__(extra_args)
        self.wanted = dict.fromkeys(("pull", "xsub", "xpub", "control"), LOOPBACK_ANY_PORT)
        self.wanted_admin = "127.0.0.1:0"

    @property
    def endpoints(self) -> dict[str, str]:
        return self.announced

    @property
    def admin_url(self) -> str:
        return self.announced["admin"]

    def command(self) -> list[str]:
        args = [sys.executable, "-m", "router", "--announce", "--heartbeat-interval", "0.2"]
        for name, endpoint in self.wanted.items():
            args += [f"--{name}", endpoint]
        return [*args, "--admin", self.wanted_admin]

    def restart_on_same_ports(self) -> None:
        self.wanted = {name: self.announced[name] for name in self.wanted}
        self.wanted_admin = self.admin_url.removeprefix("http://")
        self.start()


class EdgeProcess(AnnouncingProcess):
    """``python -m MODULE`` of one edge kind, on a free port, linked to ``router``."""

    module = ""

    def __init__(self, router: RouterProcess, extra_args: Sequence[str] = ()) -> None:
        super().__init__(extra_args)
        self.router = router

    def command(self) -> list[str]:
        endpoints = self.router.endpoints
        return [
            sys.executable, "-m", self.module, "--announce", "--port", "0",
            "--control", endpoints["control"], "--xpub", endpoints["xpub"], "--heartbeat-interval", "0.2",
        ]  # fmt: skip

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT`` of its HTTP port (the viewer, ``/metrics``)."""
        return f"127.0.0.1:{self.announced['port']}"


class WebSocketEdgeProcess(EdgeProcess):
    """``python -m edges.websocket`` on a free port, linked to ``router``."""

    name = "websocket edge"
    module = "edges.websocket"

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.announced['port']}/"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.announced['port']}/"


def _read_ready_line(process: subprocess.Popen[bytes], name: str, timeout: float) -> dict[str, str]:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    os.set_blocking(process.stdout.fileno(), False)
    buffered = b""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode} before it was ready")
        buffered += process.stdout.read() or b""
        if b"\n" in buffered:
            ready = json.loads(buffered.split(b"\n", 1)[0])
            assert ready.pop("event") == "ready"
            return {str(k): str(v) for k, v in ready.items()}
        time.sleep(0.02)
    process.kill()
    raise TimeoutError(f"{name} did not announce what it bound")


class TestEdge:
    """A real edge link with one or more clients whose data lands in a queue.

    Entering waits up to ``welcome_timeout`` seconds for the router's welcome; ``0`` does not wait
    (for an edge the router should turn away).
    """

    __test__ = False

    def __init__(
        self,
        endpoints: dict[str, str],
        heartbeat_interval: float = 0.2,
        curve: CurveClient | None = None,
        welcome_timeout: float = 10.0,
    ) -> None:
        self.link = RouterLink(
            protocol="test",
            control=endpoints["control"],
            xpub=endpoints["xpub"],
            heartbeat_interval=heartbeat_interval,
            curve=curve,
        )
        self.welcome_timeout = welcome_timeout
        self.received: asyncio.Queue[tuple[DataMeta, bytes]] = asyncio.Queue()
        self.clients: dict[str, set[str]] = {}
        self.link.on_data = self._on_data
        self.link.resync = self._resync
        self._runner: asyncio.Task[None] | None = None

    async def __aenter__(self) -> TestEdge:
        self._runner = asyncio.create_task(self.link.run())
        if self.welcome_timeout:
            async with asyncio.timeout(self.welcome_timeout):
                await self.link.welcomed.wait()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._runner is not None
        self._runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._runner

    def _on_data(self, batch: DataBatch) -> None:
        for head, payload in batch:
            self.received.put_nowait((parse_data_head(head), bytes(payload)))

    def _resync(self) -> list[EdgeMessage]:
        messages: list[EdgeMessage] = []
        for client_id, topics in self.clients.items():
            messages.append(RegisterClient(request_id=self.link.next_request_id(), client_id=client_id))
            messages += [
                Subscribe(request_id=self.link.next_request_id(), client_id=client_id, topic=topic)
                for topic in sorted(topics)
            ]
        return messages

    async def request(self, message: EdgeMessage) -> RouterMessage:
        async with asyncio.timeout(5):
            return await self.link.request(message)

    async def register(self, client_id: str) -> RouterMessage:
        reply = await self.request(
            RegisterClient(request_id=self.link.next_request_id(), client_id=client_id)
        )
        if isinstance(reply, Registered):
            self.clients[client_id] = set()
        return reply

    async def subscribe(self, client_id: str, topic: str, max_rate: float | None = None) -> RouterMessage:
        self.link.watch(topic)
        request = Subscribe(
            request_id=self.link.next_request_id(), client_id=client_id, topic=topic, max_rate=max_rate
        )
        reply = await self.request(request)
        if isinstance(reply, SubscribeOk):
            self.clients[client_id].add(topic)
        return reply

    async def request_unsubscribe(self, client_id: str, topic: str) -> RouterMessage:
        request = Unsubscribe(request_id=self.link.next_request_id(), client_id=client_id, topic=topic)
        reply = await self.request(request)
        self.clients[client_id].discard(topic)
        return reply

    async def stats(self) -> dict[str, object]:
        reply = await self.request(StatsRequest(request_id=self.link.next_request_id()))
        assert isinstance(reply, Stats), reply
        return reply.stats

    async def next_message(self, timeout: float = 5.0) -> tuple[DataMeta, bytes]:
        async with asyncio.timeout(timeout):
            return await self.received.get()

    def drain(self) -> list[tuple[DataMeta, bytes]]:
        items = []
        while not self.received.empty():
            items.append(self.received.get_nowait())
        return items


async def eventually(check: object, timeout: float = 10.0, interval: float = 0.05) -> None:
    """Wait until the zero-argument callable (sync or async) ``check`` returns true."""
    assert callable(check)
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


Started = TypeVar("Started", bound=AnnouncingProcess)


@contextlib.contextmanager
def running(process: Started) -> Iterator[Started]:
    """``process`` started (ready) for the length of the block, then stopped by its pid."""
    process.start()
    try:
        yield process
    finally:
        process.stop()


@contextlib.contextmanager
def demo_producer(pull: str) -> Iterator[subprocess.Popen[bytes]]:
    """``examples/demo_producer.py`` publishing the demo camera and telemetry to ``pull``."""
    producer = subprocess.Popen([sys.executable, "examples/demo_producer.py", "--pull", pull], cwd=ROOT)
    try:
        yield producer
    finally:
        producer.terminate()
        producer.wait(timeout=10)


@contextlib.contextmanager
def configured_router(
    directory: Path, config: str, extra_args: Sequence[str] = ()
) -> Iterator[RouterProcess]:
    """A router process reading ``config`` (TOML text, written to ``directory``) for the block."""
    path = directory / "router.toml"
    path.write_text(config, encoding="utf-8")
    with running_router(["--config", str(path), *extra_args]) as process:
        yield process


@contextlib.contextmanager
def running_router(extra_args: Sequence[str] = ()) -> Iterator[RouterProcess]:
    """A router process for the length of the block."""
    process = RouterProcess(extra_args)
    process.start()
    try:
        yield process
    finally:
        process.stop()


@contextlib.contextmanager
def push_socket(endpoint: str, curve: CurveClient | None = None) -> Iterator[zmq.Socket[bytes]]:
    """A raw PUSH producer connected to ``endpoint`` for the length of the block."""
    with connected_socket(zmq.PUSH, endpoint, curve) as sock:
        yield sock


@contextlib.contextmanager
def connected_socket(
    kind: int, endpoint: str, curve: CurveClient | None = None, routing_id: bytes | None = None
) -> Iterator[zmq.Socket[bytes]]:
    """A raw socket of ``kind`` in a context of its own, connected to ``endpoint`` (with Curve,
    and a routing id, if given) for the length of the block."""
    context = zmq.Context()
    sock = context.socket(kind)
    sock.linger = 0
    if routing_id is not None:
        sock.setsockopt(zmq.ROUTING_ID, routing_id)
    if curve is not None:
        curve.secure(sock)
    sock.connect(endpoint)
    try:
        yield sock
    finally:
        sock.close()
        context.term()


async def connected_client(url: str, receive_buffer: int | None = None) -> ClientConnection:
    """A ``switchboard.v1`` WebSocket client that said ``connect`` and got ``connected``.

    ``receive_buffer`` shrinks the socket's kernel buffer, so a client that stops reading pushes
    back on the edge at once. The client's own queue holds 4 messages (``max_queue``).
    """
    sock = None
    if receive_buffer is not None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.setblocking(False)
        host, port = url.removeprefix("ws://").rstrip("/").split(":")
        await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    ws = await connect(url, subprotocols=["switchboard.v1"], proxy=None, sock=sock, max_queue=4)  # type: ignore[list-item]
    await ws.send('{"op":"connect"}')
    async with asyncio.timeout(10):
        reply = await ws.recv()
    assert isinstance(reply, str)
    assert json.loads(reply)["op"] == "connected", reply
    return ws


def refused_start(module: str, *args: str) -> str:
    """Run ``python -m module args``, which must refuse to start: status 2 and one line on stderr
    (no traceback); returns that line."""
    done = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.splitlines()
    return line
