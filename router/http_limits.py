"""The bounds of an HTTP listener, and the ``HOST:PORT`` it listens on: plain settings, which the
configuration reads without loading the HTTP server (``router/http_listener.py``)."""

from __future__ import annotations

import ipaddress

import msgspec

__all__ = ["HttpLimits", "address_key", "parse_address"]


class HttpLimits(msgspec.Struct, frozen=True, kw_only=True):
    """The bounds of one listener (``router/http_listener.py`` says how they work together);
    the defaults suit the admin API."""

    max_connections: int = 256
    max_connections_per_address: int = 32
    header_timeout: float = 5.0
    body_timeout: float = 10.0
    max_header_bytes: int = 8 * 1024
    max_body_bytes: int = 64 * 1024

    def __post_init__(self) -> None:
        if min(self.max_connections, self.max_connections_per_address, self.max_header_bytes) < 1:
            raise ValueError("connection caps and max_header_bytes must be positive")
        if self.header_timeout <= 0 or self.body_timeout <= 0 or self.max_body_bytes < 0:
            raise ValueError("timeouts must be positive and max_body_bytes not negative")


def parse_address(address: str, what: str = "address") -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6; port 0 picks a free one). Raises ``ValueError``
    naming ``what`` (the setting it came from)."""
    host, colon, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not colon or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{what} {address!r} is not HOST:PORT")
    return host, int(port)


def address_key(host: str) -> str:
    """What the per-address cap counts by: an IPv4 address (also when IPv4-mapped), an IPv6
    address's /64, else the text as it is."""
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)
