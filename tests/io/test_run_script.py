"""``scripts/run``, the quick start: it says where to look and stops everything on Ctrl-C; when a
process cannot start (a port another program holds), it says what to do in one line and fails."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator

import pytest

from tests.io.harness import ROOT

pytestmark = pytest.mark.timeout(120)

OFFSETS = (0, 1, 2, 3, 4, 5, 10, 11, 20, 30, 40, 100, 101, 102, 103, 105, 110, 111)
"""The ports scripts/run binds, from SWITCHBOARD_PORT_BASE (with --cluster, 20 and from 100 on)."""


def free_base() -> int:
    """A base whose every port is free now on 127.0.0.1 (others could take one meanwhile)."""
    for _ in range(100):
        base = random.randrange(20_000, 60_000, 100)
        with contextlib.ExitStack() as held:
            try:
                for offset in OFFSETS:
                    held.enter_context(socket.create_server(("127.0.0.1", base + offset)))
            except OSError:
                continue
            return base
    raise AssertionError("no free port range")


@contextlib.contextmanager
def run_script(base: int, *args: str) -> Iterator[subprocess.Popen[str]]:
    env = {**os.environ, "SWITCHBOARD_PORT_BASE": str(base)}
    process = subprocess.Popen(
        ["scripts/run", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def greeting(process: subprocess.Popen[str]) -> str:
    """What scripts/run printed, up to its "Press Ctrl-C" line."""
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith("Press Ctrl-C"):
            break
    return "".join(lines)


def test_it_says_where_to_look_and_stops_on_ctrl_c() -> None:
    base = free_base()
    with run_script(base) as process:
        text = greeting(process)
        assert f"tcp://127.0.0.1:{base}" in text
        assert f"http://127.0.0.1:{base + 30}/" in text
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=30)
    assert "stopped" in out


def test_a_port_another_program_holds_fails_with_what_to_do() -> None:
    base = free_base()
    with socket.create_server(("127.0.0.1", base)), run_script(base) as process:
        _, err = process.communicate(timeout=60)
    assert process.returncode == 1
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("scripts/run: the router stopped at start")
    assert "SWITCHBOARD_PORT_BASE" in err
    assert f"127.0.0.1:{base}" in err


def test_cluster_starts_redis_and_two_routers_that_share_the_shards() -> None:
    base = free_base()
    with run_script(base, "--cluster") as process:
        text = greeting(process)
        assert f"Redis at redis://127.0.0.1:{base + 20}" in text, text
        assert f"http://127.0.0.1:{base + 110}/" in text
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{base + 10}/api/cluster", timeout=5) as reply:
                cluster = json.load(reply)
            if sum(1 for router in cluster["routers"] if router["live"]) == 2:
                break
            time.sleep(0.2)
        assert sum(1 for router in cluster["routers"] if router["live"]) == 2, cluster
        assert all(shard["owner"] for shard in cluster["shards"]), cluster
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=30)
    assert "stopped" in out


def test_run_refuses_an_argument_it_does_not_know() -> None:
    done = subprocess.run(["scripts/run", "--bogus"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert (
        done.stderr.strip().splitlines()[-1]
        == "scripts/run: unknown argument --bogus; the only one is --cluster"
    )
