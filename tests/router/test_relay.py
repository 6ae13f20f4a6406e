"""PeerRelay (router/cluster/relay.py) with real PUSH and PULL sockets on loopback and leases driven
by hand: messages of a shard with no owner, or an owner that takes nothing, are parked and passed
on in order; one passed on here for a shard this router is taking waits to be routed here; what
waits too long, or finds the parking full, is handed back with its reason."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import zmq

from router.cluster.config import ClusterSection
from router.cluster.relay import Message, PeerRelay
from router.core.shards import Holder, ShardLeases, shard_of
from router.wire import FORWARDED

SHARDS = 4
PARK_TIME = 5.0
TOPIC = b"/relay/t"
SHARD = shard_of(TOPIC, SHARDS)
PROBE = b"/relay/probe"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Relaying:
    """A relay of router ``ra`` with a peer ``rb`` whose PULL socket the test reads."""

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]], max_parked_messages: int) -> None:
        self.clock = Clock()
        self.leases = ShardLeases("ra", SHARDS, lease_time=2.0)
        self.routed_here: list[Message] = []
        section = ClusterSection(park_time=PARK_TIME, max_parked_messages=max_parked_messages)
        self.relay = PeerRelay(context, self.leases, None, section, self.clock, self.routed_here.append)
        self.pull = context.socket(zmq.PULL)
        self.pull.linger = 0
        port = self.pull.bind_to_random_port("tcp://127.0.0.1")
        self.pull_endpoint = f"tcp://127.0.0.1:{port}"

    def owners(self, holder: Holder | None, peers: dict[str, str] | None = None) -> None:
        """Redis shows ``holder`` holding every shard, and ``peers`` (router id: PULL) live."""
        peers = {"rb": self.pull_endpoint} if peers is None else peers
        self.leases.plan(["ra", *peers], [holder] * SHARDS, self.clock.now)
        self.relay.sync({router_id: {"pull": pull} for router_id, pull in peers.items()})

    def connected(self) -> None:
        """Wait until the PUSH socket to ``rb`` is connected (ZMQ_IMMEDIATE: it takes nothing
        before): a probe parked meanwhile is passed on by a tick once it is."""
        assert self.relay.forward(PROBE, frames(b"probe", PROBE)) is None
        deadline = time.monotonic() + 5
        while not self.pull.poll(10):
            assert time.monotonic() < deadline, "the relay never connected to its peer"
            self.relay.tick()
        assert self.pull.recv_multipart()[0] == PROBE

    def received(self, count: int) -> list[list[bytes]]:
        got: list[list[bytes]] = []
        for _ in range(count):
            assert self.pull.poll(2000), f"only {len(got)} of {count} messages reached the owner"
            got.append(self.pull.recv_multipart())
        return got


def frames(payload: bytes, topic: bytes = TOPIC) -> list[zmq.Frame]:
    return [zmq.Frame(topic), zmq.Frame(payload)]


def as_bytes(part: zmq.Frame | bytes) -> bytes:
    return part if isinstance(part, bytes) else part.bytes


@pytest.fixture
def relayed() -> Iterator[Relaying]:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    made = Relaying(context, max_parked_messages=3)
    try:
        yield made
    finally:
        made.relay.close()
        made.pull.close()
        context.term()


def test_a_shard_with_no_owner_parks_until_an_owner_can_take_them_in_order(relayed: Relaying) -> None:
    relayed.owners(Holder("rb", 1))
    relayed.connected()
    relayed.owners(None)
    parked_before = relayed.relay.parked
    for n in range(3):
        assert relayed.relay.forward(TOPIC, frames(b"m%d" % n)) is None
    assert relayed.relay.parked == parked_before + 3
    assert len(relayed.relay.parking) == 3
    assert not relayed.pull.poll(50)
    relayed.owners(Holder("rb", 1))
    assert relayed.relay.tick() == {}
    assert relayed.received(3) == [[TOPIC, b"", b"m%d" % n, FORWARDED] for n in range(3)]
    assert len(relayed.relay.parking) == 0


def test_a_full_parking_hands_the_message_back_with_its_reason(relayed: Relaying) -> None:
    relayed.owners(None)
    for n in range(3):
        assert relayed.relay.forward(TOPIC, frames(b"m%d" % n)) is None
    assert relayed.relay.forward(TOPIC, frames(b"m3")) == "no_owner"
    relayed.owners(Holder("rb", 1), peers={"rb": "tcp://127.0.0.1:1"})
    assert relayed.relay.forward(TOPIC, frames(b"m4")) == "forward_full"
    assert relayed.relay.keep(TOPIC, frames(b"m5")) == "not_owner"


def test_what_waits_past_park_time_is_dropped_by_its_reason(relayed: Relaying) -> None:
    relayed.owners(None)
    relayed.relay.forward(TOPIC, frames(b"lost"))
    relayed.relay.keep(TOPIC, frames(b"kept"))
    relayed.clock.now += PARK_TIME / 2
    assert relayed.relay.tick() == {}
    relayed.clock.now += PARK_TIME
    assert relayed.relay.tick() == {"no_owner": 1, "not_owner": 1}
    assert len(relayed.relay.parking) == 0


def test_a_message_passed_on_here_waits_for_this_router_to_serve_its_shard(relayed: Relaying) -> None:
    relayed.owners(Holder("rb", 1))
    relayed.connected()
    for n in range(2):
        assert relayed.relay.keep(TOPIC, frames(b"k%d" % n)) is None
    relayed.relay.tick()
    assert not relayed.pull.poll(100), "a message passed on here went back to another router"
    assert relayed.routed_here == []
    relayed.leases.acquired(SHARD, 2, relayed.clock.now)
    assert relayed.relay.forward(TOPIC, [zmq.Frame(TOPIC), zmq.Frame(b"h"), zmq.Frame(b"f")]) is None
    assert [[as_bytes(part) for part in message[:3]] for message in relayed.routed_here] == [
        [TOPIC, b"", b"k0"],
        [TOPIC, b"", b"k1"],
        [TOPIC, b"h", b"f"],
    ]


def test_a_shard_just_handed_over_is_not_routed_here_while_redis_still_shows_this_router(
    relayed: Relaying,
) -> None:
    relayed.owners(None)
    relayed.leases.acquired(SHARD, 2, relayed.clock.now)
    relayed.leases.drop_all()
    assert relayed.leases.holder(SHARD) == Holder("ra", 2)
    assert relayed.relay.forward(TOPIC, frames(b"m")) is None
    relayed.relay.tick()
    assert relayed.routed_here == []
    assert len(relayed.relay.parking) == 1
