"""Who the client is behind a reverse proxy: trusted proxies and the headers they add.

A listener that sits behind a proxy sees the proxy's address, not the client's. Only a proxy the
configuration names (:class:`TrustedProxies`) is believed about the client; from any other peer the
headers are ignored, since a client can send them itself. :func:`resolve` reads one of two header
sets, chosen by the configuration (:class:`ProxyHeaders`), never both: a proxy that sets one passes
the other through from the client untouched, so reading both would let a client forge its address.

- ``x-forwarded``: ``X-Forwarded-For`` (a comma-separated list, each proxy appending the address
  it received the request from), ``X-Forwarded-Proto`` and ``X-Forwarded-Host``. nginx, Caddy,
  HAProxy and Traefik set these.
- ``forwarded``: ``Forwarded`` (RFC 7239): elements such as ``for=192.0.2.1;proto=https;host=x``,
  one per proxy, IPv6 as ``for="[2001:db8::1]:4711"``.

The client is the right-most address of the list that is not itself a trusted proxy: everything to
its left came from the client and may be forged. A malformed value from a trusted proxy leaves the
peer's address in place and is reported, so the listener can count it.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from enum import StrEnum
from typing import Final, NamedTuple

__all__ = [
    "ClientAddress",
    "Forwarding",
    "ProxyHeaders",
    "TrustedProxies",
    "format_remote",
    "parse_host_address",
    "parse_origin",
    "resolve",
]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_HOPS: Final = 32
"""Addresses of a forwarded list looked at, at most (from the right)."""
_HOST: Final = re.compile(r"(?:[A-Za-z0-9._~-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")
"""What ``X-Forwarded-Host`` or ``host=`` may hold: a name or IPv4 address, or an IPv6 address in
brackets, and a port."""
_TOKEN: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_QUOTED: Final = re.compile(r'"((?:[^"\\]|\\.)*)"')


class ProxyHeaders(StrEnum):
    """Which headers a trusted proxy's word is taken from."""

    X_FORWARDED = "x-forwarded"
    FORWARDED = "forwarded"


class ClientAddress(NamedTuple):
    host: str
    """An IP address as text (IPv6 without brackets), or ``""`` when unknown."""
    port: int | None = None

    @property
    def remote(self) -> str:
        """``HOST:PORT`` (``HOST`` alone when the port is not known), as logs and events show it."""
        return format_remote(self.host, self.port)


def format_remote(host: str, port: int | None) -> str:
    return host if port is None else f"{host}:{port}"


class Forwarding(NamedTuple):
    """What a connection's peer says about the client it forwards (or the peer itself)."""

    client: ClientAddress
    origin: str = ""
    """``SCHEME://HOST`` the client addressed, as a trusted proxy reported it; ``""`` otherwise."""
    malformed: tuple[str, ...] = ()
    """Headers from a trusted proxy whose values could not be used (and were not)."""


class TrustedProxies:
    """The addresses and networks of the proxies whose forwarding headers are believed.

    ``networks`` are ``192.0.2.7``, ``10.0.0.0/8``, ``2001:db8::/32`` and the like; raises
    ``ValueError`` for anything else (host bits set included). An IPv4-mapped IPv6 peer
    (``::ffff:10.0.0.1``) counts as its IPv4 address. ``headers``: which headers they set.
    """

    def __init__(self, networks: Iterable[str] = (), headers: str = ProxyHeaders.X_FORWARDED) -> None:
        try:
            self.headers = ProxyHeaders(headers)
        except ValueError:
            kinds = ", ".join(kind.value for kind in ProxyHeaders)
            raise ValueError(f"proxy headers {headers!r}: one of {kinds}") from None
        parsed: list[Network] = []
        for text in networks:
            try:
                parsed.append(ipaddress.ip_network(text.strip()))
            except ValueError as error:
                raise ValueError(f"trusted proxy {text!r}: {error}") from None
        self.networks: tuple[Network, ...] = tuple(parsed)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __repr__(self) -> str:
        return f"TrustedProxies({[str(network) for network in self.networks]!r}, {self.headers.value!r})"

    def trusts(self, host: str) -> bool:
        """Whether ``host``, an IP address as text, is one of the trusted proxies."""
        if not self.networks:
            return False
        address = _ip(host)
        return address is not None and any(address in network for network in self.networks)


def _ip(host: str) -> IpAddress | None:
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def parse_host_address(text: str) -> ClientAddress | None:
    """An address as a forwarding header writes it: ``192.0.2.1``, ``192.0.2.1:80``,
    ``2001:db8::1``, ``[2001:db8::1]`` or ``[2001:db8::1]:80``; ``None`` if it is none of those."""
    text = text.strip()
    port: int | None = None
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return None
        if rest:
            port = _port(rest[1:])
            if port is None:
                return None
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = _port(port_text)
        if port is None:
            return None
    else:
        host = text
    address = _ip(host)
    return None if address is None else ClientAddress(str(address), port)


def _port(text: str) -> int | None:
    if not text.isascii() or not text.isdigit() or len(text) > 5 or int(text) > 65535:
        return None
    return int(text)


def resolve(
    peer: ClientAddress,
    headers: Iterable[tuple[str, str]],
    proxies: TrustedProxies,
    host_header: str = "",
) -> Forwarding:
    """The client behind ``peer`` (the connection's direct peer), from the request's ``headers``
    (name and value pairs, repeats included, in order) when ``peer`` is a trusted proxy; otherwise
    ``peer`` itself. ``host_header`` (the request's ``Host``) completes the origin when the proxy
    reports a scheme but no host."""
    if not proxies.trusts(peer.host):
        return Forwarding(peer)
    fields: dict[str, list[str]] = {}
    for name, value in headers:
        fields.setdefault(name.lower(), []).append(value)
    if proxies.headers is ProxyHeaders.FORWARDED:
        return _from_forwarded(peer, fields.get("forwarded"), proxies, host_header)
    return _from_x_forwarded(peer, fields, proxies, host_header)


def _from_x_forwarded(
    peer: ClientAddress, fields: dict[str, list[str]], proxies: TrustedProxies, host_header: str
) -> Forwarding:
    client, malformed = peer, []
    chain = fields.get("x-forwarded-for")
    if chain is not None:
        hops = [parse_host_address(text) for text in ",".join(chain).split(",")][-MAX_HOPS:]
        index = _client_index(hops, proxies)
        found = None if index is None else hops[index]
        if found is None:
            malformed.append("x-forwarded-for")
        else:
            client = found
    proto = _last(fields.get("x-forwarded-proto"))
    host = _last(fields.get("x-forwarded-host"))
    origin = ""
    if proto is not None:
        origin = _origin(proto, host if host is not None else host_header)
        if not origin:
            malformed.append("x-forwarded-proto" if not _proto_ok(proto) else "x-forwarded-host")
    return Forwarding(client, origin, tuple(malformed))


def _last(values: list[str] | None) -> str | None:
    """The right-most of a header's comma-separated values, the one the nearest proxy wrote."""
    if not values:
        return None
    return ",".join(values).rsplit(",", 1)[-1].strip()


def _client_index(hops: Sequence[ClientAddress | None], proxies: TrustedProxies) -> int | None:
    """The index of the right-most hop that is not a trusted proxy (the left-most when all are);
    ``None`` when a hop up to it cannot be read."""
    for index in range(len(hops) - 1, -1, -1):
        hop = hops[index]
        if hop is None:
            return None
        if not proxies.trusts(hop.host):
            return index
    return 0 if hops else None


def _proto_ok(proto: str) -> bool:
    return proto.lower() in ("http", "https")


def _origin(proto: str, host: str) -> str:
    """``SCHEME://HOST`` as a browser writes its ``Origin`` (lower case, no default port), or
    ``""`` if ``proto`` or ``host`` is not one."""
    if not _proto_ok(proto) or not _HOST.fullmatch(host):
        return ""
    scheme = proto.lower()
    default_port = ":443" if scheme == "https" else ":80"
    return f"{scheme}://{host.lower().removesuffix(default_port)}"


def parse_origin(text: str, what: str = "origin") -> str:
    """``http://HOST[:PORT]`` or ``https://HOST[:PORT]`` (a trailing ``/`` aside) as a browser
    writes it in ``Origin``. Raises ``ValueError`` naming ``what`` (the setting it came from)."""
    scheme, separator, host = text.strip().removesuffix("/").partition("://")
    origin = _origin(scheme, host) if separator else ""
    if not origin:
        raise ValueError(f"{what} {text!r} is not http(s)://HOST[:PORT]")
    return origin


def _from_forwarded(
    peer: ClientAddress, values: list[str] | None, proxies: TrustedProxies, host_header: str
) -> Forwarding:
    if values is None:
        return Forwarding(peer)
    elements = _forwarded_elements(",".join(values))
    if elements is None:
        return Forwarding(peer, "", ("forwarded",))
    elements = elements[-MAX_HOPS:]
    hops = [parse_host_address(element.get("for", "")) for element in elements]
    index = _client_index(hops, proxies)
    client = None if index is None else hops[index]
    if index is None or client is None:
        return Forwarding(peer, "", ("forwarded",))
    chosen = elements[index]
    origin = ""
    if "proto" in chosen:
        origin = _origin(chosen["proto"], chosen.get("host", host_header))
        if not origin:
            return Forwarding(client, "", ("forwarded",))
    return Forwarding(client, origin)


def _forwarded_elements(text: str) -> list[dict[str, str]] | None:
    """The elements of a ``Forwarded`` value (RFC 7239, section 4), each a map of its lower-cased
    parameter names to their values, unquoted; ``None`` if it does not follow the grammar."""
    elements: list[dict[str, str]] = []
    element: dict[str, str] = {}
    at, size = 0, len(text)
    while True:
        while at < size and text[at] in " \t":
            at += 1
        name = _TOKEN.match(text, at)
        if name is None or name.end() >= size or text[name.end()] != "=":
            return None
        at = name.end() + 1
        quoted = _QUOTED.match(text, at)
        if quoted is not None:
            value = re.sub(r"\\(.)", r"\1", quoted.group(1))
            at = quoted.end()
        else:
            token = _TOKEN.match(text, at)
            if token is None:
                return None
            value, at = token.group(), token.end()
        key = name.group().lower()
        if key in element:
            return None
        element[key] = value
        while at < size and text[at] in " \t":
            at += 1
        if at == size:
            elements.append(element)
            return elements
        if text[at] == ",":
            elements.append(element)
            element = {}
        elif text[at] != ";":
            return None
        at += 1
