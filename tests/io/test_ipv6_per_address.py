"""Per-address limits count an IPv6 /64 as one address: one host holds a whole /64, so counting exact
addresses would let it walk around ``--max-connections-per-ip``.

The router, the WebSocket edge and 200 clients run in a network namespace this test creates, where
``fd5b::/64`` is local: every client connects from an address of its own in that /64.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

from tests.io.harness import ROOT, RouterProcess, WebSocketEdgeProcess, running

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and iproute2 for a namespace"
    ),
]

PREFIX = "fd5b::"
EDGE_ADDRESS = f"{PREFIX}1"
CLIENTS = 200
PER_ADDRESS = 5

CLIENT_SCRIPT = textwrap.dedent(
    """
    import collections, json, socket, sys
    port, count = int(sys.argv[1]), int(sys.argv[2])
    request = (
        "GET / HTTP/1.1\\r\\nHost: [{edge}]:{{port}}\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade\\r\\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\\r\\nSec-WebSocket-Version: 13\\r\\n"
        "Sec-WebSocket-Protocol: switchboard.v1\\r\\n\\r\\n"
    ).format(port=port).encode()
    statuses, held = collections.Counter(), []
    for n in range(count):
        client = socket.socket(socket.AF_INET6)
        client.settimeout(10)
        client.bind(("{prefix}1:%x" % (n + 1), 0))
        client.connect(("{edge}", port))
        client.sendall(request)
        statuses[client.recv(64).split(b" ")[1].decode()] += 1
        held.append(client)
    print(json.dumps(statuses))
    """
).format(edge=EDGE_ADDRESS, prefix=PREFIX)


@pytest.fixture
def namespace() -> Iterator[str]:
    name = f"sb-{secrets.token_hex(4)}"
    steps = [
        ["ip", "netns", "add", name],
        ["ip", "-n", name, "link", "set", "lo", "up"],
        ["ip", "-n", name, "-6", "addr", "add", f"{EDGE_ADDRESS}/128", "dev", "lo", "nodad"],
        ["ip", "-n", name, "-6", "route", "add", "local", f"{PREFIX}/64", "dev", "lo"],
        ["ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv6.ip_nonlocal_bind=1"],
    ]
    try:
        for step in steps:
            subprocess.run(step, check=True, capture_output=True, timeout=10)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


class NamespacedRouter(RouterProcess):
    def __init__(self, namespace: str) -> None:
        super().__init__()
        self.namespace = namespace

    def command(self) -> list[str]:
        return ["ip", "netns", "exec", self.namespace, *super().command()]


class NamespacedEdge(WebSocketEdgeProcess):
    def __init__(self, router: NamespacedRouter, extra_args: list[str]) -> None:
        super().__init__(router, extra_args)
        self.namespace = router.namespace

    def command(self) -> list[str]:
        return ["ip", "netns", "exec", self.namespace, *super().command()]


def test_two_hundred_addresses_of_one_slash_64_count_as_one(namespace: str) -> None:
    edge_args = ["--host", EDGE_ADDRESS, "--max-connections-per-ip", str(PER_ADDRESS)]
    with (
        running(NamespacedRouter(namespace)) as router,
        running(NamespacedEdge(router, edge_args)) as edge,
    ):
        port = edge.announced["port"]
        clients = subprocess.run(
            ["ip", "netns", "exec", namespace, sys.executable, "-c", CLIENT_SCRIPT, str(port), str(CLIENTS)],
            cwd=ROOT,
            capture_output=True,
            timeout=60,
            check=True,
        )
    statuses = json.loads(clients.stdout)
    assert statuses == {"101": PER_ADDRESS, "429": CLIENTS - PER_ADDRESS}
