"""No client waits forever for a router: with the router frozen (SIGSTOP, so its sockets stay open
and ZeroMQ queues what the edge sends), a subscribe ends with ``unavailable`` and a connect closes
its client with 4006, each after the edge's ``--request-timeout``, and both are counted. Once the
router runs again, the same client subscribes as before."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Iterator

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.io.harness import RouterProcess, WebSocketEdgeProcess, eventually
from tests.io.metrics_scrape import scrape
from tests.io.test_websocket_edge import Client, open_client

pytestmark = pytest.mark.timeout(90)

TIMEOUT = 1.5


@pytest.fixture
def edge(router: RouterProcess) -> Iterator[WebSocketEdgeProcess]:
    process = WebSocketEdgeProcess(router, ["--request-timeout", str(TIMEOUT)])
    process.start()
    yield process
    process.stop()


@contextlib.contextmanager
def frozen(router: RouterProcess) -> Iterator[None]:
    """SIGSTOP the router for the block; SIGCONT after it, whatever happens."""
    os.kill(router.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(router.pid, signal.SIGCONT)


async def unanswered(edge: WebSocketEdgeProcess) -> float:
    return (await scrape(edge.address)).labelled("switchboard_edge_unanswered_requests_total")


async def test_a_subscribe_no_router_answers_ends_with_unavailable(
    router: RouterProcess, edge: WebSocketEdgeProcess
) -> None:
    client = await open_client(edge)
    with frozen(router):
        started = time.monotonic()
        reply = await client.request("subscribe", topic="/frozen/topic")
        waited = time.monotonic() - started
    assert (reply["op"], reply["code"]) == ("error", "unavailable"), reply
    assert reply["message"] == f"no router answered within {TIMEOUT:g} s; subscribe again"
    assert TIMEOUT - 0.1 <= waited <= TIMEOUT + 3, waited
    assert await unanswered(edge) == 1

    async def subscribed_again() -> bool:
        reply = await client.request("subscribe", topic="/frozen/topic")
        return bool(reply["op"] == "subscribed")

    await eventually(subscribed_again, timeout=20, interval=0.5)
    await client.ws.close()


async def test_a_connect_no_router_answers_closes_the_client_with_4006(
    router: RouterProcess, edge: WebSocketEdgeProcess
) -> None:
    async with connect(edge.url, subprotocols=["switchboard.v1"], proxy=None) as ws:  # type: ignore[list-item]
        client = Client(ws)
        with frozen(router):
            await client.send({"op": "connect"})
            error = await client.control(timeout=TIMEOUT + 5)
            closing = await client.control()
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
    reason = f"no router answered connect within {TIMEOUT:g} s"
    assert error == {"op": "error", "id": None, "code": "unavailable", "message": reason}
    assert closing == {"op": "closing", "code": 4006, "reason": reason}
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4006
    assert await unanswered(edge) == 1
    await eventually(lambda: connects(edge), timeout=20, interval=0.5)


async def connects(edge: WebSocketEdgeProcess) -> bool:
    """Whether a client connects (the edge refuses new ones with 1013 until a router welcomes it)."""
    try:
        client = await open_client(edge)
    except ConnectionClosed as closed:
        refused = closed
    else:
        await client.ws.close()
        return True
    assert refused.rcvd is not None
    assert refused.rcvd.code == 1013, refused
    return False
