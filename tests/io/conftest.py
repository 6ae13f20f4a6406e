"""Fixtures shared by the integration tests: real processes on loopback ports picked at run time."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import zmq

from tests.io.harness import RouterProcess, push_socket, running_router
from tests.io.test_websocket_edge import Client


@pytest.fixture
def router() -> Iterator[RouterProcess]:
    """A fresh router process for one test."""
    with running_router() as process:
        yield process


@pytest.fixture
def push(router: RouterProcess) -> Iterator[zmq.Socket[bytes]]:
    """A raw PUSH producer connected to ``router``."""
    with push_socket(router.endpoints["pull"]) as sock:
        yield sock


@pytest.fixture
async def clients() -> AsyncIterator[list[Client]]:
    """WebSocket clients a test opened (it appends them), closed after it."""
    opened: list[Client] = []
    yield opened
    for client in opened:
        await client.ws.close()
