"""A redis-server per test, and cluster stores connected to it that are closed after the test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from router.cluster import ClusterStore
from tests.io.redis_server import RedisServer, running_redis

OpenStore = Callable[[str], Awaitable[ClusterStore]]


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with running_redis(tmp_path) as server:
        yield server


@pytest.fixture
async def open_store(redis_server: RedisServer) -> AsyncIterator[OpenStore]:
    """Opens a :class:`ClusterStore` for a router id on ``redis_server``, with a 1 s timeout."""
    opened: list[ClusterStore] = []

    async def open_one(router_id: str) -> ClusterStore:
        store = await ClusterStore.open(redis_server.url, router_id=router_id, timeout=1.0)
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        await store.close()


@pytest.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[Redis]:
    """A plain client, to look at the keys behind the store's back."""
    client = Redis.from_url(redis_server.url)
    yield client
    await client.aclose()
