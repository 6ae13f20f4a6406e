"""Fetching ``[sessions] jwks_url``: the keys an identity provider publishes, for JWT sessions.

:class:`JwksFetcher` fetches the whole key set with PyJWT's :class:`~jwt.PyJWKClient`, in a worker
thread, and hands the keys to :class:`~router.core.jwt_sessions.JwtSessions`, whose
:class:`~router.core.jwt_sessions.JwksSchedule` says when (``docs/tokens.md``, "Keys from a URL").
Tokens are never checked against the URL one by one: ``PyJWKClient.get_signing_key`` would fetch
in the router's loop, once per unknown ``kid``, so the router fetches only what the schedule
allows and the core decides every token from the keys it has.

A fetch ends within about twice ``timeout`` and reads at most :data:`MAX_JWKS_BYTES`, so a slow or
endless answer holds a thread only that long, and never the router's loop or its exit. A failed
fetch keeps the keys in use and is logged at most once per refresh interval.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import time
import urllib.request
from collections.abc import Callable
from typing import Any, Final
from urllib.error import HTTPError, URLError

import jwt

from router.core.jwt_sessions import JwtSessions, VerificationKey, signing_keys
from router.logs import ThrottledLog

log = logging.getLogger("switchboard.router")

MAX_JWKS_BYTES: Final = 1 << 20
"""The largest key set read; a longer answer fails the fetch."""
USER_AGENT: Final = "switchboard-router"


class JwksError(Exception):
    """A fetch that gave no usable key set, with the reason (never a secret: keys are public)."""


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is an error: the URL in the configuration is the one trusted."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class BoundedJwkClient(jwt.PyJWKClient):
    """A :class:`~jwt.PyJWKClient` whose :meth:`fetch_data` reads at most :data:`MAX_JWKS_BYTES`
    and stops reading once ``timeout`` has passed (each read also waits ``timeout`` at most)."""

    def fetch_data(self) -> Any:
        deadline = time.monotonic() + self.timeout
        request = urllib.request.Request(url=self.uri, headers=self.headers)
        opener = urllib.request.build_opener(_NoRedirects())
        try:
            with opener.open(request, timeout=self.timeout) as response:
                body = _read_bounded(response, deadline)
        except (OSError, http.client.HTTPException) as error:
            raise jwt.PyJWKClientConnectionError(_why(error)) from None
        try:
            return json.loads(body)
        except ValueError as error:
            raise jwt.PyJWKClientError(f"the answer is not JSON: {error}") from None


def _why(error: Exception) -> str:
    if isinstance(error, HTTPError):
        error.close()
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, URLError):
        return str(error.reason)
    return str(error) or type(error).__name__


def _read_bounded(response: http.client.HTTPResponse, deadline: float) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while chunk := response.read1(64 * 1024):
        size += len(chunk)
        if size > MAX_JWKS_BYTES:
            raise jwt.PyJWKClientError(f"the key set is over {MAX_JWKS_BYTES} bytes")
        if time.monotonic() > deadline:
            raise TimeoutError("the key set took too long to arrive")
        chunks.append(chunk)
    return b"".join(chunks)


class JwksFetcher:
    """Fetches ``url`` for ``sessions`` when its schedule says so; :meth:`run` until cancelled.

    ``on_keys`` is called in the router's loop after every fetch, so that the requests that
    waited for keys are handled again. ``clock`` is the Unix time, what the schedule runs on.
    """

    def __init__(
        self,
        url: str,
        sessions: JwtSessions,
        timeout: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        assert sessions.jwks is not None
        self.url = url
        self.sessions = sessions
        self.schedule = sessions.jwks
        self._client = BoundedJwkClient(
            url, cache_jwk_set=False, timeout=timeout, headers={"User-Agent": USER_AGENT}
        )
        self._clock = clock
        self._wake = asyncio.Event()
        self._failures = ThrottledLog(log, interval=self.schedule.refresh)
        self._kids: tuple[str | None, ...] | None = None
        """The ``kid`` values of the last key set logged."""
        self._failing = False

    def fetch(self) -> list[VerificationKey]:
        """One fetch, blocking (run it in a thread). Raises :class:`JwksError`."""
        try:
            jwks = self._client.get_signing_keys(refresh=True)
        except jwt.PyJWTError as error:
            raise JwksError(str(error)) from None
        except Exception as error:
            raise JwksError(f"{type(error).__name__}: {error}") from None
        keys, skipped = signing_keys(jwks)
        if not keys:
            raise JwksError(f"no key it holds can verify tokens here ({'; '.join(skipped)})")
        for reason in skipped:
            log.debug("jwks_url: a key left out: %s", reason)
        return keys

    async def refresh(self) -> str | None:
        """Fetch now, in a worker thread, and hand the keys to the sessions; returns why the fetch
        failed, or ``None``. A failure is logged unless there is no key at all (at start), which
        the caller reports."""
        self.sessions.fetch_started()
        try:
            keys = await asyncio.to_thread(self.fetch)
        except JwksError as error:
            self.sessions.fetch_failed(self._clock())
            self._failing = True
            kept = len(self.sessions.keys)
            if kept:
                self._failures.warning(
                    "jwks_fetch",
                    "jwks_url %s: cannot fetch the key set (%d key(s) kept in use): %s",
                    self.url,
                    kept,
                    error,
                    now=self._clock(),
                )
            return str(error)
        self.sessions.keys_fetched(keys, self._clock())
        self._log_keys(keys)
        return None

    def _log_keys(self, keys: list[VerificationKey]) -> None:
        kids = tuple(key.kid for key in keys)
        if kids != self._kids or self._failing:
            names = ", ".join(f"{key.kid} ({key.algorithm})" for key in keys)
            log.info("jwks_url %s: %d key(s) in use: %s", self.url, len(keys), names)
        self._kids = kids
        self._failing = False

    def wake(self) -> None:
        """A token waits for keys: fetch now if the schedule allows it."""
        if self.schedule.due(self._clock()):
            self._wake.set()

    async def run(self, on_keys: Callable[[], None]) -> None:
        """Fetch whenever the schedule says so, until cancelled."""
        while True:
            if self.schedule.due(self._clock()):
                await self.refresh()
                on_keys()
                continue
            delay = max(0.0, self.schedule.next_due() - self._clock())
            try:
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
