"""The edge's links to a cluster's routers (edges/router_links.py) and what the shell does with them
(edges/shell.py): a link per router listed, closed once unlisted for a while, the seed kept; each
message to the router the hub names; a router's data only for topics of shards it owns."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import cast

import pytest
import zmq

from edges.core.hub import EdgeHub, ToRouter
from edges.link import RouterLink
from edges.router_links import RouterLinks
from edges.shell import EdgeShell
from router.core.clients import Connection
from router.wire import (
    Heartbeat,
    Hello,
    RegisterClient,
    Registered,
    RouterEndpoints,
    ShardMap,
    data_frame_head,
    encode_control,
)
from tests.edges.core.cluster_routers import topic_in
from tests.edges.test_link_control import SlowRouter

KEEP = 5.0


class FakeLink:
    """What RouterLinks reads of a link."""

    def __init__(self, endpoints: RouterEndpoints, router_id: str = "") -> None:
        self.endpoints = endpoints
        self.router_id = router_id
        self.welcomed = asyncio.Event()
        self.closed = False
        self.watched: list[str] = []
        self.sent: list[object] = []

    def close(self) -> None:
        self.closed = True

    def watch(self, topic: str) -> None:
        self.watched.append(topic)

    def unwatch(self, topic: str) -> None:
        self.watched.remove(topic)

    def send(self, message: object) -> bool:
        self.sent.append(message)
        return True

    async def run(self) -> None:
        await asyncio.Event().wait()


def endpoints(name: str) -> RouterEndpoints:
    return RouterEndpoints(control=f"tcp://127.0.0.1/{name}", xpub=f"tcp://127.0.0.1/{name}-data")


def fake_links(seed_id: str = "ra") -> tuple[RouterLinks, FakeLink, list[FakeLink]]:
    seed = FakeLink(endpoints("seed"), seed_id)
    made: list[FakeLink] = []

    def make(where: RouterEndpoints) -> RouterLink:
        made.append(FakeLink(where))
        return cast(RouterLink, made[-1])

    return RouterLinks(cast(RouterLink, seed), make, KEEP, endpoints("seed")), seed, made


def test_a_link_per_router_listed_but_the_seeds() -> None:
    links, seed, made = fake_links()
    opened, closed = links.follow({"ra": endpoints("a"), "rb": endpoints("b")}, 0.0)
    assert (len(opened), closed) == (1, [])
    assert made[0].endpoints == endpoints("b")
    assert list(links) == [cast(RouterLink, seed), cast(RouterLink, made[0])]
    assert links.follow({"ra": endpoints("a"), "rb": endpoints("b")}, 1.0) == ([], [])


def test_an_endpoint_no_link_can_reach_is_passed_over_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    seed = FakeLink(endpoints("seed"), "ra")
    links = RouterLinks(
        cast(RouterLink, seed),
        lambda where: RouterLink(protocol="test", control=where.control, xpub=where.xpub),
        KEEP,
        endpoints("seed"),
    )
    wildcard = RouterEndpoints(control="tcp://*:5555", xpub="tcp://*:5556")
    with caplog.at_level(logging.WARNING, logger="switchboard.edge"):
        assert links.follow({"rb": wildcard}, 0.0) == ([], [])
    assert "router rb: cannot link to" in caplog.text
    assert len(list(links)) == 1, "only the seed link"


def test_a_router_no_welcomed_link_reaches_gets_nothing_and_it_is_counted() -> None:
    links, _, _ = fake_links()
    assert not links.send("nobody", Heartbeat())
    assert links.unsent == 1


def test_a_link_unlisted_for_a_while_is_closed_and_the_seed_never() -> None:
    links, seed, made = fake_links()
    links.follow({"rb": endpoints("b")}, 0.0)
    assert links.follow({}, 1.0) == ([], [])
    assert links.follow({}, 1.0 + KEEP) == ([], [])
    opened, closed = links.follow({}, 1.1 + KEEP)
    assert (opened, closed) == ([], [cast(RouterLink, made[0])])
    assert made[0].closed
    assert list(links) == [cast(RouterLink, seed)]
    assert not seed.closed


def test_a_link_listed_again_in_time_stays() -> None:
    links, _, made = fake_links()
    links.follow({"rb": endpoints("b")}, 0.0)
    links.follow({}, 1.0)
    links.follow({"rb": endpoints("b")}, 2.0)
    assert links.follow({}, 3.0 + KEEP - 0.5) == ([], [])
    assert not made[0].closed


def test_a_link_welcomed_under_a_new_id_is_that_routers() -> None:
    links, _, made = fake_links()
    links.follow({"rb": endpoints("b")}, 0.0)
    made[0].router_id = "rb2"
    assert links.follow({"rb2": endpoints("b")}, 1.0) == ([], [])
    assert links.follow({"rb2": endpoints("b")}, 2.0 + KEEP) == ([], [])


def test_a_second_link_to_a_router_already_reached_is_closed() -> None:
    links, _, made = fake_links()
    links.follow({"rb": endpoints("b")}, 0.0)
    made[0].router_id = "ra"
    _, closed = links.follow({"rb": endpoints("b"), "ra": endpoints("a")}, 1.0)
    assert closed == [cast(RouterLink, made[0])]


def test_a_router_at_an_endpoint_already_linked_gets_no_second_link() -> None:
    links, seed, made = fake_links()
    seed.router_id = "ra2"
    assert links.follow({"ra": endpoints("seed"), "ra2": endpoints("seed")}, 0.0) == ([], [])
    links.follow({"rb": endpoints("b")}, 0.0)
    made[0].router_id = "rb2"
    assert links.follow({"rb": endpoints("b"), "rb2": endpoints("b")}, 1.0) == ([], [])
    assert len(made) == 1


def test_messages_go_to_the_welcomed_link_of_their_router() -> None:
    links, seed, made = fake_links()
    links.follow({"rb": endpoints("b")}, 0.0)
    made[0].router_id = "rb"
    hello = Heartbeat()
    assert not links.send("rb", hello)
    assert not links.welcomed
    made[0].welcomed.set()
    assert links.welcomed
    assert links.send("rb", hello)
    assert made[0].sent == [hello]
    assert seed.sent == []


# ---------------------------------------------------------------- the shell


class Shell(EdgeShell[Connection]):
    def _close_transport(self, transport: Connection, code: int, reason: str) -> None:
        raise AssertionError("no client here")


@contextlib.asynccontextmanager
async def shell() -> AsyncIterator[tuple[Shell, list[tuple[bytes, int]]]]:
    """A shell whose hub records what it is handed; its seed link points at sockets bound to
    ports picked now, which it never runs."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    control, xpub = context.socket(zmq.ROUTER), context.socket(zmq.XPUB)
    for sock in (control, xpub):
        sock.linger = 0
    control_port = control.bind_to_random_port("tcp://127.0.0.1")
    xpub_port = xpub.bind_to_random_port("tcp://127.0.0.1")
    hub = EdgeHub()
    delivered: list[tuple[bytes, int]] = []

    def deliver(topic: bytes, epoch: int, offset: int, payload: object, now: float | None = None) -> int:
        delivered.append((topic, offset))
        return 1

    hub.deliver = deliver  # type: ignore[method-assign]
    edge = Shell(
        hub,
        control=f"tcp://127.0.0.1:{control_port}",
        xpub=f"tcp://127.0.0.1:{xpub_port}",
        heartbeat_interval=1.0,
        curve=None,
        log=logging.getLogger("test"),
    )
    try:
        yield edge, delivered
    finally:
        for link in edge.links:
            link.close()
        control.close()
        xpub.close()


def batch(*messages: tuple[str, int]) -> list[tuple[bytes, bytes | memoryview]]:
    return [(data_frame_head(topic.encode(), 7, offset), b"p") for topic, offset in messages]


@pytest.fixture
def two_topics() -> tuple[str, str]:
    return topic_in(0, "/x", shards=2), topic_in(1, "/x", shards=2)


async def test_one_router_s_data_all_goes_to_the_hub(two_topics: tuple[str, str]) -> None:
    ours, theirs = two_topics
    async with shell() as (edge, delivered):
        assert edge.link.on_data == edge._on_data, "no check at all"
        edge.link.on_data(batch((ours, 1), (theirs, 1)))
        assert delivered == [(ours.encode(), 1), (theirs.encode(), 1)]
        assert edge.hub.stats().fenced_data == 0


async def test_a_cluster_router_s_data_only_for_its_shards(two_topics: tuple[str, str]) -> None:
    ours, theirs = two_topics
    async with shell() as (edge, delivered):
        hub, link = edge.hub, edge.link
        link._link.router_id = "ra"
        link.welcomed.set()
        for client_id, topic in (("c1", ours), ("c2", theirs)):
            hub.open_client(client_id)
            hub.client_text(client_id, '{"op":"connect"}')
            [register] = [a.message for a in hub.drain_actions() if isinstance(a, ToRouter)]
            assert isinstance(register, RegisterClient)
            hub.router_message(Registered(request_id=register.request_id, client_id=client_id, user="u"))
            hub.client_text(client_id, f'{{"op":"subscribe","id":1,"topic":"{topic}"}}')
            hub.drain_actions()
        assert sorted(hub.watched) == sorted([ours, theirs])
        shards = ShardMap(shards=2, owners=[("ra", 1), ("rb", 1)], routers={"ra": endpoints("a")})
        edge._on_router_message(shards, link)
        link.on_data(batch((ours, 1), (theirs, 1), ("/nobody", 1), (ours, 2)))
        assert delivered == [(ours.encode(), 1), (b"/nobody", 1), (ours.encode(), 2)]
        assert hub.stats().fenced_data == 1
        link.welcomed.clear()
        link.on_data(batch((ours, 3)))
        assert hub.stats().fenced_data == 2, "a router that no longer welcomes the edge is not trusted"


async def test_a_link_says_when_its_router_is_lost() -> None:
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
    )
    lost: list[str] = []
    link.on_lost = lambda: lost.append(link.router_id)
    runner = asyncio.create_task(link.run())
    try:
        await router.welcome()
        async with asyncio.timeout(5):
            await link.welcomed.wait()
        assert lost == []
        restarted = encode_control(Heartbeat(router_id="r2"))
        router.sock.send_multipart([router.peer, restarted])
        while not isinstance(await router.receive(), Hello):
            pass
        assert lost == ["r1"]
        assert not link.welcomed.is_set()
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
        router.sock.close()
        xpub.close()
        context.term()
