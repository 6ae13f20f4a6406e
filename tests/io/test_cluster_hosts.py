"""Cluster mode across hosts: Redis, two routers, a WebSocket edge with its client, and a producer,
each in a network namespace of its own on one bridged LAN that this test makes, with Curve on every
ZeroMQ link.

The producer PUSHes every topic to the first router only, so the second router's topics cross from
host to host twice (producer to the first router, which passes them on to their owner); the edge is
given the first router and links to the second by itself. Every message reaches the client.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from router.curve import Role, write_key_pair
from tests.io.harness import ROOT, RouterProcess, WebSocketEdgeProcess, running

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("redis-server") is None,
        reason="needs root, iproute2 and redis-server to make hosts of network namespaces",
    ),
]

LAN = "10.77.0"
HOSTS = {"redis": 2, "first": 3, "second": 4, "producer": 5, "edge": 6}
TOPICS = [f"/hosts/t{n}" for n in range(16)]
MESSAGES = 10
PASSWORD = secrets.token_hex(8)

CLIENT_SCRIPT = textwrap.dedent(
    """
    import asyncio, contextlib, json, sys
    from websockets.asyncio.client import connect

    async def subscribe(ws, topics):
        channels = {}
        for n, topic in enumerate(topics):
            await ws.send(json.dumps({"op": "subscribe", "id": n + 1, "topic": topic}))
        while len(channels) < len(topics):
            reply = json.loads(await ws.recv())
            if reply.get("op") == "subscribed":
                channels[reply["channel"]] = reply["topic"]
        return channels

    async def receive(ws, channels, got, count):
        while any(len(payloads) < count for payloads in got.values()):
            frame = await ws.recv()
            if isinstance(frame, bytes) and frame[0] == 0x01:
                got[channels[int.from_bytes(frame[2:6], "big")]].append(frame[14:].decode())

    async def main(url, topics, count):
        got = {topic: [] for topic in topics}
        async with connect(url, subprotocols=["switchboard.v1"], proxy=None) as ws:
            await ws.send(json.dumps({"op": "connect"}))
            await ws.recv()
            channels = await asyncio.wait_for(subscribe(ws, topics), 30)
            print("ready", flush=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(receive(ws, channels, got, count), 60)
        print(json.dumps(got), flush=True)

    asyncio.run(main(sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])))
    """
)

PRODUCER_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from router.curve import CurveClient
    from router.producer import Producer

    pull, topics, count = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
    curve = CurveClient.from_files(Path(sys.argv[4]), Path(sys.argv[5]))
    with Producer(pull, curve=curve) as producer:
        for n in range(count):
            for topic in topics:
                producer.publish(topic, str(n).encode())
            time.sleep(0.05)
    """
)


@pytest.fixture
def hosts() -> Iterator[dict[str, str]]:
    """One namespace per host, each with ``eth0`` at ``LAN.N`` on a bridge in a namespace of its own."""
    prefix = f"sb{secrets.token_hex(3)}"
    lan = f"{prefix}-lan"
    names = {host: f"{prefix}-{host}" for host in HOSTS}
    steps = [
        ["ip", "netns", "add", lan],
        ["ip", "-n", lan, "link", "add", "br0", "type", "bridge"],
        ["ip", "-n", lan, "link", "set", "br0", "up"],
    ]
    for host, number in HOSTS.items():
        name = names[host]
        steps += [
            ["ip", "netns", "add", name],
            ["ip", "-n", name, "link", "set", "lo", "up"],
            [
                "ip",
                "-n",
                lan,
                "link",
                "add",
                f"v{number}",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                name,
            ],
            ["ip", "-n", lan, "link", "set", f"v{number}", "master", "br0", "up"],
            ["ip", "-n", name, "addr", "add", f"{LAN}.{number}/24", "dev", "eth0"],
            ["ip", "-n", name, "link", "set", "eth0", "up"],
        ]
    try:
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True, timeout=10)
            if done.returncode != 0:
                pytest.skip(f"cannot make network namespaces here: {' '.join(step)}: {done.stderr.strip()}")
        yield names
    finally:
        for name in [*names.values(), lan]:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


def in_namespace(namespace: str, command: list[str]) -> list[str]:
    return ["ip", "netns", "exec", namespace, *command]


class HostRouter(RouterProcess):
    def __init__(self, namespace: str, address: str, config: Path) -> None:
        super().__init__(["--config", str(config)])
        self.namespace = namespace
        self.wanted = dict.fromkeys(self.wanted, f"tcp://{address}:0")

    def command(self) -> list[str]:
        return in_namespace(self.namespace, super().command())


class HostEdge(WebSocketEdgeProcess):
    def __init__(self, namespace: str, router: RouterProcess, extra_args: list[str]) -> None:
        super().__init__(router, extra_args)
        self.namespace = namespace

    def command(self) -> list[str]:
        return in_namespace(self.namespace, super().command())


def make_keys(directory: Path) -> dict[str, Path]:
    """The routers' one key pair (no role: another router passes messages on with it, as a
    producer), an edge's and a producer's, and the two allow-lists."""
    router_public, router_secret = write_key_pair(directory / "keys", "router")
    _, edge_secret = write_key_pair(directory / "keys", "edge", Role.EDGE)
    producer_public, producer_secret = write_key_pair(directory / "keys", "producer", Role.PRODUCER)
    edges, producers = directory / "edges", directory / "producers"
    edges.mkdir()
    producers.mkdir()
    shutil.copy(directory / "keys" / "edge.key", edges)
    shutil.copy(producer_public, producers)
    shutil.copy(router_public, producers)
    return {
        "router_public": router_public,
        "router_secret": router_secret,
        "edge_secret": edge_secret,
        "producer_secret": producer_secret,
        "edges": edges,
        "producers": producers,
    }


def router_config(directory: Path, redis_url: str, keys: dict[str, Path]) -> Path:
    path = directory / "router.toml"
    path.write_text(
        f'[cluster]\nurl = "{redis_url}"\nshards = 32\n'
        f'[security]\ncurve_secret_key_file = "{keys["router_secret"]}"\n'
        f'producer_keys_dir = "{keys["producers"]}"\nedge_keys_dir = "{keys["edges"]}"\n',
        encoding="utf-8",
    )
    return path


def test_every_message_crosses_the_hosts_of_a_cluster_with_curve_on(
    hosts: dict[str, str], tmp_path: Path
) -> None:
    keys = make_keys(tmp_path)
    redis_port = random.randrange(20_000, 60_000)
    address = ["--port", str(redis_port), "--bind", f"{LAN}.2", "--requirepass", PASSWORD]
    redis = subprocess.Popen(
        in_namespace(hosts["redis"], ["redis-server", *address, "--save", "", "--appendonly", "no"]),
        stdout=subprocess.DEVNULL,
    )
    try:
        config = router_config(tmp_path, f"redis://:{PASSWORD}@{LAN}.2:{redis_port}", keys)
        first = HostRouter(hosts["first"], f"{LAN}.3", config)
        second = HostRouter(hosts["second"], f"{LAN}.4", config)
        curve = ["--curve-secret-key-file", str(keys["edge_secret"])]
        curve += ["--curve-router-key-file", str(keys["router_public"])]
        with running(first), running(second):
            edge = HostEdge(hosts["edge"], first, ["--host", f"{LAN}.6", *curve])
            with running(edge):
                received = deliver(hosts, keys, first, f"ws://{LAN}.6:{edge.announced['port']}/")
    finally:
        redis.terminate()
        redis.wait(timeout=10)
    assert received == {topic: [str(n) for n in range(MESSAGES)] for topic in TOPICS}


def deliver(hosts: dict[str, str], keys: dict[str, Path], first: RouterProcess, url: str) -> object:
    """Run the client in the edge's host until it is subscribed, then the producer in its own."""
    topics = json.dumps(TOPICS)
    client = subprocess.Popen(
        in_namespace(hosts["edge"], [sys.executable, "-c", CLIENT_SCRIPT, url, topics, str(MESSAGES)]),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert client.stdout is not None
        assert client.stdout.readline().strip() == "ready"
        producer = [sys.executable, "-c", PRODUCER_SCRIPT, first.endpoints["pull"], topics, str(MESSAGES)]
        producer += [str(keys["producer_secret"]), str(keys["router_public"])]
        subprocess.run(in_namespace(hosts["producer"], producer), cwd=ROOT, check=True, timeout=60)
        out, _ = client.communicate(timeout=90)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    return json.loads(out)
