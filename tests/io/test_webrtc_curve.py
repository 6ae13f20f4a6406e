"""The WebRTC edge reaches a router that has CurveZMQ on, with the edge's keys (docs/security.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.curve import CurveClient, write_key_pair
from tests.io.harness import push_socket, running_router
from tests.io.rtc_client import RtcClient, WebRtcEdgeProcess, loopback_only

pytestmark = pytest.mark.timeout(60)

CONFIG = """
[security]
curve_secret_key_file = "keys/router.key_secret"
producer_keys_dir = "allowed/producers"
edge_keys_dir = "allowed/edges"
"""


async def test_a_webrtc_client_gets_data_through_an_allowed_edge(tmp_path: Path) -> None:
    keys, allowed = tmp_path / "keys", tmp_path / "allowed"
    for name in ("router", "edge", "producer"):
        write_key_pair(keys, name)
    for name in ("edge", "producer"):
        (allowed / f"{name}s").mkdir(parents=True)
        (allowed / f"{name}s" / f"{name}.key").write_bytes((keys / f"{name}.key").read_bytes())
    (tmp_path / "router.toml").write_text(CONFIG, encoding="utf-8")
    curve_args = ["--curve-secret-key-file", str(keys / "edge.key_secret")]
    curve_args += ["--curve-router-key-file", str(keys / "router.key")]
    loopback_only()
    with running_router(["--config", str(tmp_path / "router.toml")]) as router:
        edge = WebRtcEdgeProcess(router, curve_args)
        edge.start()
        client = RtcClient(edge.base_url)
        producer_keys = CurveClient.from_files(keys / "producer.key_secret", keys / "router.key")
        try:
            assert (await client.connect())[0] == 201
            assert (await client.control_message())["op"] == "connected"
            assert (await client.request("subscribe", topic="/secure/rtc"))["op"] == "subscribed"
            with push_socket(router.endpoints["pull"], curve=producer_keys) as push:
                for _ in range(100):
                    push.send_multipart([b"/secure/rtc", b"sealed"])
                    try:
                        _, _, _, payload = await client.data(timeout=0.1)
                    except TimeoutError:
                        continue
                    assert payload == b"sealed"
                    break
                else:
                    raise AssertionError("nothing arrived")
        finally:
            await client.close()
            edge.stop()
