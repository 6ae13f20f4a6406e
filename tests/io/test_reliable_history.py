"""The reliable policy on the real router process: history kept, recovered, bounded, and restarted."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
import zmq

from router.wire import (
    MAX_RECOVERED_BYTES,
    Error,
    ProducerHeader,
    Recover,
    Recovered,
    RouterMessage,
    Subscribe,
    SubscribeOk,
)
from tests.io.harness import RouterProcess, TestEdge, configured_router, eventually

pytestmark = pytest.mark.timeout(60)

TOPIC = "/reliable/orders"
HISTORY = 1_000
CONFIG = f"""
[topics]
allow_undeclared = true

[[topics.declare]]
pattern = "/reliable/*"
description = "every message, in order, with a history of {HISTORY} messages"

[topics.declare.policy]
kind = "reliable"
history_max_messages = {HISTORY}
"""


@pytest.fixture
def router(tmp_path: Path) -> Iterator[RouterProcess]:
    with configured_router(tmp_path, CONFIG) as process:
        yield process


def message(index: int) -> tuple[bytes, bytes]:
    """The header and payload of message ``index`` (from 1): sizes vary, every third has a header."""
    header = msgspec.msgpack.encode(ProducerHeader(key=f"k{index}")) if index % 3 == 0 else b""
    payload = index.to_bytes(4, "big") + bytes((index + k) % 251 for k in range(index * 37 % 4_000))
    return header, payload


def send(push: zmq.Socket[bytes], first: int, last: int) -> None:
    for index in range(first, last + 1):
        header, payload = message(index)
        push.send_multipart([TOPIC.encode(), header, payload] if header else [TOPIC.encode(), payload])


async def accepted(edge: TestEdge, count: int) -> None:
    async def done() -> bool:
        return (await edge.stats())["messages_in"] == count

    await eventually(done)


async def ask(edge: TestEdge, epoch: int, from_offset: int) -> RouterMessage:
    request_id = edge.link.next_request_id()
    return await edge.request(
        Recover(request_id=request_id, topic=TOPIC, epoch=epoch, from_offset=from_offset)
    )


async def recover_all(edge: TestEdge, epoch: int, from_offset: int) -> list[Recovered]:
    """Every reply of a recovery, asking again after the last offset while the reply says ``more``."""
    replies: list[Recovered] = []
    while not replies or replies[-1].more:
        reply = await ask(edge, epoch, replies[-1].messages[-1][0] if replies else from_offset)
        assert isinstance(reply, Recovered), reply
        replies.append(reply)
    return replies


async def subscribe(edge: TestEdge, client_id: str, resume: tuple[int, int] | None = None) -> SubscribeOk:
    await edge.register(client_id)
    edge.link.watch(TOPIC)
    epoch, offset = resume or (None, None)
    request = Subscribe(
        request_id=edge.link.next_request_id(),
        client_id=client_id,
        topic=TOPIC,
        resume_epoch=epoch,
        resume_offset=offset,
    )
    reply = await edge.request(request)
    assert isinstance(reply, SubscribeOk), reply
    edge.clients[client_id].add(TOPIC)
    return reply


async def test_history_is_recovered_whole_then_bounded_then_gone_with_a_restart(
    router: RouterProcess, push: zmq.Socket[bytes]
) -> None:
    async with TestEdge(router.endpoints) as edge:
        subscribed = await subscribe(edge, "c1")
        assert (subscribed.policy.kind, subscribed.offset, subscribed.resume) == ("reliable", 0, "none")
        epoch = subscribed.epoch
        send(push, 1, HISTORY)
        await accepted(edge, HISTORY)

        replies = await recover_all(edge, epoch, 0)
        recovered = [entry for reply in replies for entry in reply.messages]
        assert [offset for offset, _, _ in recovered] == list(range(1, HISTORY + 1))
        assert [(header, payload) for _, header, payload in recovered] == [
            message(i) for i in range(1, HISTORY + 1)
        ]
        assert len(replies) > 1, "2 MB of messages come in several bounded replies"
        for reply in replies:
            assert sum(len(h) + len(p) for _, h, p in reply.messages) <= MAX_RECOVERED_BYTES

        send(push, HISTORY + 1, HISTORY + 10)
        await accepted(edge, HISTORY + 10)
        too_old = await ask(edge, epoch, 0)
        assert isinstance(too_old, Error), too_old
        assert too_old.code == "history_exceeded"
        rest = [entry for reply in await recover_all(edge, epoch, 10) for entry in reply.messages]
        assert [offset for offset, _, _ in rest] == list(range(11, HISTORY + 11))
        assert rest[-1][1:] == message(HISTORY + 10)

        late = await subscribe(edge, "c2", resume=(epoch, 5))
        assert (late.resume, late.resume_from, late.resume_to) == ("history_exceeded", 10, HISTORY + 10)
        caught_up = await subscribe(edge, "c3", resume=(epoch, HISTORY))
        assert (caught_up.resume, caught_up.resume_from, caught_up.resume_to) == ("ok", HISTORY, HISTORY + 10)

        first_router = edge.link.router_id
        router.kill(signal.SIGKILL)
        router.restart_on_same_ports()

        async def resynced() -> bool:
            if edge.link.router_id in ("", first_router) or not edge.link.welcomed.is_set():
                return False
            return (await edge.stats())["subscriptions"] == 3

        await eventually(resynced)
        restarted = await ask(edge, epoch, 0)
        assert isinstance(restarted, Error), restarted
        assert restarted.code == "epoch_changed"
