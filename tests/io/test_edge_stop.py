"""An edge whose router never answers: it says so in its log, and SIGTERM or SIGINT stops it at once.

The router's control and fan-out ports are held by a socket that is bound and never listens, so
the edge's connections are refused for as long as the test runs and no other program can answer.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.io.harness import ROOT, eventually

pytestmark = pytest.mark.timeout(60)

EDGE_MODULES = ("edges.websocket", "edges.webrtc")


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """A loopback TCP endpoint that refuses every connection."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield f"tcp://127.0.0.1:{held.getsockname()[1]}"


@pytest.mark.parametrize("module", EDGE_MODULES)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_an_edge_waiting_for_its_router_says_so_and_stops_on_a_signal(
    module: str, signum: signal.Signals, silent_endpoint: str, tmp_path: Path
) -> None:
    log = tmp_path / "edge.log"
    command = [
        sys.executable, "-m", module, "--announce", "--port", "0", "--heartbeat-interval", "0.2",
        "--control", silent_endpoint, "--xpub", silent_endpoint,
    ]  # fmt: skip
    with log.open("wb") as stderr:
        edge = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr)
    try:
        await eventually(lambda: "no welcome from the router" in log.read_text(), timeout=20)
        edge.send_signal(signum)
        assert edge.wait(timeout=5) == 0, log.read_text()
        assert edge.stdout is not None
        assert edge.stdout.read() == b"", "never welcomed: nothing announced"
    finally:
        if edge.poll() is None:
            edge.kill()
            edge.wait()
        if edge.stdout is not None:
            edge.stdout.close()
