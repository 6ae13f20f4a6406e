"""An edge heals a wedged control connection: its router link goes through a TCP relay that, once
frozen, keeps every open connection open but carries nothing more (a peer gone without closing,
which ZeroMQ alone never notices). The edge must open a new control connection, be welcomed again
and re-register its client, whose data flows again."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from router.http_limits import parse_address
from tests.io.harness import RouterProcess, WebSocketEdgeProcess, eventually, push_socket, running
from tests.io.metrics_scrape import scrape
from tests.io.test_websocket_edge import flowing, open_client

pytestmark = pytest.mark.timeout(90)

TOPIC = "/arm/joints"


class FreezingRelay:
    """Relays TCP from a free loopback port to ``target``; :meth:`freeze` wedges the connections
    open at that moment, while later ones are relayed as before."""

    def __init__(self, target: str) -> None:
        self.target = parse_address(target.removeprefix("tcp://"))
        self.frozen: set[asyncio.Task[None]] = set()
        self._pipes: set[asyncio.Task[None]] = set()
        self.connections = 0

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[str]:
        server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            yield f"tcp://127.0.0.1:{port}"
        finally:
            server.close()
            for task in self._pipes:
                task.cancel()
            await asyncio.gather(*self._pipes, return_exceptions=True)

    def freeze(self) -> None:
        """Stop carrying bytes on every open connection, without closing any."""
        for task in self._pipes:
            task.cancel()
        self.frozen |= self._pipes
        self._pipes = set()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        pipes = {asyncio.create_task(_pipe(reader, up_writer)), asyncio.create_task(_pipe(up_reader, writer))}
        self._pipes |= pipes
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*pipes)
        if not pipes & self.frozen:
            writer.close()
            up_writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while chunk := await reader.read(65536):
        writer.write(chunk)
        await writer.drain()


async def test_an_edge_whose_router_goes_silent_opens_a_new_control_connection() -> None:
    with running(RouterProcess(["--metrics", "127.0.0.1:0"])) as router:
        relay = FreezingRelay(router.endpoints["control"])
        async with relay.serving() as control:
            edge = WebSocketEdgeProcess(router, ["--control", control])
            await asyncio.to_thread(edge.start)
            try:
                client = await open_client(edge)
                assert (await client.request("subscribe", topic=TOPIC))["op"] == "subscribed"
                assert relay.connections == 1

                relay.freeze()

                async def healed() -> bool:
                    metrics = await scrape(edge.address)
                    return (
                        metrics.total("switchboard_edge_router_new_connections_total") >= 1
                        and metrics.total("switchboard_edge_router_connected") == 1
                    )

                await eventually(healed, timeout=20)
                assert relay.connections >= 2
                with push_socket(router.endpoints["pull"]) as push:
                    await flowing(client, push, TOPIC)
                edge_id = client.client_id.rpartition(".")[0]
                routed = await scrape(router.endpoints["metrics"])
                assert routed("switchboard_router_clients", edge=edge_id, protocol="websocket") == 1
                await client.ws.close()
            finally:
                await asyncio.to_thread(edge.stop)
