"""CurveZMQ on the real router: allowed producers and edges work end to end; a producer or an
edge without an allowed key, or without Curve at all, gets not a single message through."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import zmq
from websockets.asyncio.client import connect

from router.curve import (
    CURVE_FAILED,
    CURVE_REFUSED,
    HANDSHAKE_FAILURES,
    CurveClient,
    handshake_failure,
    read_key_pair,
    read_public_key,
    write_key_pair,
)
from router.wire import Error, RegisterClient, Registered, SubscribeOk
from tests.io.harness import (
    ROOT,
    RouterProcess,
    TestEdge,
    WebSocketEdgeProcess,
    eventually,
    push_socket,
    running_router,
)

pytestmark = pytest.mark.timeout(90)

TOPIC = "/secure/readings"
SENT = 100
PRODUCERS = ROOT / "examples" / "producers"
CONFIG = """
[security]
curve_secret_key_file = "keys/router.key_secret"
producer_keys_dir = "allowed/producers"
edge_keys_dir = "allowed/edges"
observer_keys_dir = "allowed/observers"
"""


@dataclass
class Keys:
    """Key pairs made by ``write_key_pair``; ``producer``, ``edge`` and ``observer`` are in the
    allow-lists of their roles."""

    directory: Path
    allowed: Path

    def secret(self, name: str) -> Path:
        return self.directory / f"{name}.key_secret"

    @property
    def router_public(self) -> Path:
        return self.directory / "router.key"

    def client(self, name: str) -> CurveClient:
        return CurveClient.from_files(self.secret(name), self.router_public)

    def client_args(self, name: str) -> list[str]:
        secret, router = str(self.secret(name)), str(self.router_public)
        return ["--curve-secret-key-file", secret, "--curve-router-key-file", router]

    def allow(self, name: str, role: str) -> None:
        shutil.copy(self.directory / f"{name}.key", self.allowed / f"{role}s")


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    made = Keys(tmp_path / "keys", tmp_path / "allowed")
    for name in ("router", "producer", "edge", "observer", "intruder", "late"):
        write_key_pair(made.directory, name)
    for role in ("producer", "edge", "observer"):
        (made.allowed / f"{role}s").mkdir(parents=True)
        made.allow(role, role)
    (tmp_path / "router.toml").write_text(CONFIG, encoding="utf-8")
    return made


@pytest.fixture
def router(tmp_path: Path, keys: Keys) -> Iterator[RouterProcess]:
    with running_router(["--config", str(tmp_path / "router.toml")]) as process:
        yield process


@pytest.fixture
async def edge(router: RouterProcess, keys: Keys) -> AsyncIterator[TestEdge]:
    """An allowed edge with one client subscribed to TOPIC."""
    async with TestEdge(router.endpoints, curve=keys.client("edge")) as test_edge:
        assert isinstance(await test_edge.register("watcher"), Registered)
        assert isinstance(await test_edge.subscribe("watcher", TOPIC), SubscribeOk)
        yield test_edge


@pytest.fixture
def producer(router: RouterProcess, keys: Keys) -> Iterator[zmq.Socket[bytes]]:
    with push_socket(router.endpoints["pull"], curve=keys.client("producer")) as sock:
        yield sock


# ---------------------------------------------------------------- helpers


async def flowing(edge: TestEdge, producer: zmq.Socket[bytes]) -> None:
    """Probe TOPIC until a probe reaches the edge, then forget every probe."""
    for _ in range(200):
        producer.send_multipart([TOPIC.encode(), b"probe"])
        try:
            await edge.next_message(timeout=0.05)
        except TimeoutError:
            continue
        await marker(edge, producer, b"probes done")
        return
    raise AssertionError("nothing reached the edge")


async def marker(edge: TestEdge, producer: zmq.Socket[bytes], payload: bytes) -> list[bytes]:
    """Send ``payload`` on TOPIC; the payloads that reach the edge before it (the allowed
    producer's messages arrive in order, so anything else would be before it too)."""
    producer.send_multipart([TOPIC.encode(), payload])
    before: list[bytes] = []
    while (received := (await edge.next_message())[1]) != payload:
        before.append(received)
    return before


async def counted(edge: TestEdge, reason: str, at_least: int) -> bool:
    """Whether the router's ``drops`` count ``reason`` at least ``at_least`` times."""
    drops = (await edge.stats())["drops"]
    assert isinstance(drops, dict)
    return bool(drops.get(reason, 0) >= at_least)


async def messages_in(edge: TestEdge) -> int:
    count = (await edge.stats())["messages_in"]
    assert isinstance(count, int)
    return count


@contextlib.contextmanager
def raw_socket(
    kind: int, endpoint: str, curve: CurveClient | None = None
) -> Iterator[tuple[zmq.Socket[bytes], zmq.Socket[bytes]]]:
    """A socket connected to ``endpoint``, and a monitor of how its handshakes end."""
    context = zmq.Context()
    sock = context.socket(kind)
    sock.linger = 0
    if curve is not None:
        curve.secure(sock)
    monitor = sock.get_monitor_socket(HANDSHAKE_FAILURES | zmq.EVENT_HANDSHAKE_SUCCEEDED)
    sock.connect(endpoint)
    try:
        yield sock, monitor
    finally:
        monitor.close(linger=0)
        sock.close()
        context.term()


def offer(sock: zmq.Socket[bytes], label: bytes) -> None:
    """Offer SENT messages on TOPIC without blocking: a socket whose handshake failed may have no
    connection left to queue them on, and drops them (``zmq.Again``)."""
    for index in range(SENT):
        with contextlib.suppress(zmq.Again):
            sock.send_multipart([TOPIC.encode(), b"%s %d" % (label, index)], zmq.NOBLOCK)


async def handshake_end(monitor: zmq.Socket[bytes]) -> str:
    """``"ok"``, or the drop reason of the first handshake the socket's peer ended."""
    await eventually(lambda: monitor.poll(0))
    frames = monitor.recv_multipart()
    if int.from_bytes(frames[0][:2], sys.byteorder) == zmq.EVENT_HANDSHAKE_SUCCEEDED:
        return "ok"
    return handshake_failure(frames)[0]


# ---------------------------------------------------------------- allowed keys


async def test_an_allowed_producer_reaches_a_websocket_client_through_an_allowed_edge(
    router: RouterProcess, keys: Keys
) -> None:
    ws_edge = WebSocketEdgeProcess(router, keys.client_args("edge"))
    ws_edge.start()
    try:
        async with connect(ws_edge.url, subprotocols=["switchboard.v1"], proxy=None) as ws:  # type: ignore[list-item]
            await ws.send(json.dumps({"op": "connect"}))
            assert json.loads(await ws.recv())["op"] == "connected"
            await ws.send(json.dumps({"op": "subscribe", "id": 1, "topic": TOPIC}))
            assert json.loads(await ws.recv())["op"] == "subscribed"
            publish = subprocess.Popen(
                [sys.executable, "-m", "switchboard", "publish", TOPIC, "hello", "--count", "400",
                 "--rate", "40", "--pull", router.endpoints["pull"], *keys.client_args("producer")],
                cwd=ROOT,
            )  # fmt: skip
            try:
                frames = [await ws.recv() for _ in range(3)]
            finally:
                publish.kill()
                publish.wait()
    finally:
        ws_edge.stop()
    assert [frame[14:] for frame in frames] == [b"hello"] * 3


# ---------------------------------------------------------------- refused keys, no Curve


@pytest.mark.parametrize("key", ["intruder", "edge", "observer"])
@pytest.mark.parametrize(("socket_name", "kind"), [("pull", zmq.PUSH), ("xsub", zmq.PUB)])
async def test_a_producer_with_a_key_not_allowed_delivers_nothing(
    router: RouterProcess,
    keys: Keys,
    edge: TestEdge,
    producer: zmq.Socket[bytes],
    socket_name: str,
    kind: int,
    key: str,
) -> None:
    """A key in no allow-list, or of another role: an edge's or observer's key cannot publish."""
    await flowing(edge, producer)
    before = await messages_in(edge)
    with raw_socket(kind, router.endpoints[socket_name], keys.client(key)) as (intruder, monitor):
        offer(intruder, b"intruder")
        assert await handshake_end(monitor) == CURVE_REFUSED
        await eventually(lambda: counted(edge, CURVE_REFUSED, 1))
        assert await marker(edge, producer, b"end") == []
    assert await messages_in(edge) == before + 1


async def test_producers_and_edges_without_curve_get_nothing(
    router: RouterProcess, edge: TestEdge, producer: zmq.Socket[bytes]
) -> None:
    await flowing(edge, producer)
    before = await messages_in(edge)
    endpoints = router.endpoints
    with (
        raw_socket(zmq.PUSH, endpoints["pull"]) as (push, push_monitor),
        raw_socket(zmq.PUB, endpoints["xsub"]) as (pub, pub_monitor),
        raw_socket(zmq.SUB, endpoints["xpub"]) as (sub, sub_monitor),
        raw_socket(zmq.DEALER, endpoints["control"]) as (dealer, dealer_monitor),
    ):
        sub.subscribe(TOPIC.encode() + b"\0")
        with contextlib.suppress(zmq.Again):
            dealer.send(json.dumps({"type": "hello"}).encode(), zmq.NOBLOCK)
        offer(push, b"plain")
        offer(pub, b"plain")
        for monitor in (push_monitor, pub_monitor, sub_monitor, dealer_monitor):
            assert await handshake_end(monitor) == CURVE_FAILED
        await eventually(lambda: counted(edge, CURVE_FAILED, 4))
        assert await marker(edge, producer, b"end") == []
        assert (sub.poll(0), dealer.poll(0)) == (0, 0)
    assert await messages_in(edge) == before + 1
    stats = await edge.stats()
    assert (stats["edges"], stats["clients"]) == (1, 1)


@pytest.mark.parametrize("key", ["intruder", "producer"])
async def test_an_edge_with_a_key_not_allowed_cannot_register_or_receive(
    router: RouterProcess, keys: Keys, edge: TestEdge, producer: zmq.Socket[bytes], key: str
) -> None:
    """A key in no allow-list, or a producer's: a producer's key cannot act as an edge."""
    await flowing(edge, producer)
    intruder = TestEdge(router.endpoints, curve=keys.client(key), welcome_timeout=0)
    async with intruder:
        intruder.link.watch(TOPIC)
        await eventually(lambda: counted(edge, CURVE_REFUSED, 2))
        register = RegisterClient(request_id=intruder.link.next_request_id(), client_id="sneaky")
        with pytest.raises(ConnectionError):
            await intruder.request(register)
        assert await marker(edge, producer, b"end") == []
        assert not intruder.link.welcomed.is_set()
        assert intruder.drain() == []
    stats = await edge.stats()
    assert (stats["edges"], stats["clients"]) == (1, 1)


async def test_an_observer_key_reads_stats_but_cannot_register_a_client(
    router: RouterProcess, keys: Keys, edge: TestEdge
) -> None:
    async with TestEdge(router.endpoints, curve=keys.client("observer")) as observer:
        assert (await observer.stats())["clients"] == 1
        refused = await observer.register("nosy")
        assert isinstance(refused, Error)
        assert refused.code == "forbidden"
        refused = await observer.subscribe("edge-client", TOPIC)
        assert isinstance(refused, Error)
        assert refused.code == "forbidden"
        stats = await edge.stats()
        assert (stats["edges"], stats["clients"]) == (2, 1), "the observer counts as an edge, without clients"


async def test_tap_with_an_observer_key_shows_what_clients_watch(
    router: RouterProcess, keys: Keys, edge: TestEdge, producer: zmq.Socket[bytes]
) -> None:
    tap = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "switchboard", "tap", TOPIC, "--count", "20",
        "--control", router.endpoints["control"], "--xpub", router.endpoints["xpub"],
        *keys.client_args("observer"),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with asyncio.timeout(30):
            while tap.returncode is None:
                producer.send_multipart([TOPIC.encode(), b"watched"])
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(tap.wait(), 0.1)
        out, err = await tap.communicate()
    finally:
        if tap.returncode is None:
            tap.kill()
            await tap.wait()
    assert tap.returncode == 0, err
    assert out.decode().count(f"{TOPIC} epoch=") == 20
    assert "refused: forbidden" in err.decode()
    assert err.decode().count("an observer key registers no client") == 1


async def test_a_key_added_to_the_allow_list_is_admitted_after_sighup(
    router: RouterProcess, keys: Keys, edge: TestEdge
) -> None:
    pull = router.endpoints["pull"]
    with raw_socket(zmq.PUSH, pull, keys.client("late")) as (_, monitor):
        assert await handshake_end(monitor) == CURVE_REFUSED
    keys.allow("late", "producer")
    assert router.process is not None
    router.process.send_signal(signal.SIGHUP)
    for _ in range(100):
        with raw_socket(zmq.PUSH, pull, keys.client("late")) as (late, monitor):
            if await handshake_end(monitor) == "ok":
                late.send_multipart([TOPIC.encode(), b"late"])
                assert (await edge.next_message())[1] == b"late"
                return
    raise AssertionError("the added key was never admitted")


# ---------------------------------------------------------------- producers in C and JavaScript


def curve_environment(keys: Keys, name: str) -> dict[str, str]:
    """The variables that make examples/producers Curve clients, read from the key files."""
    public, secret = read_key_pair(keys.secret(name))
    return {
        **os.environ,
        "SWITCHBOARD_CURVE_ROUTER_KEY": read_public_key(keys.router_public).decode(),
        "SWITCHBOARD_CURVE_PUBLIC_KEY": public.decode(),
        "SWITCHBOARD_CURVE_SECRET_KEY": secret.decode(),
    }


@pytest.fixture
def c_producer(tmp_path: Path) -> Path:
    binary = tmp_path / "telemetry"
    compiler = shutil.which("cc") or "gcc"
    subprocess.run([compiler, str(PRODUCERS / "telemetry.c"), "-lzmq", "-o", str(binary)], check=True)
    return binary


async def test_c_and_node_producers_with_curve(
    router: RouterProcess, keys: Keys, edge: TestEdge, c_producer: Path
) -> None:
    node = shutil.which("node")
    assert node is not None, "scripts/test installs Node.js"
    for lang, command in (("c", [str(c_producer)]), ("js", [node, "telemetry.mjs"])):
        topic = f"/secure/{lang}"
        assert isinstance(await edge.subscribe("watcher", topic), SubscribeOk)
        child = subprocess.Popen(
            [*command, router.endpoints["pull"], topic, "200"],
            cwd=PRODUCERS,
            env=curve_environment(keys, "producer"),
        )
        try:
            received = [message async for message in payloads_on(edge, topic, 3)]
        finally:
            child.kill()
            child.wait()
        assert {json.loads(payload)["lang"] for payload in received} == {lang}


async def payloads_on(edge: TestEdge, topic: str, count: int) -> AsyncIterator[bytes]:
    """The payloads of the next ``count`` messages on ``topic``, skipping other topics."""
    while count:
        meta, payload = await edge.next_message()
        if meta.topic == topic.encode():
            count -= 1
            yield payload


async def test_the_demand_socket_tells_producer_keys_and_refuses_others(tmp_path: Path, keys: Keys) -> None:
    config = ["--config", str(tmp_path / "router.toml"), "--demand", "tcp://127.0.0.1:0"]
    with running_router(config) as router:
        async with TestEdge(router.endpoints, curve=keys.client("edge")) as edge:
            assert isinstance(await edge.register("watcher"), Registered)
            assert isinstance(await edge.subscribe("watcher", TOPIC, max_rate=3), SubscribeOk)
            for name, expected in (
                ("producer", "ok"),
                ("edge", "curve_refused"),
                ("intruder", "curve_refused"),
            ):
                with raw_socket(zmq.SUB, router.endpoints["demand"], keys.client(name)) as (sock, monitor):
                    sock.subscribe(b"")
                    assert await handshake_end(monitor) == expected, name
                    told = await asyncio.to_thread(sock.poll, 2000 if expected == "ok" else 500)
                    assert bool(told) is (expected == "ok"), name
                    if told:
                        assert sock.recv_multipart() == [TOPIC.encode(), b"3"]
