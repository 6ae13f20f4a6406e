"""PROXY protocol headers, versions 1 and 2 (router/proxy_protocol.py)."""

from __future__ import annotations

import socket
import struct

import pytest

from router.forwarding import ClientAddress
from router.proxy_protocol import (
    MAX_V2,
    SIGNATURE_V2,
    Header,
    ProxyProtocolError,
    looks_like_header,
    read_header,
)


def v2(command: int, family: int, addresses: bytes, tlvs: bytes = b"") -> bytes:
    body = addresses + tlvs
    return SIGNATURE_V2 + bytes([0x20 | command, family]) + struct.pack("!H", len(body)) + body


def inet6(source: str, port: int) -> bytes:
    return socket.inet_pton(socket.AF_INET6, source) + bytes(16) + struct.pack("!HH", port, 443)


def test_version_1_names_the_client_and_what_follows_is_the_connections() -> None:
    data = b"PROXY TCP4 198.51.100.7 127.0.0.1 4000 80\r\nGET / HTTP/1.1\r\n"
    header = read_header(data)
    assert header == Header(43, ClientAddress("198.51.100.7", 4000))
    assert data[header.size :].startswith(b"GET ")
    six = read_header(b"PROXY TCP6 2001:db8::7 ::1 65535 80\r\n")
    assert six is not None
    assert six.source == ClientAddress("2001:db8::7", 65535)
    assert read_header(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n") == Header(35, None)


def test_version_2_names_the_client_and_skips_its_tlvs() -> None:
    data = v2(1, 0x21, inet6("2001:db8::5", 1234), tlvs=b"\x05\x00\x02ab") + b"GET"
    header = read_header(data)
    assert header is not None
    assert header.source == ClientAddress("2001:db8::5", 1234)
    assert data[header.size :] == b"GET"
    inet4 = socket.inet_aton("203.0.113.9") + socket.inet_aton("127.0.0.1") + struct.pack("!HH", 5, 80)
    assert read_header(v2(1, 0x11, inet4)) == Header(28, ClientAddress("203.0.113.9", 5))
    assert read_header(v2(0, 0x00, b"")) == Header(16, None), "LOCAL: the peer stands for itself"


def test_an_incomplete_header_waits_for_more() -> None:
    whole = v2(1, 0x21, inet6("2001:db8::5", 1234))
    for cut in (1, 11, 12, 15, 16, len(whole) - 1):
        assert read_header(whole[:cut]) is None
    assert read_header(b"PROXY TCP4 198.51") is None
    assert read_header(b"") is None


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n",
        b"PROXY TCP4 198.51.100.7 127.0.0.1 04000 80\r\n",
        b"PROXY TCP4 198.51.100.7 127.0.0.1 65536 80\r\n",
        b"PROXY TCP6 198.51.100.7 127.0.0.1 1 80\r\n",
        b"PROXY TCP4 example.com 127.0.0.1 1 80\r\n",
        b"PROXY TCP4 198.51.100.7 127.0.0.1 1\r\n",
        b"PROXY TCP4 198.51.100.7 127.0.0.1 1 80\n",
        b"PROXY " + b"1" * 120,
        v2(1, 0x21, b"\x00" * 8),
        SIGNATURE_V2 + bytes([0x31, 0x11]) + struct.pack("!H", 12) + bytes(12),
        SIGNATURE_V2 + bytes([0x22, 0x11]) + struct.pack("!H", 12) + bytes(12),
        SIGNATURE_V2 + bytes([0x21, 0x11]) + struct.pack("!H", MAX_V2),
    ],
)
def test_anything_but_a_valid_header_is_refused(data: bytes) -> None:
    with pytest.raises(ProxyProtocolError):
        read_header(data)


def test_a_header_is_recognised_from_its_first_bytes() -> None:
    assert looks_like_header(b"PROXY TCP4") is True
    assert looks_like_header(SIGNATURE_V2) is True
    assert looks_like_header(b"PROX") is None
    assert looks_like_header(b"\r\n\r\n") is None
    assert looks_like_header(b"GET / HTTP/1.1") is False
    assert looks_like_header(b"PROXZ") is False
