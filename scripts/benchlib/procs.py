"""Child processes of a benchmark: start, read their JSON event lines, measure their CPU, stop by pid."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import resource
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
UNLIMITED_FILES = 1 << 16
"""What to ask for when the hard open-files limit is unlimited."""
_PR_SET_PDEATHSIG = 1


class ChildError(RuntimeError):
    """A child process that failed, exited early or said nothing in time."""


def python_module(module: str, *args: str) -> list[str]:
    """The command line that runs ``module`` (a ``benchlib`` child or the router) in this venv."""
    return [sys.executable, "-m", module, *args]


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it if the bench itself is killed."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _prepare(cpus: frozenset[int] | None) -> Callable[[], None]:
    """What runs in the child before exec: :func:`_die_with_parent`, and if ``cpus`` is given, keep
    the child (and every thread it starts) on those CPUs."""

    def prepare() -> None:
        _die_with_parent()
        if cpus:
            os.sched_setaffinity(0, cpus)

    return prepare


def cpu_split() -> tuple[frozenset[int], frozenset[int]] | None:
    """CPU 0 for the server under test and the other CPUs for everything else, or ``None`` on a
    machine with one CPU."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    return frozenset(cpus[:1]), frozenset(cpus[1:])


class Child:
    """One child process whose stdout carries one JSON object per line, each with an ``event``."""

    def __init__(
        self, name: str, args: Sequence[str], stdin: bool = False, cpus: frozenset[int] | None = None
    ) -> None:
        self.name = name
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed by stop()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SCRIPTS), str(ROOT)])}
        self.process = subprocess.Popen(
            list(args),
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            preexec_fn=_prepare(cpus),
        )
        assert self.process.stdout is not None
        self._stdout = self.process.stdout.fileno()
        self._buffer = b""

    @property
    def pid(self) -> int:
        return self.process.pid

    def expect(self, event: str, timeout: float) -> dict[str, Any]:
        """The next message with this ``event``; raises :class:`ChildError` after ``timeout`` seconds."""
        message = self.next_event(event, timeout)
        if message is None:
            raise ChildError(f"{self.name}: no {event!r} within {timeout:.0f} s{self.stderr_tail()}")
        return message

    def next_event(self, event: str, timeout: float) -> dict[str, Any] | None:
        """The next message with this ``event``, or ``None`` if none came within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while (line := self._next_line(deadline)) is not None:
            message = _parse(line)
            if message.get("event") == event:
                return message
        return None

    def _next_line(self, deadline: float) -> bytes | None:
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self._stdout], [], [], remaining)[0]:
                return None
            chunk = os.read(self._stdout, 65536)
            if not chunk:
                code = self.process.wait()
                raise ChildError(f"{self.name} exited with {code}{self.stderr_tail()}")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    def send(self, message: dict[str, Any]) -> None:
        """One JSON line on the child's stdin (started with ``stdin=True``)."""
        if self.process.stdin is None:
            raise ChildError(f"{self.name} has no stdin to send to")
        try:
            self.process.stdin.write(json.dumps(message).encode() + b"\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            raise ChildError(f"{self.name} stopped reading its stdin{self.stderr_tail()}") from None

    def stderr_tail(self, limit: int = 2000) -> str:
        self._stderr.seek(0)
        text = self._stderr.read().decode(errors="replace")[-limit:].strip()
        return f"; its stderr ends with:\n{text}" if text else ""

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it is still there after 5 s."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                with contextlib.suppress(BrokenPipeError):
                    pipe.close()
        self._stderr.close()


def _parse(line: bytes) -> dict[str, Any]:
    with contextlib.suppress(ValueError):
        message = json.loads(line)
        if isinstance(message, dict):
            return message
    return {}


class Children:
    """Every child started in a ``with`` block is stopped when it ends, also on error."""

    def __init__(self) -> None:
        self._children: list[Child] = []

    def start(
        self, name: str, args: Sequence[str], stdin: bool = False, cpus: frozenset[int] | None = None
    ) -> Child:
        child = Child(name, args, stdin, cpus)
        self._children.append(child)
        return child

    def __enter__(self) -> Children:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        for child in reversed(self._children):
            child.stop()
        self._children.clear()


@dataclass(frozen=True)
class CpuTimes:
    """CPU seconds (user + system) of a whole process and of its main thread alone."""

    process: float
    main_thread: float

    def __sub__(self, other: CpuTimes) -> CpuTimes:
        return CpuTimes(self.process - other.process, self.main_thread - other.main_thread)


def cpu_times(pid: int) -> CpuTimes:
    """From ``/proc``: the process line sums all threads (ZeroMQ's I/O thread included)."""
    process, main_thread = Path(f"/proc/{pid}/stat"), Path(f"/proc/{pid}/task/{pid}/stat")
    return CpuTimes(_stat_seconds(process), _stat_seconds(main_thread))


def _stat_seconds(path: Path) -> float:
    fields = path.read_text().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLOCK_TICKS


@dataclass(frozen=True)
class MachineTicks:
    """Clock ticks of all CPUs together since boot (``/proc/stat``): busy ones and all."""

    busy: int
    total: int

    @classmethod
    def now(cls) -> MachineTicks:
        ticks = [int(word) for word in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = ticks[3] + ticks[4]
        return cls(sum(ticks) - idle, sum(ticks))

    def cores_busy_since(self, earlier: MachineTicks) -> float:
        """How many of the machine's cores were busy on average, by every process on it."""
        total = self.total - earlier.total
        return (self.busy - earlier.busy) / total * (os.cpu_count() or 1) if total else 0.0


def run_queue_wait(pid: int) -> float:
    """Seconds the process's main thread was runnable but waiting for a CPU (``/proc/PID/schedstat``)."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from ``/proc/PID/statm``."""
    resident_pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return resident_pages * PAGE_SIZE


def load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def raise_open_files_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit (children inherit it); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, UNLIMITED_FILES)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return max(soft, wanted)
