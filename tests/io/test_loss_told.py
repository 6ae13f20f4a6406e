"""Every loss a client suffers is told to it, against the real router and WebSocket edge: the
router restarts (a restarted frame with the new epoch), and the router forgets the edge for a
while and takes its clients back (a not-received skip covers what was published meanwhile).

The client reads raw frames: data (0x01), skipped (0x02) and restarted (0x03)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import struct
from dataclasses import dataclass, field

import pytest
import zmq

from edges.core.client_wire import SkipReason, parse_restarted_frame, parse_skipped_frame
from tests.io.harness import RouterProcess, WebSocketEdgeProcess, push_socket, running
from tests.io.test_websocket_edge import Client, open_client

pytestmark = pytest.mark.timeout(90)

TOPIC = "/robot/odometry"
DATA_HEADER = struct.Struct("!BBIQ")


@dataclass
class Seen:
    """What a client read of one channel, in order."""

    frames: list[tuple[str, int, int]] = field(default_factory=list)
    """("data", offset, 0), ("skip", first, last) with the reasons in :attr:`reasons`, or
    ("restart", epoch, 0)."""
    reasons: list[SkipReason] = field(default_factory=list)

    def offsets(self) -> list[int]:
        return [offset for kind, offset, _ in self.frames if kind == "data"]


async def read_until(client: Client, seen: Seen, payload: bytes, timeout: float = 20.0) -> None:
    """Read frames into ``seen`` until a data frame carries ``payload``."""
    async with asyncio.timeout(timeout):
        while True:
            message = await client.ws.recv()
            if not isinstance(message, bytes):
                continue
            if message[0] == 0x01:
                _, _, _, offset = DATA_HEADER.unpack_from(message)
                seen.frames.append(("data", offset, 0))
                if message[DATA_HEADER.size :] == payload:
                    return
            elif message[0] == 0x02:
                skipped = parse_skipped_frame(message)
                seen.frames.append(("skip", skipped.first, skipped.last))
                seen.reasons.append(skipped.reasons)
            elif message[0] == 0x03:
                seen.frames.append(("restart", parse_restarted_frame(message)[1], 0))


async def publish_until(push: zmq.Socket[bytes], client: Client, seen: Seen, marker: bytes) -> None:
    """Publish numbered messages every 20 ms until ``marker``, sent then, reaches the client."""
    reader = asyncio.create_task(read_until(client, seen, marker))
    try:
        for count in range(1000):
            if reader.done():
                break
            push.send_multipart([TOPIC.encode(), b"m%d" % count])
            await asyncio.sleep(0.02)
            if count % 10 == 9:
                push.send_multipart([TOPIC.encode(), marker])
        await reader
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader


async def test_a_router_restart_reaches_the_client_as_a_restarted_frame() -> None:
    with running(RouterProcess()) as router, running(WebSocketEdgeProcess(router)) as edge:
        client = await open_client(edge)
        subscribed = await client.request("subscribe", topic=TOPIC)
        seen = Seen()
        with push_socket(router.endpoints["pull"]) as push:
            await publish_until(push, client, seen, b"before")
        router.stop()
        router.restart_on_same_ports()
        with push_socket(router.endpoints["pull"]) as push:
            await publish_until(push, client, seen, b"after")
        kinds = [kind for kind, _, _ in seen.frames]
        restart = kinds.index("restart")
        assert kinds.count("restart") == 1
        new_epoch = seen.frames[restart][1]
        assert new_epoch != subscribed["epoch"]
        before, after = seen.frames[:restart], seen.frames[restart + 1 :]
        assert after[0][0] in ("data", "skip"), "the restarted frame comes just before the new sequence"
        first_new = next(offset for kind, offset, _ in after if kind == "data")
        assert first_new < max(offset for kind, offset, _ in before if kind == "data")
        await client.ws.close()


async def test_messages_published_while_the_router_lost_the_edge_are_a_not_received_skip() -> None:
    with running(RouterProcess()) as router, running(WebSocketEdgeProcess(router)) as edge:
        client = await open_client(edge)
        assert (await client.request("subscribe", topic=TOPIC))["op"] == "subscribed"
        seen = Seen()
        with push_socket(router.endpoints["pull"]) as push:
            await publish_until(push, client, seen, b"before")
            assert edge.process is not None
            edge.process.send_signal(signal.SIGSTOP)
            try:
                for count in range(100):
                    push.send_multipart([TOPIC.encode(), b"while stopped %d" % count])
                    await asyncio.sleep(0.02)
            finally:
                edge.process.send_signal(signal.SIGCONT)
            await publish_until(push, client, seen, b"after")
        assert "restart" not in [kind for kind, _, _ in seen.frames]
        covered: set[int] = set()
        for kind, first, last in seen.frames:
            covered |= {first} if kind == "data" else set(range(first, last + 1))
        assert covered == set(range(min(covered), max(covered) + 1)), "every offset is data or skipped"
        assert any(SkipReason.NOT_RECEIVED in reasons for reasons in seen.reasons)
        await client.ws.close()
