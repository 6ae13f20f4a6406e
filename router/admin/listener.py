"""The admin port: the API and the dashboard over HTTP, and the once-a-second sampler of rates."""

from __future__ import annotations

import asyncio
import contextlib

from router.admin.api import AdminApi
from router.admin.config import parse_listen
from router.forwarding import TrustedProxies
from router.http_limits import HttpLimits
from router.http_listener import HttpListener

__all__ = ["SAMPLE_INTERVAL", "AdminListener"]

SAMPLE_INTERVAL = 1.0
"""Seconds between two samples of the counters behind the API's rates."""


class AdminListener:
    """Serves ``api`` once :meth:`start` has bound its address, until :meth:`close`; ``proxies``
    are the reverse proxies in front of it."""

    def __init__(
        self, api: AdminApi, limits: HttpLimits | None = None, proxies: TrustedProxies | None = None
    ) -> None:
        self.api = api
        self.http = HttpListener("admin", api.handle, limits or HttpLimits(), proxies)
        self._sampler: asyncio.Task[None] | None = None
        self.url = ""

    async def start(self, listen: str) -> str:
        """Bind ``HOST:PORT`` (port 0 picks one); returns the URL it serves, ``http://HOST:PORT``."""
        host, port = parse_listen(listen)
        await self.http.start(host, port)
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{self.http.port}"
        self._sampler = asyncio.create_task(self._sample(), name="admin-sampler")
        return self.url

    async def close(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
        await self.http.close()

    async def _sample(self) -> None:
        while True:
            self.api.sample()
            await asyncio.sleep(SAMPLE_INTERVAL)
