"""Headless Chromium driven over the DevTools protocol, with the ``websockets`` client we already have."""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--autoplay-policy=no-user-gesture-required",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
]


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Chromium:
    """One headless browser with one page, stopped by its pid when the block ends."""

    def __init__(self) -> None:
        self._profile = Path(tempfile.mkdtemp(prefix="switchboard-chromium-"))
        self._process: subprocess.Popen[bytes] | None = None
        self._page: ClientConnection | None = None
        self._ids = itertools.count(1)

    async def __aenter__(self) -> Chromium:
        binary = chromium_path()
        if binary is None:
            raise RuntimeError("chromium is not installed (scripts/test installs it)")
        self._process = subprocess.Popen(
            [binary, *CHROMIUM_FLAGS, f"--user-data-dir={self._profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port = await self._devtools_port()
        targets = await asyncio.to_thread(_get_json, f"http://127.0.0.1:{port}/json/list")
        page = next(t for t in targets if t["type"] == "page")
        self._page = await connect(page["webSocketDebuggerUrl"], max_size=None, proxy=None)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._page is not None:
            await self._page.close()
        self.kill()
        shutil.rmtree(self._profile, ignore_errors=True)

    def kill(self) -> None:
        """Kill the browser at once (SIGKILL): its peers get no goodbye."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(timeout=10)

    async def _devtools_port(self, timeout: float = 20.0) -> int:
        marker = self._profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if marker.exists() and marker.read_text().strip():
                return int(marker.read_text().split()[0])
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(f"chromium exited with {self._process.returncode}")
            await asyncio.sleep(0.05)
        raise TimeoutError("chromium did not open its DevTools port")

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one DevTools command to the page and return its result."""
        assert self._page is not None
        request_id = next(self._ids)
        await self._page.send(json.dumps({"id": request_id, "method": method, "params": params}))
        while True:
            reply = json.loads(await self._page.recv())
            if reply.get("id") == request_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply["result"]
                return result

    async def goto(self, url: str) -> None:
        await self.call("Page.navigate", url=url)

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises are awaited)."""
        result = await self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 15.0) -> Any:
        """Poll ``expression`` until it is truthy (an exception counts as falsy); returns its value."""
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while True:
            try:
                value = await self.evaluate(expression)
            except RuntimeError as error:
                value, last_error = None, error
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"{expression!r} still falsy after {timeout} s (last error: {last_error})")
            await asyncio.sleep(0.1)


def _get_json(url: str) -> list[dict[str, Any]]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=5) as response:
        data: list[dict[str, Any]] = json.load(response)
        return data
