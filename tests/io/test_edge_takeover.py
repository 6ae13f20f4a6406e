"""No one takes over a live edge: a DEALER that claims a live edge's id at the real router's control
port, with its routing id or only in ``hello``, with Curve or without, is refused
(``edge_id_in_use``) and counted, and the real edge keeps its clients and their data."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import zmq

from router.curve import CurveClient, write_key_pair
from router.wire import Error, Hello, Welcome, decode_router_message, encode_control
from tests.io.harness import RouterProcess, WebSocketEdgeProcess, connected_socket, push_socket, running
from tests.io.metrics_scrape import scrape
from tests.io.test_websocket_edge import Client, flowing, open_client

pytestmark = pytest.mark.timeout(90)

TOPIC = "/cameras/front"
CURVE_CONFIG = """
[security]
curve_secret_key_file = "keys/router.key_secret"
producer_keys_dir = "allowed/producers"
edge_keys_dir = "allowed/edges"
"""


async def claim(endpoint: str, edge_id: str, routing_id: bytes | None, curve: CurveClient | None) -> Error:
    """Say ``hello`` as ``edge_id`` until the router answers; its answer must be an error."""
    with connected_socket(zmq.DEALER, endpoint, curve, routing_id) as sock:
        hello = encode_control(Hello(edge_id=edge_id, protocol="websocket", session="a guess"))
        async with asyncio.timeout(10):
            while not sock.poll(100):
                sock.send(hello, zmq.NOBLOCK)
                await asyncio.sleep(0.1)
        reply = decode_router_message(sock.recv())
    assert not isinstance(reply, Welcome), "the router welcomed a second connection for a live edge"
    assert isinstance(reply, Error), reply
    return reply


async def keeps_its_client(router: RouterProcess, client: Client, producer: CurveClient | None) -> None:
    """The edge's client still gets data, and the router still lists it on that edge."""
    with push_socket(router.endpoints["pull"], curve=producer) as push:
        await flowing(client, push, TOPIC)
    edge_id = client.client_id.rpartition(".")[0]
    metrics = await scrape(router.endpoints["metrics"])
    assert metrics("switchboard_router_clients", edge=edge_id, protocol="websocket") == 1


async def attack(
    router: RouterProcess,
    edge: WebSocketEdgeProcess,
    attacker: CurveClient | None = None,
    producer: CurveClient | None = None,
) -> None:
    """Two claims on the edge's id (with its routing id, and with a routing id of the router's
    choosing) from a DEALER with the ``attacker``'s keys; each refused, the edge untouched (data
    from a ``producer`` still reaches its client)."""
    client = await open_client(edge)
    try:
        assert (await client.request("subscribe", topic=TOPIC))["op"] == "subscribed"
        edge_id = client.client_id.rpartition(".")[0]
        for routing_id in (edge_id.encode(), None):
            refused = await claim(router.endpoints["control"], edge_id, routing_id, attacker)
            assert refused.code == "edge_id_in_use", refused
        await asyncio.sleep(1.5)
        await keeps_its_client(router, client, producer)
        metrics = await scrape(router.endpoints["metrics"])
        hello_refused = {"request": "hello", "code": "edge_id_in_use"}
        assert metrics("switchboard_router_refused_requests_total", **hello_refused) == 2
    finally:
        await client.ws.close()


async def test_without_curve_a_live_edge_keeps_its_id() -> None:
    with (
        running(RouterProcess(["--metrics", "127.0.0.1:0"])) as router,
        running(WebSocketEdgeProcess(router)) as edge,
    ):
        await attack(router, edge)


async def test_with_curve_another_edge_key_cannot_take_an_edge(tmp_path: Path) -> None:
    keys, allowed = tmp_path / "keys", tmp_path / "allowed"
    write_key_pair(keys, "router")
    for name, role in (("edge", "edges"), ("other", "edges"), ("producer", "producers")):
        public, _ = write_key_pair(keys, name)
        (allowed / role).mkdir(parents=True, exist_ok=True)
        (allowed / role / public.name).write_bytes(public.read_bytes())
    (tmp_path / "router.toml").write_text(CURVE_CONFIG, encoding="utf-8")
    curve_args = ["--curve-secret-key-file", str(keys / "edge.key_secret")]
    curve_args += ["--curve-router-key-file", str(keys / "router.key")]
    other = CurveClient.from_files(keys / "other.key_secret", keys / "router.key")
    producer = CurveClient.from_files(keys / "producer.key_secret", keys / "router.key")
    config = ["--config", str(tmp_path / "router.toml"), "--metrics", "127.0.0.1:0"]
    with running(RouterProcess(config)) as router, running(WebSocketEdgeProcess(router, curve_args)) as edge:
        await attack(router, edge, attacker=other, producer=producer)
