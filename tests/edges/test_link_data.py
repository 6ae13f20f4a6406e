"""The data half of RouterLink against a real XPUB socket on loopback: what it hands ``on_data``,
and what it drops."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest
import zmq

from edges.link import TURN_BUDGET, VIEW_FROM, DataBatch, RouterLink
from router.wire import data_frame_head, parse_data_head

TOPIC = "/link/data"
HEAD = data_frame_head(TOPIC.encode(), 7, 1)


class Received:
    """What the link handed ``on_data``, message by message."""

    def __init__(self) -> None:
        self.messages: DataBatch = []
        self._grew = asyncio.Event()

    def __call__(self, batch: DataBatch) -> None:
        self.messages += batch
        self._grew.set()

    async def first(self, count: int) -> DataBatch:
        async with asyncio.timeout(5):
            while len(self.messages) < count:
                self._grew.clear()
                await self._grew.wait()
        return self.messages[:count]


@contextlib.asynccontextmanager
async def linked() -> AsyncIterator[tuple[RouterLink, zmq.Socket[bytes], Received]]:
    """A link whose SUB is connected to a bound XPUB; its control socket reaches a silent ROUTER."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    xpub = context.socket(zmq.XPUB)
    control = context.socket(zmq.ROUTER)
    for sock in (xpub, control):
        sock.linger = 0
    xpub_port = xpub.bind_to_random_port("tcp://127.0.0.1")
    control_port = control.bind_to_random_port("tcp://127.0.0.1")
    link = RouterLink(
        protocol="test",
        control=f"tcp://127.0.0.1:{control_port}",
        xpub=f"tcp://127.0.0.1:{xpub_port}",
        context=context,
    )
    received = Received()
    link.on_data = received
    link.watch(TOPIC)
    runner = asyncio.create_task(link.run())
    try:
        assert await asyncio.to_thread(xpub.poll, 5000), "the link did not subscribe"
        assert xpub.recv() == b"\x01" + TOPIC.encode() + b"\0"
        yield link, xpub, received
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
        xpub.close()
        control.close()
        context.term()


async def test_once_payloads_are_large_they_arrive_as_views_and_small_ones_as_bytes() -> None:
    large = bytes(range(256)) * (VIEW_FROM // 256)
    async with linked() as (link, xpub, received):
        xpub.send_multipart([HEAD, large])
        ((_, first),) = await received.first(1)
        xpub.send_multipart([HEAD, large])
        xpub.send_multipart([HEAD, b"small"])
        _, (_, view), (small_head, small) = await received.first(3)
    assert type(first) is bytes, "copied: the batch before it was not large"
    assert first == large
    assert parse_data_head(small_head).topic == TOPIC.encode()
    assert type(small) is bytes
    assert small == b"small"
    assert isinstance(view, memoryview)
    assert view == large
    assert link.data_messages == 3
    assert link.data_bytes == 2 * len(large) + len(b"small")


async def test_small_payloads_switch_back_to_copies() -> None:
    large = bytes(VIEW_FROM)
    async with linked() as (_, xpub, received):
        xpub.send_multipart([HEAD, large])
        await received.first(1)
        xpub.send_multipart([HEAD, b"small"])
        await received.first(2)
        xpub.send_multipart([HEAD, large])
        (_, again) = (await received.first(3))[2]
    assert type(again) is bytes, "copied again: the batch before it was small"
    assert again == large


@pytest.mark.parametrize("frames", [[HEAD], [HEAD, b"extra", b"payload"]])
async def test_a_message_of_other_than_two_frames_is_counted_and_dropped(frames: list[bytes]) -> None:
    async with linked() as (link, xpub, received):
        xpub.send_multipart(frames)
        xpub.send_multipart([HEAD, b"after"])
        assert await received.first(1) == [(HEAD, b"after")]
    assert link.malformed_data == 1
    assert link.data_messages == 1


async def test_a_costly_fan_out_is_handed_on_in_batches_that_fit_the_turn_budget() -> None:
    """When handing one message on takes 10 ms (a topic with very many clients), the link hands
    on about TURN_BUDGET's worth at a time and yields in between, instead of the whole backlog."""
    sizes: list[int] = []
    async with linked() as (link, xpub, received):

        def costly(batch: DataBatch) -> None:
            sizes.append(len(batch))
            time.sleep(0.01 * len(batch))
            received(batch)

        link.on_data = costly
        for _ in range(30):
            xpub.send_multipart([HEAD, b"m"])
        await received.first(30)
        first_round = len(sizes)
        for _ in range(30):
            xpub.send_multipart([HEAD, b"m"])
        await received.first(60)
    assert sum(sizes) == 60
    assert max(sizes[first_round:]) <= 2 * round(TURN_BUDGET / 0.01), sizes
