"""A JWKS served over HTTP by the test itself, on 127.0.0.1 at a port picked at run time."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt

from tests.tokens import private_key


def jwk(algorithm: str, name: str, kid: str) -> dict[str, Any]:
    """The public JWK of the test key pair ``name`` of ``algorithm``, with ``kid``."""
    public = private_key(algorithm, name).public_key()
    return {**jwt.get_algorithm_by_name(algorithm).to_jwk(public, as_dict=True), "kid": kid, "use": "sig"}


class JwksServer:
    """Serves :attr:`body` at every path with :attr:`status`, after :attr:`delay` seconds, and
    counts the requests (their monotonic times in :attr:`requests`)."""

    def __init__(self) -> None:
        self.body = b'{"keys": []}'
        self.status = 200
        self.delay = 0.0
        self.headers: dict[str, str] = {}
        self.requests: list[float] = []
        self._lock = threading.Lock()
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._http.daemon_threads = True
        self._thread = threading.Thread(target=self._http.serve_forever, kwargs={"poll_interval": 0.05})

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._http.server_address[1]}/jwks.json"

    def publish(self, *keys: dict[str, Any]) -> None:
        self.body = json.dumps({"keys": list(keys)}).encode()

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.requests)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with server._lock:
                    server.requests.append(time.monotonic())
                time.sleep(server.delay)
                self.send_response(server.status)
                for name, value in server.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(server.body)))
                self.end_headers()
                self.wfile.write(server.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._thread.join(timeout=5)


@contextmanager
def jwks_server() -> Iterator[JwksServer]:
    """A :class:`JwksServer` for the length of the block."""
    server = JwksServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
