"""The ``[sessions]`` table of the router's configuration: which session manager checks clients.

``kind = "allow_all"`` (the default) lets every client in as ``anonymous``; ``kind = "jwt"`` checks
JSON Web Tokens with :class:`~router.core.jwt_sessions.JwtSessions`; ``kind = "external"`` asks a
session service (:class:`~router.core.external_sessions.ExternalSessions`). This module reads what
the table names, key files and environment variables, when :meth:`SessionsSection.session_manager`
is called. ``docs/tokens.md`` and ``docs/session-service.md`` describe every key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import msgspec

from router.admin.config import is_loopback
from router.core.external_sessions import ExternalSessions
from router.core.jwt_sessions import JwksSchedule, JwtSessions, VerificationKey, keys_from_jwks
from router.core.sessions import AllowAllSessions, SessionManager
from router.curve import read_public_key

__all__ = ["KeyConfig", "SessionsSection", "sessions_relative_to"]

Algorithm = Literal["HS256", "RS256", "ES256", "EdDSA"]
JWKS_REFRESH = 300.0
JWKS_COOLDOWN = 10.0
JWKS_TIMEOUT = 5.0


class KeyConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One verification key: ``file`` (a PEM public key) for RS256, ES256 and EdDSA, or
    ``secret_env`` (the name of the environment variable that holds the secret) for HS256."""

    alg: Algorithm
    file: str | None = None
    secret_env: str | None = None
    kid: str | None = None

    def __post_init__(self) -> None:
        if self.alg == "HS256" and (self.secret_env is None or self.file is not None):
            raise ValueError("an HS256 key takes secret_env (the secret is never written in the file)")
        if self.alg != "HS256" and (self.file is None or self.secret_env is not None):
            raise ValueError(f"an {self.alg} key takes file, a PEM public key")

    def load(self, environ: Mapping[str, str]) -> VerificationKey:
        if self.secret_env is not None:
            secret = environ.get(self.secret_env)
            if not secret:
                raise ValueError(f"the environment variable {self.secret_env} (HS256 secret) is not set")
            return VerificationKey.from_secret(secret.encode(), self.kid)
        assert self.file is not None
        return VerificationKey.from_pem(self.alg, _read(self.file), self.kid)


class SessionsSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The ``[sessions]`` table. Relative paths in a file are relative to that file."""

    kind: Literal["allow_all", "jwt", "external"] = "allow_all"
    keys: tuple[KeyConfig, ...] = ()
    jwks_file: str | None = None
    jwks_url: str | None = None
    """An identity provider's JWKS, fetched at start, every ``jwks_refresh`` seconds, and when a
    token names an unknown ``kid`` (at most once per ``jwks_cooldown`` seconds)."""
    jwks_refresh: float | None = None
    """Seconds between fetches of ``jwks_url``; ``None``: :data:`JWKS_REFRESH`."""
    jwks_cooldown: float | None = None
    """The least seconds between the end of a fetch and one that an unknown ``kid`` starts;
    ``None``: :data:`JWKS_COOLDOWN`."""
    jwks_timeout: float | None = None
    """Seconds a fetch may take, and a register whose ``kid`` is unknown may wait for one;
    ``None``: :data:`JWKS_TIMEOUT`."""
    issuer: str | None = None
    audience: str | None = None
    leeway: float = 5.0
    topics_claim: str = "topics"
    endpoint: str | None = None
    """``kind = "external"``: the session service's ZeroMQ endpoint, which the router connects to."""
    service_public_key_file: str | None = None
    """``kind = "external"``: the service's Curve public key (``NAME.key``), needed when
    ``[security]`` turns Curve on, and only then."""
    timeout: float = 2.0
    cache_ttl: float = 60.0
    cache_size: int = 10_000

    def __post_init__(self) -> None:
        jwt_keys = bool(self.keys) or self.jwks_file is not None or self.jwks_url is not None
        if self.kind == "jwt" and not jwt_keys:
            raise ValueError("[sessions] kind = 'jwt' needs keys, jwks_file or jwks_url")
        if self.kind != "jwt" and (jwt_keys or self.issuer or self.audience):
            raise ValueError(f"[sessions] has JWT settings but kind is {self.kind!r}; set kind = 'jwt'")
        if (self.kind == "external") != (self.endpoint is not None):
            raise ValueError("[sessions] endpoint goes with kind = 'external', which needs it")
        if self.service_public_key_file is not None and self.kind != "external":
            raise ValueError("[sessions] service_public_key_file goes with kind = 'external'")
        self._check_external()
        self._check_jwks_url()
        if not self.leeway >= 0:
            raise ValueError("[sessions] leeway must be 0 or more")
        if not self.topics_claim:
            raise ValueError("[sessions] topics_claim must not be empty")

    def _check_external(self) -> None:
        if not 0 < self.timeout <= 60:
            raise ValueError("[sessions] timeout is more than 0 and at most 60 seconds")
        if not 0 <= self.cache_ttl <= 86_400:
            raise ValueError("[sessions] cache_ttl is from 0 to 86400 seconds")
        if self.cache_size < 1:
            raise ValueError("[sessions] cache_size is at least 1")

    def _check_jwks_url(self) -> None:
        if self.jwks_url is None:
            if (self.jwks_refresh, self.jwks_cooldown, self.jwks_timeout) != (None, None, None):
                raise ValueError("[sessions] jwks_refresh, jwks_cooldown and jwks_timeout go with jwks_url")
            return
        check_jwks_url(self.jwks_url)
        if not 1 <= self.jwks_refresh_interval <= 86_400:
            raise ValueError("[sessions] jwks_refresh is from 1 to 86400 seconds")
        if not 0 < self.jwks_cooldown_interval <= self.jwks_refresh_interval:
            raise ValueError("[sessions] jwks_cooldown is more than 0 and at most jwks_refresh")
        if not 0 < self.jwks_fetch_timeout <= 60:
            raise ValueError("[sessions] jwks_timeout is more than 0 and at most 60 seconds")

    @property
    def jwks_refresh_interval(self) -> float:
        return JWKS_REFRESH if self.jwks_refresh is None else self.jwks_refresh

    @property
    def jwks_cooldown_interval(self) -> float:
        return JWKS_COOLDOWN if self.jwks_cooldown is None else self.jwks_cooldown

    @property
    def jwks_fetch_timeout(self) -> float:
        return JWKS_TIMEOUT if self.jwks_timeout is None else self.jwks_timeout

    def service_public_key(self, curve_on: bool) -> bytes | None:
        """The session service's Curve public key (Z85), read now; ``None`` without an external
        service or with Curve off. With Curve on, the link to the service is a Curve client, so an
        external service must be given its key. Raises ``ValueError``."""
        if self.kind != "external":
            return None
        if not curve_on:
            if self.service_public_key_file is not None:
                raise ValueError(
                    "[sessions] service_public_key_file needs Curve on: set [security] "
                    "curve_secret_key_file, or remove service_public_key_file"
                )
            return None
        if self.service_public_key_file is None:
            raise ValueError(
                "[sessions] service_public_key_file is required: with Curve on, the router reaches "
                "the session service over Curve; set it to the service's public key (NAME.key)"
            )
        return read_public_key(Path(self.service_public_key_file))

    def session_manager(self, environ: Mapping[str, str] | None = None) -> SessionManager:
        """The session manager this table asks for, with its keys read now (files, and secrets
        from ``environ``, by default the process environment). Raises ``ValueError``."""
        if self.kind == "allow_all":
            return AllowAllSessions()
        if self.kind == "external":
            return ExternalSessions(self.cache_ttl, self.cache_size)
        keys = [key.load(os.environ if environ is None else environ) for key in self.keys]
        if self.jwks_file is not None:
            keys += keys_from_jwks(_read(self.jwks_file).decode("utf-8", "replace"))
        schedule = None
        if self.jwks_url is not None:
            schedule = JwksSchedule(self.jwks_refresh_interval, self.jwks_cooldown_interval)
        return JwtSessions(
            keys,
            issuer=self.issuer,
            audience=self.audience,
            leeway=self.leeway,
            topics_claim=self.topics_claim,
            jwks=schedule,
        )


def check_jwks_url(url: str) -> None:
    """Refuse (``ValueError``) a JWKS URL that is not ``https://``, or ``http://`` to a loopback
    host: keys fetched in clear could be swapped by anyone on the path, and would then sign in
    whoever they like."""
    try:
        parts = urlsplit(url)
        host, _ = parts.hostname, parts.port
    except ValueError as error:
        raise ValueError(f"[sessions] jwks_url = {url!r}: {error}") from None
    if parts.scheme == "https" and host:
        return
    if parts.scheme == "http" and host and is_loopback(host):
        return
    raise ValueError(
        f"[sessions] jwks_url = {url!r}: use an https:// URL (http:// only to a loopback host: "
        "localhost, 127.0.0.1, [::1])"
    )


def sessions_relative_to(base: Path, table: Any) -> Any:
    """The raw ``[sessions]`` table with its key file paths made relative to ``base`` (the
    configuration file's directory); anything else comes back unchanged, for the checks to see."""
    if not isinstance(table, dict):
        return table
    table = dict(table)
    for key in ("jwks_file", "service_public_key_file"):
        if isinstance(table.get(key), str):
            table[key] = str(base / table[key])
    if isinstance(table.get("keys"), list):
        table["keys"] = [_key_relative_to(base, key) for key in table["keys"]]
    return table


def _key_relative_to(base: Path, key: Any) -> Any:
    if isinstance(key, dict) and isinstance(key.get("file"), str):
        return {**key, "file": str(base / key["file"])}
    return key


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise ValueError(f"cannot read {path}: {error.strerror}") from None
