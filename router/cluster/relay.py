"""Producer messages for another router's shard, passed on to that router (cluster mode).

A PUSH producer may connect to any router of a cluster. A router that does not own a message's
shard sends it on to the owner's PULL socket, marked :data:`~router.wire.FORWARDED` so that it is
never passed on twice. The cost is one more hop for those messages, and order: a producer that
connects its PUSH socket to several routers has its messages spread over them, so two messages of
one topic may take different paths (``docs/cluster.md``, Producers).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import zmq

from router.core.shards import ShardLeases, shard_of
from router.curve import CurveServer
from router.wire import FORWARDED
from router.zmqio import NOBLOCK

FORWARD_HWM = 10_000
"""Messages queued for one peer; past it, more are dropped and counted (``forward_full``)."""
MAX_CACHED_SHARDS = 100_000


class PeerRelay:
    """One PUSH socket per other live router, to its PULL socket."""

    def __init__(
        self, context: zmq.Context[zmq.Socket[bytes]], leases: ShardLeases, curve: CurveServer | None
    ) -> None:
        self.router_id = leases.router_id
        self.leases = leases
        self.forwarded: Counter[str] = Counter()
        """Messages passed on, by the router that got them."""
        self._context = context
        self._curve = curve
        self._peers: dict[str, tuple[str, zmq.Socket[bytes]]] = {}
        self._shard_of: dict[bytes, int] = {}

    def sync(self, routers: Mapping[str, Mapping[str, str]]) -> None:
        """Connect to each live router's PULL (as announced), and close what left or moved."""
        for router_id in list(self._peers):
            endpoint, sock = self._peers[router_id]
            if routers.get(router_id, {}).get("pull") != endpoint:
                sock.close(linger=0)
                del self._peers[router_id]
        for router_id, info in routers.items():
            if router_id == self.router_id or router_id in self._peers or "pull" not in info:
                continue
            sock = self._context.socket(zmq.PUSH)
            sock.linger = 0
            sock.sndhwm = FORWARD_HWM
            sock.immediate = True
            key = info.get("curve_public_key")
            if self._curve is not None and key:
                self._curve.client_of(key.encode()).secure(sock)
            sock.connect(info["pull"])
            self._peers[router_id] = (info["pull"], sock)

    def forward(self, topic: bytes, frames: Sequence[zmq.Frame]) -> str | None:
        """Send a message to its shard's owner; ``None`` when sent, else the drop reason
        (``no_owner``: nobody serves the shard; ``forward_full``: the owner's queue is full)."""
        shard = self._shard_of.get(topic)
        if shard is None:
            if len(self._shard_of) >= MAX_CACHED_SHARDS:
                self._shard_of.clear()
            shard = self._shard_of[topic] = shard_of(topic, self.leases.shards)
        owner = self.leases.holder(shard)
        peer = self._peers.get(owner.router_id) if owner is not None else None
        if peer is None or owner is None:
            return "no_owner"
        header = frames[1] if len(frames) == 3 else b""
        try:
            peer[1].send_multipart([frames[0], header, frames[-1], FORWARDED], NOBLOCK, copy=False)
        except zmq.Again:
            return "forward_full"
        self.forwarded[owner.router_id] += 1
        return None

    def close(self) -> None:
        for _, sock in self._peers.values():
            sock.close(linger=0)
        self._peers.clear()
