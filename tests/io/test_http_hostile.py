"""Hostile HTTP against the real processes: the router's admin API, the router's ``/metrics`` and the
WebRTC edge's WHEP port.

Malformed heads get a 4xx with aiohttp's C parser and with its pure-Python one
(``AIOHTTP_NO_EXTENSIONS``). 2,000 slow sockets from 127.0.0.1 lock nobody out: the per-address
cap refuses all but a few, a client from 127.0.0.2 is served at once meanwhile, and the header
deadline closes the slow ones that were let in. Raw sockets for the hostile side, ``http.client``
for the good one.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import NamedTuple

import pytest

from router.http_limits import HttpLimits
from tests.io.harness import RouterProcess, refused_start
from tests.io.metrics_scrape import Scrape
from tests.io.rtc_client import WebRtcEdgeProcess, loopback_only

pytestmark = pytest.mark.timeout(180)

SLOW_SOCKETS = 2000
HEADER_TIMEOUT = HttpLimits().header_timeout
"""Every listener's default header deadline (the processes run with their defaults)."""
PER_ADDRESS = {"admin": 32, "metrics": 8, "whep": 32}
"""The default per-address caps (docs/operations.md)."""
SLOW_HEAD = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
"""A head that a byte of header value at a time never completes."""


class Target(NamedTuple):
    name: str
    port: int
    get: str
    """A path that answers a plain GET with 200."""
    post: str
    """A path that takes a POST with a body."""
    metrics: str
    """Where the refusals are counted (``HOST:PORT``)."""


class Stack(NamedTuple):
    router: RouterProcess
    edge: WebRtcEdgeProcess

    def target(self, name: str) -> Target:
        metrics = self.router.announced["metrics"]
        if name == "admin":
            port = int(self.router.admin_url.rpartition(":")[2])
            return Target(name, port, "/api/stats", "/api/edges/nope/drain", metrics)
        if name == "metrics":
            return Target(name, int(metrics.rpartition(":")[2]), "/metrics", "/metrics", metrics)
        port = int(self.edge.announced["port"])
        return Target(name, port, "/metrics", "/whep", self.edge.address)


def raise_open_file_limit() -> None:
    """Room for the slow sockets, here and in the processes started after it (they inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = SLOW_SOCKETS + 1000
    if soft != resource.RLIM_INFINITY and soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            pytest.skip(f"RLIMIT_NOFILE's hard limit {hard} is below {wanted}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@contextlib.contextmanager
def running_stack(parser: str) -> Iterator[Stack]:
    """A router with ``/metrics`` and its admin API (no token: loopback only), and a WebRTC edge,
    using aiohttp's ``parser`` (``c`` or ``python``)."""
    raise_open_file_limit()
    loopback_only()
    router = RouterProcess(["--metrics", "127.0.0.1:0"])
    edge = WebRtcEdgeProcess(router)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.delenv("SWITCHBOARD_ADMIN_TOKEN", raising=False)
            patch.delenv("AIOHTTP_NO_EXTENSIONS", raising=False)
            if parser == "python":
                patch.setenv("AIOHTTP_NO_EXTENSIONS", "1")
            router.start()
            edge.start()
        yield Stack(router, edge)
    finally:
        edge.stop()
        router.stop()


@pytest.fixture(scope="module", params=["c", "python"])
def stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    with running_stack(request.param) as running:
        yield running


@pytest.fixture(scope="module")
def default_stack() -> Iterator[Stack]:
    with running_stack("c") as running:
        yield running


# ---------------------------------------------------------------- raw requests


def exchange(port: int, request: bytes, timeout: float = 5.0) -> bytes:
    """Send ``request`` on a fresh connection; what comes back until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        received = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                received += chunk
        return received


def status_of(response: bytes) -> int:
    """The status code; the status line echoes the request's version, even a refused one."""
    version, _, rest = response.partition(b" ")
    assert version.startswith(b"HTTP/"), response[:200]
    return int(rest[:3])


def hostile_requests(target: Target) -> dict[str, bytes]:
    """Heads that must get a 4xx, by what is wrong with them."""
    host = f"Host: 127.0.0.1:{target.port}\r\n"
    get, post = f"GET {target.get}", f"POST {target.post} HTTP/1.1\r\n{host}Content-Type: application/sdp\r\n"
    requests = {
        "percent-encoded CR/LF in the query": f"GET /?camera=%0d%0aSet-Cookie:%20a=b HTTP/1.1\r\n{host}\r\n",
        "percent-encoded CR/LF in the path": f"{get}%0d%0a HTTP/1.1\r\n{host}\r\n",
        "raw LF in the target": f"GET /?a\nSet-Cookie: a=b HTTP/1.1\r\n{host}\r\n",
        "raw CR in the target": f"GET /a\rb HTTP/1.1\r\n{host}\r\n",
        "signed Content-Length": f"{post}Content-Length: +5\r\n\r\nv=0\r\n",
        "Content-Length with _": f"{post}Content-Length: 0_5\r\n\r\nv=0\r\n",
        "duplicate Content-Length": f"{post}Content-Length: 5\r\nContent-Length: 5\r\n\r\nv=0\r\n",
        "HTTP/1.1x": f"{get} HTTP/1.1x\r\n{host}\r\n",
        "HTTP/1.9": f"{get} HTTP/1.9\r\n{host}\r\n",
        "HTTP/2.0": f"{get} HTTP/2.0\r\n{host}\r\n",
    }
    return {what: request.encode() for what, request in requests.items()}


@pytest.mark.parametrize("name", ["admin", "metrics", "whep"])
def test_hostile_requests_get_a_4xx(stack: Stack, name: str) -> None:
    target = stack.target(name)
    good = f"GET {target.get} HTTP/1.1\r\nHost: 127.0.0.1:{target.port}\r\n\r\n"
    assert status_of(exchange(target.port, good.encode())) == 200
    for what, request in hostile_requests(target).items():
        response = exchange(target.port, request)
        assert 400 <= status_of(response) < 500, (what, response[:300])
        head = response.partition(b"\r\n\r\n")[0]
        assert b"Set-Cookie" not in head, (what, head)


# ---------------------------------------------------------------- slow sockets


async def open_slow_sockets(port: int, count: int) -> list[socket.socket]:
    """``count`` connections from 127.0.0.1, each with part of a request head sent."""
    loop = asyncio.get_running_loop()
    opened: list[socket.socket] = []

    async def one() -> None:
        sock = socket.socket()
        opened.append(sock)
        sock.setblocking(False)
        sock.bind(("127.0.0.1", 0))
        await loop.sock_connect(sock, ("127.0.0.1", port))
        with contextlib.suppress(ConnectionError):
            await loop.sock_sendall(sock, SLOW_HEAD)

    try:
        for start in range(0, count, 200):
            async with asyncio.timeout(30):
                await asyncio.gather(*(one() for _ in range(start, min(count, start + 200))))
    except BaseException:
        for sock in opened:
            sock.close()
        raise
    return opened


def still_open(sock: socket.socket) -> bool:
    """Whether the server has neither answered nor closed ``sock``."""
    try:
        sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return True
    except OSError:
        pass
    return False


def trickle(sockets: list[socket.socket]) -> None:
    """One more byte of a header value on every connection still open, as a slow client sends it."""
    for sock in sockets:
        if still_open(sock):
            with contextlib.suppress(OSError):
                sock.send(b"a")


def get_from_another_address(port: int, path: str) -> bytes:
    """The body of a plain GET from 127.0.0.2, asserting it succeeds."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5, source_address=("127.0.0.2", 0))
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        assert response.status == 200, response.status
        return response.read()
    finally:
        connection.close()


def served_from_another_address(target: Target) -> float:
    """Seconds a plain GET from 127.0.0.2 takes, asserting it succeeds."""
    started = time.monotonic()
    get_from_another_address(target.port, target.get)
    return time.monotonic() - started


@pytest.mark.parametrize("name", ["admin", "metrics", "whep"])
async def test_slow_sockets_from_one_address_lock_nobody_else_out(default_stack: Stack, name: str) -> None:
    target = default_stack.target(name)
    cap = PER_ADDRESS[name]
    before = await refusals(target)
    started = time.monotonic()
    slow = await open_slow_sockets(target.port, SLOW_SOCKETS)
    try:
        opened_in = time.monotonic() - started
        assert await asyncio.to_thread(served_from_another_address, target) < 2.0
        trickle(slow)
        assert sum(still_open(sock) for sock in slow) <= cap
        refused = await refusals(target) - before
        if opened_in < HEADER_TIMEOUT:
            assert refused >= SLOW_SOCKETS - cap
        else:
            assert refused >= SLOW_SOCKETS // 2
        deadline = time.monotonic() + HEADER_TIMEOUT + 5
        while any(still_open(sock) for sock in slow):
            assert time.monotonic() < deadline, "slow sockets outlived the header deadline"
            trickle(slow)
            await asyncio.sleep(0.5)
        assert await asyncio.to_thread(served_from_another_address, target) < 2.0
    finally:
        for sock in slow:
            sock.close()


async def refusals(target: Target) -> float:
    """Connections the target refused by its per-address cap so far, from its metrics (scraped from
    127.0.0.2: 127.0.0.1 may be the one over its cap)."""
    port = int(target.metrics.rpartition(":")[2])
    metrics = Scrape((await asyncio.to_thread(get_from_another_address, port, "/metrics")).decode())
    if target.name == "whep":
        return metrics.total(
            "switchboard_edge_refused_connections_total", reason="max_connections_per_address"
        )
    return metrics.total(
        "switchboard_router_http_refused_total", listener=target.name, reason="max_connections_per_address"
    )


def test_the_environment_selects_the_parser() -> None:
    """The pure-Python runs above are only meaningful if aiohttp honours the variable."""
    code = "import aiohttp.http_parser as p; print(p.HttpRequestParser.__module__)"
    env = {**os.environ, "AIOHTTP_NO_EXTENSIONS": "1"}
    python = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    env.pop("AIOHTTP_NO_EXTENSIONS")
    native = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert python.stdout.strip() == "aiohttp.http_parser"
    assert native.stdout.strip() == "aiohttp._http_parser"


# ---------------------------------------------------------------- a busy port

ROUTER_SOCKETS = [f"--{name}=tcp://127.0.0.1:0" for name in ("pull", "xsub", "xpub", "control")]


@pytest.mark.parametrize(
    ("module", "args"),
    [
        ("router", ["--admin", "ADDRESS", *ROUTER_SOCKETS]),
        ("router", ["--admin", "", "--metrics", "ADDRESS", *ROUTER_SOCKETS]),
        ("router", ["--admin", "", *ROUTER_SOCKETS, "--pull", "tcp://ADDRESS"]),
        ("router", ["--admin", "", *ROUTER_SOCKETS, "--control", "tcp://ADDRESS"]),
        ("router", ["--admin", "", *ROUTER_SOCKETS, "--events", "tcp://ADDRESS"]),
        ("edges.webrtc", ["--port", "PORT"]),
        ("edges.websocket", ["--port", "PORT"]),
    ],
)
def test_a_port_that_cannot_be_bound_stops_the_process_with_status_2(module: str, args: list[str]) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        argv = [arg.replace("ADDRESS", f"127.0.0.1:{port}").replace("PORT", str(port)) for arg in args]
        line = refused_start(module, *argv)
    assert str(port) in line
