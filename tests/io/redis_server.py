"""A redis-server of the test's own: on 127.0.0.1 at a port picked at run time, no persistence,
stopped by its pid."""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listened on a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class RedisServer:
    """``redis-server`` in ``directory`` (its working directory and log). :meth:`start` returns
    once it answers PING; :meth:`kill` and :meth:`restart` (on the same port) are for fault tests."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.directory / "redis-server.log"

    def arguments(self) -> list[str]:
        return [
            "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(self.directory), "--loglevel", "warning",
        ]  # fmt: skip

    def start(self) -> None:
        """Start on a free port (or, after a start, on the same port) and wait for PING."""
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail(
                "redis-server is not installed: run SWITCHBOARD_TEST_DEPS=1 scripts/setup", pytrace=False
            )
        self.port = self.port or free_port()
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen([binary, *self.arguments()], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while not self._answers_ping():
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}: {self._log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(
                    f"redis-server did not answer PING in {START_TIMEOUT} s: {self._log_tail()}"
                )
            time.sleep(0.01)

    def restart(self) -> None:
        """Start again on the same port, empty (nothing is saved), after :meth:`kill` or :meth:`stop`."""
        self.stop()
        self.start()

    def kill(self) -> None:
        """SIGKILL, as a crash: connections close without a word."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(STOP_TIMEOUT)

    def freeze(self) -> None:
        """SIGSTOP: connections stay open and nothing answers, as a hung server or a lost network."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within ``STOP_TIMEOUT``."""
        if self.process is None or self.process.poll() is not None:
            return
        self.thaw()
        self.process.terminate()
        try:
            self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(STOP_TIMEOUT)

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-2000:]
        return "(no log)"


class RedisSentinel(RedisServer):
    """``redis-server --sentinel`` watching ``master`` as the service ``service``, alone (quorum 1)."""

    def __init__(self, directory: Path, master: RedisServer, service: str) -> None:
        super().__init__(directory)
        self.master = master
        self.service = service

    def arguments(self) -> list[str]:
        config = self.directory / "sentinel.conf"
        if not config.exists():
            config.write_text(f"sentinel monitor {self.service} 127.0.0.1 {self.master.port} 1\n")
        return [
            str(config), "--sentinel", "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.directory), "--loglevel", "warning",
        ]  # fmt: skip


@contextlib.contextmanager
def running_redis(directory: Path) -> Iterator[RedisServer]:
    """A started :class:`RedisServer`, stopped on the way out whatever happened."""
    server = RedisServer(directory)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def running_sentinel(directory: Path, master: RedisServer, service: str) -> Iterator[RedisSentinel]:
    """A started :class:`RedisSentinel` in ``directory`` (made if missing), stopped on the way out."""
    directory.mkdir(exist_ok=True)
    sentinel = RedisSentinel(directory, master, service)
    try:
        sentinel.start()
        yield sentinel
    finally:
        sentinel.stop()
