"""The control half of RouterLink against a real ROUTER socket that plays the router and reads
slower than the edge sends: nothing the edge sends is lost, and what it cannot hold it says."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import zmq

from edges.link import RouterLink
from router.wire import (
    CONTROL_VERSION,
    EdgeMessage,
    Hello,
    RegisterClient,
    Welcome,
    decode_edge_message,
    encode_control,
)

CLIENTS = 5_000
TOKEN = "t" * 4096
"""Makes the resync (20 MB) larger than what the socket queues and the kernel's buffers take."""


class SlowRouter:
    """A ROUTER socket the test reads when it chooses, with a small receive queue."""

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]]) -> None:
        self.sock = context.socket(zmq.ROUTER)
        self.sock.linger = 0
        self.sock.rcvhwm = 10
        self.port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.peer = b""

    async def receive(self, timeout: float = 5.0) -> EdgeMessage:
        assert await asyncio.to_thread(self.sock.poll, int(timeout * 1000)), "nothing came"
        self.peer, body = self.sock.recv_multipart()
        return decode_edge_message(body)

    async def welcome(self) -> None:
        """Wait for a hello (skipping anything older) and answer it."""
        while not isinstance(await self.receive(), Hello):
            pass
        welcome = Welcome(
            router_id="r1", version=CONTROL_VERSION, heartbeat_interval=1.0, heartbeat_timeout=60.0
        )
        self.sock.send_multipart([self.peer, encode_control(welcome)])

    async def registers(self, count: int) -> list[str]:
        """The client ids of the next ``count`` registers, skipping other messages."""
        ids: list[str] = []
        while len(ids) < count:
            message = await self.receive()
            if isinstance(message, RegisterClient):
                ids.append(message.client_id)
        return ids


@contextlib.asynccontextmanager
async def linked(max_queued_control: int) -> AsyncIterator[tuple[RouterLink, SlowRouter]]:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    router = SlowRouter(context)
    xpub = context.socket(zmq.XPUB)
    xpub.linger = 0
    xpub_port = xpub.bind_to_random_port("tcp://127.0.0.1")
    link = RouterLink(
        protocol="test",
        control=f"tcp://127.0.0.1:{router.port}",
        xpub=f"tcp://127.0.0.1:{xpub_port}",
        context=context,
        max_queued_control=max_queued_control,
    )
    link.resync = lambda: [
        RegisterClient(request_id=n + 1, client_id=f"c{n}", token=TOKEN) for n in range(CLIENTS)
    ]
    runner = asyncio.create_task(link.run())
    try:
        yield link, router
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
        router.sock.close()
        xpub.close()
        context.term()


async def test_a_resync_larger_than_the_socket_queues_arrives_whole_and_in_order() -> None:
    async with linked(max_queued_control=CLIENTS) as (link, router):
        await router.welcome()
        await asyncio.sleep(0.5)
        assert link.control_held > 0, "the router reads nothing: the edge holds what does not fit"
        assert await router.registers(CLIENTS) == [f"c{n}" for n in range(CLIENTS)]
        assert link.control_held == 0
        assert link.control_refused == 0


async def test_past_its_bound_the_edge_refuses_counts_and_says_hello_again_once_caught_up() -> None:
    async with linked(max_queued_control=100) as (link, router):
        await router.welcome()
        await asyncio.sleep(0.5)
        assert link.control_refused > 0
        assert link.control_held <= 100
        registers = 0
        while not isinstance(message := await router.receive(), Hello):
            registers += isinstance(message, RegisterClient)
        assert 0 < registers < CLIENTS, "what was held went out first, then the hello"
