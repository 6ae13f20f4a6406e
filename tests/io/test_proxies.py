"""Clients behind reverse proxies, against the real router and edges on loopback: a trusted proxy's
X-Forwarded-For, Forwarded or PROXY protocol header names the client that per-address limits count
and logs show; the same from any other peer is ignored (or, for a PROXY header, refused).

127.0.0.1 plays the trusted proxy; a client bound to 127.0.0.2 is a peer that is not one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidHandshake, InvalidStatus
from websockets.typing import Subprotocol

from router.admin.client import AdminClient
from router.proxy_protocol import SIGNATURE_V2
from tests.io.harness import (
    RouterProcess,
    WebSocketEdgeProcess,
    configured_router,
    running,
)
from tests.io.metrics_scrape import scrape
from tests.io.rtc_client import WebRtcEdgeProcess

pytestmark = pytest.mark.timeout(90)

PROXY = "127.0.0.1"
STRANGER = "127.0.0.2"
"""A peer that is not a trusted proxy."""


# ---------------------------------------------------------------- helpers


class Clients:
    """WebSocket clients opened from chosen local addresses, each with headers and bytes of its own
    before the handshake; all closed when the block ends."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.open: list[ClientConnection] = []

    async def handshake(
        self, source: str = PROXY, headers: Sequence[tuple[str, str]] = (), preface: bytes = b""
    ) -> int | None:
        """The handshake's HTTP status (101 when the client is in, after ``connect``), or ``None``
        when the edge closed the connection without an answer."""
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.bind((source, 0))
        try:
            async with asyncio.timeout(5):
                await loop.sock_connect(sock, ("127.0.0.1", self.port))
                await loop.sock_sendall(sock, preface)
                ws = await connect(
                    f"ws://127.0.0.1:{self.port}/",
                    sock=sock,
                    subprotocols=[Subprotocol("switchboard.v1")],
                    additional_headers=list(headers),
                    proxy=None,
                )
        except InvalidStatus as refused:
            sock.close()
            return refused.response.status_code
        except (InvalidHandshake, OSError, TimeoutError):
            sock.close()
            return None
        self.open.append(ws)
        await ws.send('{"op":"connect"}')
        async with asyncio.timeout(5):
            connected = json.loads(await ws.recv())
        assert connected["op"] == "connected", connected
        return 101

    async def close(self) -> None:
        for ws in self.open:
            await ws.close()


@contextlib.asynccontextmanager
async def clients_of(edge: WebSocketEdgeProcess) -> AsyncIterator[Clients]:
    clients = Clients(int(edge.announced["port"]))
    try:
        yield clients
    finally:
        await clients.close()


def forwarded_for(address: str) -> list[tuple[str, str]]:
    return [("X-Forwarded-For", address)]


async def remotes(router: RouterProcess) -> list[str]:
    """The ``remote`` of every client the router knows."""
    reply = await asyncio.to_thread(AdminClient(router.admin_url, None).get, "/api/clients")
    return sorted(str(row["remote"]) for row in reply["clients"])


def proxy_v1(source: str, port: int) -> bytes:
    family = "TCP6" if ":" in source else "TCP4"
    destination = "::1" if ":" in source else "127.0.0.1"
    return f"PROXY {family} {source} {destination} {port} 80\r\n".encode()


def proxy_v2(source: str, port: int) -> bytes:
    if ":" in source:
        family, addresses = 0x21, socket.inet_pton(socket.AF_INET6, source) + bytes(16)
    else:
        family, addresses = 0x11, socket.inet_aton(source) + socket.inet_aton("127.0.0.1")
    body = addresses + struct.pack("!HH", port, 80)
    return SIGNATURE_V2 + bytes([0x21, family]) + struct.pack("!H", len(body)) + body


def ws_edge(router: RouterProcess, *args: str) -> WebSocketEdgeProcess:
    return WebSocketEdgeProcess(router, ["--max-connections-per-ip", "1", *args])


# ---------------------------------------------------------------- the WebSocket edge


async def test_forwarded_clients_each_get_their_own_allowance(router: RouterProcess) -> None:
    with running(ws_edge(router, "--trusted-proxy", f"{PROXY}/32")) as edge:
        async with clients_of(edge) as clients:
            assert await clients.handshake(headers=forwarded_for("203.0.113.1")) == 101
            assert await clients.handshake(headers=forwarded_for("203.0.113.2")) == 101
            assert await clients.handshake(headers=forwarded_for("203.0.113.1")) == 429
            assert await remotes(router) == ["203.0.113.1", "203.0.113.2"]


async def test_forwarding_headers_from_a_peer_that_is_no_trusted_proxy_are_ignored(
    router: RouterProcess,
) -> None:
    with running(ws_edge(router, "--trusted-proxy", PROXY)) as edge:
        async with clients_of(edge) as clients:
            assert await clients.handshake(STRANGER, forwarded_for("203.0.113.1")) == 101
            assert await clients.handshake(STRANGER, forwarded_for("203.0.113.2")) == 429
            [remote] = await remotes(router)
            assert remote.startswith(f"{STRANGER}:")


async def test_a_forged_chain_yields_the_right_most_address_that_is_no_trusted_proxy(
    router: RouterProcess,
) -> None:
    edge = ws_edge(router, "--trusted-proxy", PROXY, "--trusted-proxy", "127.0.0.3")
    with running(edge):
        async with clients_of(edge) as clients:
            forged = forwarded_for("198.51.100.7, 203.0.113.5")
            assert await clients.handshake(headers=forged) == 101
            assert await clients.handshake(headers=forwarded_for("203.0.113.5")) == 429
            assert await clients.handshake(headers=forwarded_for("203.0.113.5, 198.51.100.7")) == 101
            two_hops = forwarded_for("10.9.9.9, 203.0.113.9, 127.0.0.3")
            assert await clients.handshake(headers=two_hops) == 101
            assert await remotes(router) == ["198.51.100.7", "203.0.113.5", "203.0.113.9"]


async def test_a_malformed_header_from_a_trusted_proxy_leaves_its_address_and_is_counted(
    router: RouterProcess,
) -> None:
    with running(ws_edge(router, "--trusted-proxy", PROXY)) as edge:
        async with clients_of(edge) as clients:
            assert await clients.handshake(headers=forwarded_for("203.0.113.1, not-an-address")) == 101
            assert await clients.handshake(headers=forwarded_for("203.0.113.2")) == 101
            [proxy, forwarded] = await remotes(router)
            assert (proxy.startswith(f"{PROXY}:"), forwarded) == (True, "203.0.113.2")
            metrics = await scrape(edge.address)
            assert metrics.labelled("switchboard_edge_bad_proxy_headers_total", header="x-forwarded-for") == 1


async def test_forwarded_for_names_the_client_and_an_ipv6_one_counts_by_its_slash_64(
    router: RouterProcess,
) -> None:
    edge = ws_edge(router, "--trusted-proxy", PROXY, "--proxy-headers", "forwarded")
    with running(edge):
        async with clients_of(edge) as clients:
            header = [("Forwarded", 'for="[2001:db8:0:1::7]:4711";proto=https')]
            assert await clients.handshake(headers=header) == 101
            same_64 = [("Forwarded", 'for="[2001:db8:0:1::8]"')]
            assert await clients.handshake(headers=same_64) == 429
            x_forwarded = forwarded_for("203.0.113.1")
            assert await clients.handshake(headers=x_forwarded) == 101, "X-Forwarded-For is not read"
            assert await clients.handshake(headers=x_forwarded) == 429
            [proxy, ipv6] = await remotes(router)
            assert ipv6 == "2001:db8:0:1::7:4711"
            assert proxy.startswith(f"{PROXY}:")


async def test_proxy_protocol_names_the_client_when_turned_on_and_is_refused_otherwise(
    router: RouterProcess,
) -> None:
    """127.0.0.3 is the TCP proxy here, so that /metrics can be read from 127.0.0.1 without a header."""
    tcp_proxy = "127.0.0.3"
    edge = ws_edge(router, "--trusted-proxy", tcp_proxy, "--proxy-protocol")
    with running(edge):
        async with clients_of(edge) as clients:
            assert await clients.handshake(tcp_proxy, preface=proxy_v1("203.0.113.7", 5000)) == 101
            assert await clients.handshake(tcp_proxy, preface=proxy_v2("2001:db8::7", 6000)) == 101
            assert await clients.handshake(tcp_proxy, preface=proxy_v2("203.0.113.7", 7000)) == 429
            assert await clients.handshake(tcp_proxy, preface=proxy_v1("2001:db8::8", 8000)) == 429
            assert await remotes(router) == ["2001:db8::7:6000", "203.0.113.7:5000"]
            assert await clients.handshake(STRANGER, preface=proxy_v1("203.0.113.8", 1)) is None
            assert await clients.handshake(STRANGER, preface=proxy_v2("203.0.113.8", 1)) is None
            malformed = b"PROXY TCP4 203.0.113.9 nowhere 1 2\r\n"
            assert await clients.handshake(tcp_proxy, preface=malformed) is None
            assert await clients.handshake(tcp_proxy) is None, "a trusted proxy must send the header"
            assert await clients.handshake(STRANGER) == 101, "a direct client sends none"
            metrics = await scrape(edge.address)
            refused = metrics.labelled("switchboard_edge_refused_connections_total", reason="proxy_protocol")
            assert refused == 4
    with running(ws_edge(router, "--trusted-proxy", tcp_proxy)) as plain:
        async with clients_of(plain) as clients:
            for preface in (proxy_v1("203.0.113.7", 5000), proxy_v2("203.0.113.7", 5000)):
                assert await clients.handshake(tcp_proxy, preface=preface) is None, "not HTTP: closed"
            assert await clients.handshake(tcp_proxy) == 101
            [remote] = await remotes(router)
            assert remote.startswith(f"{tcp_proxy}:")


# ---------------------------------------------------------------- the HTTP listeners


class HeldRequests:
    """Requests whose body never comes, so each holds its connection open; closed at the end."""

    def __init__(self, port: int, path: str) -> None:
        self.port, self.path = port, path
        self.writers: list[asyncio.StreamWriter] = []

    async def status(self, source: str = PROXY, headers: Sequence[tuple[str, str]] = ()) -> int | None:
        """The status the listener answered at once, or ``None`` when it holds the connection."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port, local_addr=(source, 0))
        self.writers.append(writer)
        lines = [f"POST {self.path} HTTP/1.1", f"Host: 127.0.0.1:{self.port}", "Content-Length: 100"]
        lines += [f"{name}: {value}" for name, value in headers]
        lines.append("Content-Type: application/sdp")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        try:
            async with asyncio.timeout(1.0):
                line = await reader.readline()
        except TimeoutError:
            return None
        return int(line.split()[1]) if line else 0

    def close(self) -> None:
        for writer in self.writers:
            writer.close()


@contextlib.contextmanager
def held(port: int, path: str) -> Iterator[HeldRequests]:
    requests = HeldRequests(port, path)
    try:
        yield requests
    finally:
        requests.close()


@pytest.fixture(params=["admin", "signaling"])
def http_listener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[int, str]]:
    """The router's admin API or a WebRTC edge's signaling, trusting 127.0.0.1 as a proxy and
    holding one connection per address; its port and a path that takes a body."""
    config = f'[admin]\nmax_connections_per_address = 1\ntrusted_proxies = ["{PROXY}"]\n'
    with configured_router(tmp_path, config) as router:
        if request.param == "admin":
            yield int(router.admin_url.rsplit(":", 1)[1]), "/api/edges/none/drain"
            return
        args = ["--http-max-connections-per-address", "1", "--trusted-proxy", PROXY]
        with running(WebRtcEdgeProcess(router, args)) as edge:
            yield int(edge.announced["port"]), "/whep"


async def test_http_listeners_count_the_client_a_trusted_proxy_names(http_listener: tuple[int, str]) -> None:
    with held(*http_listener) as requests:
        assert await requests.status(headers=forwarded_for("203.0.113.1")) is None
        assert await requests.status(headers=forwarded_for("198.51.100.9, 203.0.113.2")) is None
        assert await requests.status(headers=forwarded_for("203.0.113.1")) == 429
        assert await requests.status(headers=forwarded_for("203.0.113.2")) == 429
        assert await requests.status(STRANGER, forwarded_for("203.0.113.3")) is None
        assert await requests.status(STRANGER, forwarded_for("203.0.113.4")) == 429, "no proxy: ignored"


# ---------------------------------------------------------------- the admin API behind a TLS proxy

DASHBOARD = "https://ops.example.com"
HTTPS_PROXY_HEADERS = [("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "ops.example.com")]


async def post_from(source: str, port: int, path: str, headers: Sequence[tuple[str, str]]) -> tuple[int, str]:
    """One ``POST`` with an empty JSON body from ``source``: the status and the error code, if any."""
    async with asyncio.timeout(5):
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Content-Length: 2"]
        lines += [f"{name}: {value}" for name, value in headers]
        writer.write(("\r\n".join(lines) + "\r\n\r\n{}").encode())
        response = await reader.read()
        writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    code = json.loads(body).get("error", {}).get("code", "") if body.startswith(b"{") else ""
    return int(head.split()[1]), code


async def test_a_kick_through_a_trusted_https_proxy_is_accepted(tmp_path: Path) -> None:
    with (
        configured_router(tmp_path, f'[admin]\ntrusted_proxies = ["{PROXY}"]\n') as router,
        running(WebSocketEdgeProcess(router)) as edge,
    ):
        port = int(router.admin_url.rsplit(":", 1)[1])
        ws = await connect(edge.url, subprotocols=[Subprotocol("switchboard.v1")], proxy=None)
        await ws.send('{"op":"connect"}')
        async with asyncio.timeout(5):
            client_id = json.loads(await ws.recv())["client_id"]
        kick = f"/api/clients/{client_id}/kick"
        dashboard = [("Origin", DASHBOARD), *HTTPS_PROXY_HEADERS]
        assert await post_from(STRANGER, port, kick, dashboard) == (403, "forbidden")
        elsewhere = [("Origin", "https://evil.example"), *HTTPS_PROXY_HEADERS]
        assert await post_from(PROXY, port, kick, elsewhere) == (403, "forbidden")
        plain = [
            ("Origin", DASHBOARD),
            ("X-Forwarded-Proto", "http"),
            ("X-Forwarded-Host", "ops.example.com"),
        ]
        assert await post_from(PROXY, port, kick, plain) == (403, "forbidden")
        assert await post_from(PROXY, port, kick, dashboard) == (200, "")
        async with asyncio.timeout(5):
            await ws.wait_closed()
        assert ws.close_code == 4002


async def test_the_public_origin_is_the_apis_own_from_any_peer(tmp_path: Path) -> None:
    with configured_router(tmp_path, f'[admin]\npublic_origin = "{DASHBOARD}"\n') as router:
        port = int(router.admin_url.rsplit(":", 1)[1])
        drain = "/api/edges/none/drain"
        assert await post_from(STRANGER, port, drain, [("Origin", DASHBOARD)]) == (404, "unknown_edge")
        assert await post_from(PROXY, port, drain, [("Origin", "https://evil.example")]) == (403, "forbidden")
        forwarded = [("Origin", "https://other.example"), ("X-Forwarded-Proto", "https")]
        assert await post_from(PROXY, port, drain, forwarded) == (403, "forbidden"), "no trusted proxy"
