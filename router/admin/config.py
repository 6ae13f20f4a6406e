"""The ``[admin]`` table: where the admin API listens, where its token comes from, the bounds of
its HTTP listener (``router/http_listener.py``), and the reverse proxy in front of it."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping

import msgspec

from router.forwarding import ProxyHeaders, TrustedProxies, parse_origin
from router.http_limits import HttpLimits

__all__ = ["DEFAULT_ADMIN", "DEFAULT_TOKEN_ENV", "AdminSection", "is_loopback", "parse_listen"]

DEFAULT_ADMIN = "127.0.0.1:7760"
DEFAULT_TOKEN_ENV = "SWITCHBOARD_ADMIN_TOKEN"
_LIMITS = HttpLimits()


class AdminSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``listen``: ``HOST:PORT`` (port 0 picks one), or ``""`` for no admin API. ``token_env``: the
    environment variable that holds the token every API request must bear. ``trusted_proxies``,
    ``proxy_headers`` and ``public_origin``: the reverse proxy in front of it
    (:mod:`router.forwarding`). The other keys bound the listener
    (:class:`~router.http_listener.HttpLimits`, ``docs/operations.md``)."""

    listen: str = DEFAULT_ADMIN
    token_env: str = DEFAULT_TOKEN_ENV
    max_connections: int = _LIMITS.max_connections
    max_connections_per_address: int = _LIMITS.max_connections_per_address
    header_timeout: float = _LIMITS.header_timeout
    body_timeout: float = _LIMITS.body_timeout
    max_header_bytes: int = _LIMITS.max_header_bytes
    max_body_bytes: int = _LIMITS.max_body_bytes
    trusted_proxies: list[str] = []
    proxy_headers: str = ProxyHeaders.X_FORWARDED.value
    public_origin: str = ""

    def __post_init__(self) -> None:
        if self.listen:
            parse_listen(self.listen)
        self.http_limits()
        self.proxies()
        self.origin()

    def proxies(self) -> TrustedProxies:
        """The proxies whose forwarding headers are believed. Raises ``ValueError``."""
        try:
            return TrustedProxies(self.trusted_proxies, self.proxy_headers)
        except ValueError as error:
            raise ValueError(f"[admin] {error}") from None

    def origin(self) -> str:
        """``public_origin`` as a browser writes it, or ``""``. Raises ``ValueError``."""
        return parse_origin(self.public_origin, "[admin] public_origin =") if self.public_origin else ""

    def http_limits(self) -> HttpLimits:
        """The listener's bounds. Raises ``ValueError``."""
        return HttpLimits(
            max_connections=self.max_connections,
            max_connections_per_address=self.max_connections_per_address,
            header_timeout=self.header_timeout,
            body_timeout=self.body_timeout,
            max_header_bytes=self.max_header_bytes,
            max_body_bytes=self.max_body_bytes,
        )

    def token(self, environ: Mapping[str, str] = os.environ) -> str | None:
        """The token, ``None`` when the variable is unset or empty. Without one the API is open to
        whoever reaches it, so it may only listen on loopback: raises ``ValueError`` otherwise."""
        token = environ.get(self.token_env) or None
        if token is None and self.listen and not is_loopback(parse_listen(self.listen)[0]):
            raise ValueError(
                f"[admin] listen = {self.listen!r} is not loopback: set a token in ${self.token_env}"
            )
        return token


def parse_listen(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6). Raises ``ValueError``."""
    host, colon, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not colon or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"[admin] listen = {address!r} is not HOST:PORT")
    return host, int(port)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address, or ``localhost``) is a loopback address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
