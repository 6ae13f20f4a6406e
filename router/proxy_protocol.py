"""The PROXY protocol header (HAProxy's specification, versions 1 and 2), read without I/O.

A TCP proxy (HAProxy, nginx's ``stream`` module, cloud load balancers) that speaks it sends one
header before the client's bytes, naming the client's address. :func:`read_header` reads it from
the start of a connection's bytes; the caller feeds what follows to the real protocol.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Final, NamedTuple

from router.forwarding import ClientAddress

__all__ = [
    "MAX_V1",
    "MAX_V2",
    "SIGNATURE_V2",
    "Header",
    "ProxyProtocolError",
    "looks_like_header",
    "read_header",
]

SIGNATURE_V2: Final = b"\r\n\r\n\x00\r\nQUIT\n"
PREFIX_V1: Final = b"PROXY "
MAX_V1: Final = 107
"""Bytes of a version 1 header, CRLF included, at most."""
MAX_V2: Final = 16 + 4096
"""Bytes of a version 2 header taken, at most (the specification allows 64 KiB of TLVs; proxies send
a few hundred bytes)."""
_V2_HEAD = struct.Struct("!12sBBH")
_V2_INET = struct.Struct("!4s4sHH")
_V2_INET6 = struct.Struct("!16s16sHH")


class ProxyProtocolError(ValueError):
    """A header that does not follow the specification."""


class Header(NamedTuple):
    size: int
    """Bytes of the header: the connection's own bytes start after them."""
    source: ClientAddress | None
    """The client's address; ``None`` for a header that names none (v1 ``UNKNOWN``, v2 ``LOCAL``
    or a family other than TCP over IPv4 or IPv6): the connection's peer stands for itself."""


def looks_like_header(data: bytes) -> bool | None:
    """Whether ``data``, a connection's first bytes, starts a PROXY header; ``None`` while too few
    bytes have come to tell."""
    for prefix in (PREFIX_V1, SIGNATURE_V2):
        shared = min(len(data), len(prefix))
        if data[:shared] == prefix[:shared]:
            return True if shared == len(prefix) else None
    return False


def read_header(data: bytes) -> Header | None:
    """The header at the start of ``data``, or ``None`` while it is incomplete. Raises
    :class:`ProxyProtocolError` for anything but a valid header (including too long a one)."""
    if data.startswith(SIGNATURE_V2[: len(data)]) and data[:1] == b"\r":
        return _v2(data)
    if data.startswith(PREFIX_V1[: len(data)]) and data[:1] == b"P":
        return _v1(data)
    if not data:
        return None
    raise ProxyProtocolError("no PROXY protocol header")


def _v1(data: bytes) -> Header | None:
    end = data.find(b"\r\n", 0, MAX_V1)
    if end < 0:
        if len(data) >= MAX_V1 or b"\n" in data[: MAX_V1 - 1]:
            raise ProxyProtocolError("a version 1 header ends with CRLF within 107 bytes")
        return None
    line = data[:end]
    try:
        words = line.decode("ascii").split(" ")
    except UnicodeDecodeError:
        raise ProxyProtocolError("a version 1 header is ASCII") from None
    size = end + 2
    if len(words) >= 2 and words[0] == "PROXY" and words[1] == "UNKNOWN":
        return Header(size, None)
    if len(words) != 6 or words[0] != "PROXY" or words[1] not in ("TCP4", "TCP6"):
        raise ProxyProtocolError("expected PROXY TCP4|TCP6 SOURCE DESTINATION SPORT DPORT")
    version = 4 if words[1] == "TCP4" else 6
    source = _v1_address(words[2], version)
    _v1_address(words[3], version)
    source_port = _v1_port(words[4])
    _v1_port(words[5])
    return Header(size, ClientAddress(source, source_port))


def _v1_address(text: str, version: int) -> str:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ProxyProtocolError(f"not an IP address: {text[:50]!r}") from None
    if address.version != version:
        raise ProxyProtocolError(f"not an IPv{version} address: {text[:50]!r}")
    return str(address)


def _v1_port(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 5 or (len(text) > 1 and text[0] == "0"):
        raise ProxyProtocolError(f"not a port: {text[:10]!r}")
    port = int(text)
    if port > 65535:
        raise ProxyProtocolError(f"not a port: {text[:10]!r}")
    return port


def _v2(data: bytes) -> Header | None:
    if len(data) < _V2_HEAD.size:
        return None
    signature, version_command, family, length = _V2_HEAD.unpack_from(data)
    if signature != SIGNATURE_V2:
        raise ProxyProtocolError("bad version 2 signature")
    if version_command >> 4 != 2 or version_command & 0x0F not in (0, 1):
        raise ProxyProtocolError("version 2 with the command LOCAL or PROXY only")
    size = _V2_HEAD.size + length
    if size > MAX_V2:
        raise ProxyProtocolError(f"a version 2 header is at most {MAX_V2} bytes here")
    if len(data) < size:
        return None
    body = data[_V2_HEAD.size : size]
    if version_command & 0x0F == 0:
        return Header(size, None)
    layout = {0x11: _V2_INET, 0x21: _V2_INET6}.get(family)
    if layout is None:
        return Header(size, None)
    if length < layout.size:
        raise ProxyProtocolError("a version 2 address block is too short")
    source, _, source_port, _ = layout.unpack_from(body)
    return Header(size, ClientAddress(str(ipaddress.ip_address(source)), source_port))
