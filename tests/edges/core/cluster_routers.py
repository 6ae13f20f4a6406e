"""The routers of a cluster as an edge's hub meets them, for the edge core's tests.

Each :class:`FakeRouter` holds the edge's clients and subscriptions, serves the shards it holds a
lease for, and answers as the router's control plane does: ``not_owner`` for a topic of a shard it
does not serve, ``unknown_client`` for a client it was not given. A router that loses a shard
forgets its topics' subscriptions without a word. Topics keep their epoch and offsets across
owners, as ``reliable`` topics do with their history in Redis.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from edges.core.hub import EdgeHub, ToRouter
from edges.core.session import ClientSession
from router import wire
from router.core.errors import ErrorCode
from router.core.policy import DeliveryPolicy
from router.core.shards import shard_of
from router.wire import NO_OWNER, RouterEndpoints, ShardMap
from tests.edges.core.hub_clients import RELIABLE

SHARDS = 4


def topic_in(shard: int, prefix: str = "/s", shards: int = SHARDS) -> str:
    """A topic of ``shard``: the first of ``{prefix}{shard}/0``, ``/1``... there."""
    return next(
        topic for n in range(1000) if shard_of((topic := f"{prefix}{shard}/{n}").encode(), shards) == shard
    )


def endpoints(router_id: str) -> RouterEndpoints:
    return RouterEndpoints(control=f"tcp://127.0.0.1/{router_id}", xpub=f"tcp://127.0.0.1/{router_id}-data")


@dataclass
class Sequence:
    """A topic's sequence as every router sees it (in Redis): its epoch and its messages."""

    epoch: int
    policy: DeliveryPolicy
    messages: list[tuple[int, bytes]] = field(default_factory=list)

    @property
    def offset(self) -> int:
        return self.messages[-1][0] if self.messages else 0


class FakeRouter:
    def __init__(self, router_id: str, cluster: FakeCluster) -> None:
        self.router_id = router_id
        self.cluster = cluster
        self.served: set[int] = set()
        self.clients: set[str] = set()
        self.subs: set[tuple[str, str]] = set()
        self.inbox: list[wire.EdgeMessage] = []
        self.received: list[wire.EdgeMessage] = []

    def __repr__(self) -> str:
        return f"<FakeRouter {self.router_id} shards {sorted(self.served)}>"

    def serves(self, topic: str) -> bool:
        return shard_of(topic.encode(), self.cluster.shards) in self.served

    def forget_edge(self) -> None:
        """A ``hello``: the edge's clients and subscriptions go."""
        self.clients.clear()
        self.subs.clear()
        self.inbox.clear()

    def lose(self, shard: int) -> None:
        self.served.discard(shard)
        self.subs = {(c, t) for c, t in self.subs if shard_of(t.encode(), self.cluster.shards) != shard}

    def answer(self, message: wire.EdgeMessage) -> wire.RouterMessage | None:
        self.received.append(message)
        match message:
            case wire.RegisterClient(request_id=request_id, client_id=client_id):
                self.clients.add(client_id)
                return wire.Registered(request_id=request_id, client_id=client_id, user="u")
            case wire.RefreshToken(request_id=request_id, client_id=client_id):
                revoked = sorted(t for c, t in self.subs if c == client_id and t.startswith("/revoked"))
                self.subs -= {(client_id, t) for t in revoked}
                return wire.Refreshed(request_id=request_id, client_id=client_id, user="u", revoked=revoked)
            case wire.UnregisterClient(client_id=client_id):
                self.clients.discard(client_id)
                self.subs = {(c, t) for c, t in self.subs if c != client_id}
                return None
            case wire.Subscribe(request_id=request_id, client_id=client_id, topic=topic):
                refused = self._refusal(request_id, topic, client_id)
                if refused is not None:
                    return refused
                self.subs.add((client_id, topic))
                sequence = self.cluster.sequence(topic)
                return wire.SubscribeOk(
                    request_id=request_id,
                    client_id=client_id,
                    topic=topic,
                    epoch=sequence.epoch,
                    offset=sequence.offset,
                    content_type="x",
                    policy=sequence.policy,
                )
            case wire.Unsubscribe(request_id=request_id, client_id=client_id, topic=topic):
                self.subs.discard((client_id, topic))
                return wire.Unsubscribed(request_id=request_id, client_id=client_id, topic=topic)
            case wire.Recover(request_id=request_id, topic=topic, epoch=epoch, from_offset=first):
                refused = self._refusal(request_id, topic)
                if refused is not None:
                    return refused
                sequence = self.cluster.sequence(topic)
                if epoch != sequence.epoch:
                    return wire.Error(request_id=request_id, code="epoch_changed", message="")
                last = message.to_offset if message.to_offset is not None else sequence.offset
                found = [(o, b"", p) for o, p in sequence.messages if first < o <= last]
                return wire.Recovered(request_id=request_id, topic=topic, epoch=epoch, messages=found)
        return None

    def _refusal(self, request_id: int, topic: str, client_id: str | None = None) -> wire.Error | None:
        if client_id is not None and client_id not in self.clients:
            return wire.Error(request_id=request_id, code=ErrorCode.UNKNOWN_CLIENT, message="who?")
        if not self.serves(topic):
            return wire.Error(request_id=request_id, code=ErrorCode.NOT_OWNER, message="not mine")
        return None


class FakeCluster:
    """Routers sharing shard leases, and the edge's hub between them: the tests' router side."""

    def __init__(self, hub: EdgeHub, shards: int = SHARDS) -> None:
        self.hub = hub
        self.shards = shards
        self.routers: dict[str, FakeRouter] = {}
        self.owners: list[tuple[str, int]] = [NO_OWNER] * shards
        self.tokens = [0] * shards
        self.sequences: dict[str, Sequence] = {}
        self.now = 0.0
        self.fenced = 0
        self.seed = ""
        """The router the edge's own link reaches: the one router until the first shard map."""
        self.stray: list[ToRouter] = []
        """Messages the hub addressed to a router that does not exist."""

    def router(self, router_id: str) -> FakeRouter:
        if router_id not in self.routers:
            self.routers[router_id] = FakeRouter(router_id, self)
        return self.routers[router_id]

    def sequence(self, topic: str, policy: DeliveryPolicy = RELIABLE) -> Sequence:
        if topic not in self.sequences:
            self.sequences[topic] = Sequence(epoch=7, policy=policy)
        return self.sequences[topic]

    # ------------------------------------------------------------ leases and maps

    def give(self, shard: int, router_id: str) -> None:
        """``router_id`` takes the shard's lease (a higher token); the holder before forgets it."""
        old, _ = self.owners[shard]
        if old:
            self.routers[old].lose(shard)
        self.tokens[shard] += 1
        self.owners[shard] = (router_id, self.tokens[shard])
        self.router(router_id).served.add(shard)

    def shard_map(self) -> ShardMap:
        return ShardMap(
            shards=self.shards,
            owners=list(self.owners),
            routers={router_id: endpoints(router_id) for router_id in self.routers},
        )

    def send_map(self, sender: str) -> None:
        self.hub.shard_map(sender, self.shard_map(), self.now)
        self.carry_out()

    # ------------------------------------------------------------ the edge's link to each router

    def welcome(self, router_id: str, replaces: str = "") -> list[wire.EdgeMessage]:
        """``router_id`` welcomes the edge (again): it forgets the edge, then gets the resync (the
        one router's, before the first shard map)."""
        router = self.router(router_id)
        router.forget_edge()
        if self.hub.routes is None:
            self.seed = router_id
            messages = self.hub.resync()
        else:
            messages = self.hub.router_welcomed(router_id, replaces)
        router.inbox += messages
        self.carry_out()
        return messages

    def carry_out(self) -> None:
        for action in self.hub.drain_actions():
            if isinstance(action, ToRouter):
                router_id = action.router or self.seed
                if router_id in self.routers:
                    self.routers[router_id].inbox.append(action.message)
                else:
                    self.stray.append(action)

    def answer(self, router_id: str, count: int | None = None) -> int:
        """``router_id`` answers the first ``count`` messages waiting (all by default)."""
        router = self.routers[router_id]
        answered = 0
        while router.inbox and (count is None or answered < count):
            reply = router.answer(router.inbox.pop(0))
            answered += 1
            if reply is not None:
                self.hub.router_message(reply, router_id if self.hub.routes is not None else "")
                self.carry_out()
        return answered

    def answer_all(self) -> None:
        while any(router.inbox for router in self.routers.values()):
            for router_id in list(self.routers):
                self.answer(router_id)

    def publish(self, topic: str, payload: bytes = b"p", by: str | None = None) -> int:
        """The topic's next message, sent to the edge by ``by`` (by default its owner) when that
        router holds a subscription to it; it reaches the hub unless the edge fences it off."""
        sequence = self.sequence(topic)
        offset = sequence.offset + 1
        sequence.messages.append((offset, payload))
        sender = by or self.owners[shard_of(topic.encode(), self.shards)][0]
        router = self.routers.get(sender)
        if router is None or not any(t == topic for _, t in router.subs):
            return offset
        routes = self.hub.routes
        owner = routes.owners.get(topic.encode()) if routes is not None else None
        if owner is not None and owner != sender:
            self.fenced += 1
        else:
            self.hub.deliver(topic.encode(), sequence.epoch, offset, payload, self.now)
        self.carry_out()
        return offset


def connect(hub: EdgeHub, cluster: FakeCluster, client_id: str) -> ClientSession:
    session = hub.open_client(client_id)
    hub.client_text(client_id, '{"op":"connect","token":"tok"}')
    cluster.carry_out()
    return session


def client_op(hub: EdgeHub, cluster: FakeCluster, client_id: str, **op: Any) -> None:
    hub.client_text(client_id, json.dumps(op))
    cluster.carry_out()
