"""Batched delivery (``docs/protocol.md`` 4.4.5) through the real router and WebSocket edge: a
``websockets`` client that asks for batches reads every record of a burst, in order, in fewer
binary messages than frames; a client that does not ask gets one frame per message as before."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Iterator

import pytest
import zmq

from edges.core.client_wire import split_batch
from tests.io.harness import RouterProcess, WebSocketEdgeProcess, running
from tests.io.test_websocket_edge import Client, flowing, open_client

pytestmark = pytest.mark.timeout(90)

TOPIC = "/ws/batched"
DATA = struct.Struct("!BBIQ")
BURST = 2000
MOST = 4096
"""The edge's --batch-max-bytes."""


@pytest.fixture
def edge(router: RouterProcess) -> Iterator[WebSocketEdgeProcess]:
    with running(WebSocketEdgeProcess(router, ["--batch-max-bytes", str(MOST)])) as process:
        yield process


async def read_burst(client: Client, last: bytes) -> tuple[list[bytes], int]:
    """The payloads of the data frames up to the one carrying ``last``, and the binary messages
    they came in."""
    payloads: list[bytes] = []
    messages = 0
    async with asyncio.timeout(20):
        while not payloads or payloads[-1] != last:
            message = await client.ws.recv()
            if isinstance(message, str):
                continue
            messages += 1
            assert isinstance(message, bytes)
            frames = split_batch(message)
            assert len(message) <= MOST or len(frames) == 1, f"a batch of {len(message)} bytes"
            for frame in frames:
                if frame[0] == 0x01:
                    payloads.append(frame[DATA.size :])
    return payloads, messages


async def test_a_batching_client_gets_every_frame_of_a_burst_in_fewer_messages(
    edge: WebSocketEdgeProcess, push: zmq.Socket[bytes]
) -> None:
    client = await open_client(edge, {"batch": True})
    assert client.connected["batch"] is True
    plain = await open_client(edge, {"batch": False})
    assert "batch" not in plain.connected
    for each in (client, plain):
        assert (await each.request("subscribe", topic=TOPIC))["op"] == "subscribed"
    await flowing(plain, push, TOPIC)
    sent = [b"m%d" % n for n in range(BURST)]
    for payload in sent:
        push.send_multipart([TOPIC.encode(), payload])
    payloads, messages = await read_burst(client, sent[-1])
    assert [p for p in payloads if p != b"probe"] == sent
    assert messages < BURST, f"{BURST} frames came in {messages} messages: nothing was batched"
    plain_frames: list[bytes] = []
    async with asyncio.timeout(20):
        while not plain_frames or plain_frames[-1] != sent[-1]:
            message = await plain.ws.recv()
            if isinstance(message, bytes) and message[0] == 0x01:
                plain_frames.append(message[DATA.size :])
    assert [p for p in plain_frames if p != b"probe"] == sent, "a client without batches gets frames"
    for each in (client, plain):
        await each.ws.close()
