"""The HTTP listener (router/http_listener.py): what it refuses without sockets, then its caps and
deadlines on a real loopback socket in this process."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from http import HTTPStatus

import pytest

from router.http_limits import HttpLimits, address_key
from router.http_listener import HttpListener, Refusal, request_fault
from router.http_messages import HttpRequest, HttpResponse
from tests.io.harness import eventually

HOST = [(b"Host", b"x")]


# ---------------------------------------------------------------- without sockets


def test_only_http_1_0_and_1_1_pass() -> None:
    assert request_fault((1, 1), "/", HOST) is None
    assert request_fault((1, 0), "/", []) is None
    for version in ((0, 9), (1, 9), (2, 0)):
        assert request_fault(version, "/", HOST) == (HTTPStatus.BAD_REQUEST, "HTTP/1.0 or HTTP/1.1 only")


@pytest.mark.parametrize(
    "target", ["/a%0d%0ab", "/?x=%0D%0ASet-Cookie:%20a", "/%00", "/%7f", "/a\rb", "/a\nb", "/\u00e9", "/a b"]
)
def test_control_characters_in_the_target_are_refused(target: str) -> None:
    fault = request_fault((1, 1), target, HOST)
    assert fault is not None
    assert fault[0] == HTTPStatus.BAD_REQUEST


def test_percent_escapes_of_printable_characters_pass() -> None:
    assert request_fault((1, 1), "/api/clients/ws-1%2F1/kick?edge=a%20b", HOST) is None


@pytest.mark.parametrize(
    "headers",
    [
        [(b"Content-Length", b"5"), (b"content-length", b"5")],
        [(b"Content-Length", b"+5")],
        [(b"Content-Length", b"0_5")],
        [(b"Content-Length", b"-1")],
        [(b"Content-Length", b"5, 5")],
        [(b"Authorization", b"Bearer a"), (b"Authorization", b"Bearer b")],
        [(b"Origin", b"http://a"), (b"Origin", b"http://b")],
        [(b"Host", b"a"), (b"Host", b"b")],
    ],
)
def test_ambiguous_headers_are_refused(headers: list[tuple[bytes, bytes]]) -> None:
    assert request_fault((1, 1), "/", headers) is not None


def test_chunked_bodies_are_refused() -> None:
    fault = request_fault((1, 1), "/", [(b"Transfer-Encoding", b"chunked")])
    assert fault is not None
    assert fault[0] == HTTPStatus.LENGTH_REQUIRED


def test_addresses_count_by_ipv4_address_or_ipv6_64() -> None:
    assert address_key("127.0.0.1") == "127.0.0.1"
    assert address_key("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:2::9") == address_key("2001:db8:1:2:ffff::1")
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("::ffff:10.0.0.1") == "10.0.0.1"
    assert address_key("fe80::1%eth0") == "fe80::/64"


def test_limits_must_be_usable() -> None:
    for bad in ({"max_connections": 0}, {"max_connections_per_address": 0}, {"header_timeout": 0.0}):
        with pytest.raises(ValueError, match="must be"):
            HttpLimits(**bad)


# ---------------------------------------------------------------- on a socket


async def echo(request: HttpRequest) -> HttpResponse:
    if request.path == "/split":
        return HttpResponse(HTTPStatus.SEE_OTHER, headers=(("Location", "/\r\nSet-Cookie: a=b"),))
    if request.path == "/fail":
        raise RuntimeError("a route that fails")
    text = f"{request.method} {request.path} {request.query} {request.body.decode()}"
    return HttpResponse(HTTPStatus.OK, text.encode())


@contextlib.asynccontextmanager
async def listening(**limits: float) -> AsyncIterator[HttpListener]:
    listener = HttpListener("test", echo, HttpLimits(**limits))  # type: ignore[arg-type]
    await listener.start("127.0.0.1", 0)
    try:
        yield listener
    finally:
        await listener.close()


async def exchange(port: int, request: bytes, source: str = "127.0.0.1", eof: bool = True) -> bytes:
    """Send ``request`` from ``source``; everything the listener answers until it closes."""
    sock = socket.socket()
    sock.bind((source, 0))
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_connect(sock, ("127.0.0.1", port))
        await loop.sock_sendall(sock, request)
        if eof:
            sock.shutdown(socket.SHUT_WR)
        received = b""
        async with asyncio.timeout(5):
            while chunk := await loop.sock_recv(sock, 65536):
                received += chunk
        return received
    finally:
        sock.close()


async def test_a_request_is_answered_and_the_connection_closed() -> None:
    async with listening() as listener:
        answer = await exchange(
            listener.port, b"POST /a?b=c HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody"
        )
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"Connection: close\r\n" in answer
        assert answer.endswith(b"\r\n\r\nPOST /a b=c body")


async def test_hostile_heads_get_a_4xx() -> None:
    async with listening() as listener:
        for head in (
            b"GET /?a=%0d%0aSet-Cookie:%20x HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /?a\nSet-Cookie: x HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET / HTTP/1.1x\r\nHost: x\r\n\r\n",
            b"GET / HTTP/2.0\r\nHost: x\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ):
            answer = await exchange(listener.port, head)
            assert answer[9:10] == b"4", (head, answer)
        assert listener.refusals[Refusal.MALFORMED] >= 6


async def test_user_text_never_splits_a_response() -> None:
    async with listening() as listener:
        answer = await exchange(listener.port, b"GET /split HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 500")
        assert b"Set-Cookie" not in answer
        assert (await exchange(listener.port, b"GET /fail HTTP/1.1\r\nHost: x\r\n\r\n")).startswith(
            b"HTTP/1.1 500"
        )


async def test_bodies_are_bounded() -> None:
    async with listening(max_body_bytes=10) as listener:
        head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n"
        assert (await exchange(listener.port, head + b"x" * 11)).startswith(b"HTTP/1.1 413")
        long_line = b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
        assert (await exchange(listener.port, long_line))[9:10] == b"4"


async def test_slow_heads_and_bodies_are_closed_after_their_deadline() -> None:
    async with listening(header_timeout=0.3, body_timeout=0.3) as listener:
        started = asyncio.get_running_loop().time()
        answer = await exchange(listener.port, b"GET / HTTP/1.1\r\nHo", eof=False)
        assert answer.startswith(b"HTTP/1.1 408")
        assert asyncio.get_running_loop().time() - started < 3
        body = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc"
        assert (await exchange(listener.port, body, eof=False)).startswith(b"HTTP/1.1 408")
        assert (listener.refusals[Refusal.HEADER_TIMEOUT], listener.refusals[Refusal.BODY_TIMEOUT]) == (1, 1)
        assert listener.open_connections == 0


async def test_one_address_cannot_take_every_connection() -> None:
    async with listening(max_connections=5, max_connections_per_address=2, header_timeout=5) as listener:
        loop = asyncio.get_running_loop()
        held = []
        try:
            for _ in range(2):
                sock = socket.socket()
                sock.setblocking(False)
                await loop.sock_connect(sock, ("127.0.0.1", listener.port))
                held.append(sock)
            await eventually(lambda: listener.open_connections == 2, timeout=5)
            refused = await exchange(listener.port, b"", eof=False)
            assert refused.startswith(b"HTTP/1.1 429")
            served = await exchange(listener.port, b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n", "127.0.0.2")
            assert served.startswith(b"HTTP/1.1 200")
            assert listener.refusals[Refusal.PER_ADDRESS] == 1
        finally:
            for sock in held:
                sock.close()
