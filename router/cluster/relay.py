"""Producer messages for another router's shard, passed on to that router (cluster mode).

A PUSH producer may connect to any router of a cluster. A router that does not own a message's
shard sends it on to the owner's PULL socket, marked :data:`~router.wire.FORWARDED` so that it is
never passed on twice. The cost is one more hop for those messages, and order: a producer that
connects its PUSH socket to several routers has its messages spread over them, so two messages of
one topic may take different paths (``docs/cluster.md``, Producers).

While a shard has no owner, or its owner's socket takes nothing (it was just killed, or is that far
behind), its messages are parked (:class:`~router.core.parking.Parking`) and passed on when the
owner can take them, at the latest at the next :meth:`PeerRelay.tick`; what waits longer than
``[cluster] park_time``, or finds the parking full, is dropped and counted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import NamedTuple

import zmq

from router.cluster.config import ClusterSection
from router.core.parking import Parking
from router.core.shards import ShardLeases, shard_of
from router.curve import CurveServer
from router.wire import FORWARDED
from router.zmqio import NOBLOCK

FORWARD_HWM = 10_000
"""Messages queued for one peer; past it, more are dropped and counted (``forward_full``)."""
MAX_CACHED_SHARDS = 100_000


Message = list[zmq.Frame | bytes]
"""A message as passed on: topic, header (maybe empty), payload, :data:`FORWARDED`."""


class Relayed(NamedTuple):
    """A message on its way to its shard's owner. ``here_only``: another router passed it on
    already, so only this router may route it (:meth:`PeerRelay.keep`)."""

    message: Message
    here_only: bool


def _relayed(frames: Sequence[zmq.Frame], here_only: bool) -> Relayed:
    header = frames[1] if len(frames) == 3 else b""
    return Relayed([frames[0], header, frames[-1], FORWARDED], here_only)


class PeerRelay:
    """One PUSH socket per other live router, to its PULL socket. A message parked for a shard this
    router has taken since goes to ``route_here``, at once and in order."""

    def __init__(
        self,
        context: zmq.Context[zmq.Socket[bytes]],
        leases: ShardLeases,
        curve: CurveServer | None,
        section: ClusterSection,
        clock: Callable[[], float],
        route_here: Callable[[Message], None],
    ) -> None:
        self.router_id = leases.router_id
        self.leases = leases
        self.forwarded: Counter[str] = Counter()
        """Messages passed on, by the router that got them."""
        self.parked = 0
        """Messages parked since the start (most are passed on later)."""
        self.parking = Parking[Relayed](
            section.max_parked_messages, section.max_parked_bytes, section.park_time
        )
        self._clock = clock
        self._route_here = route_here
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
        """Pass a message on to its shard's owner, or park it; ``None`` when done, else the drop
        reason (the parking is full: ``no_owner`` when nobody serves the shard, ``forward_full``
        when its owner's queue takes nothing)."""
        return self._deliver(topic, _relayed(frames, here_only=False))

    def keep(self, topic: bytes, frames: Sequence[zmq.Frame]) -> str | None:
        """Park a message another router passed on here for a shard this router does not serve
        yet: the sender saw its lease in Redis while this router still loads the shard's reliable
        topics. It is routed here once the shard is served, never passed on again (two routers
        whose views differ would pass it back and forth); ``None`` when parked, else
        ``not_owner``."""
        return self._deliver(topic, _relayed(frames, here_only=True))

    def tick(self) -> Counter[str]:
        """Pass on what waits for an owner that can take it now, and drop what waited too long;
        returns the drops by reason."""
        parking, dropped = self.parking, Counter[str]()
        for shard, relayed in parking.expire(self._clock()):
            dropped[self._why_not(shard, relayed)] += 1
        for shard in parking.shards():
            parking.pass_on(shard, partial(self._send, shard))
        return dropped

    def _deliver(self, topic: bytes, relayed: Relayed) -> str | None:
        shard = self._shard(topic)
        parking = self.parking
        if parking.holds(shard):
            parking.pass_on(shard, partial(self._send, shard))
        if not parking.holds(shard) and self._send(shard, relayed):
            return None
        message = relayed.message
        if parking.park(shard, relayed, len(message[0]) + len(message[2]), self._clock()):
            self.parked += 1
            return None
        return self._why_not(shard, relayed)

    def _shard(self, topic: bytes) -> int:
        shard = self._shard_of.get(topic)
        if shard is None:
            if len(self._shard_of) >= MAX_CACHED_SHARDS:
                self._shard_of.clear()
            shard = self._shard_of[topic] = shard_of(topic, self.leases.shards)
        return shard

    def _send(self, shard: int, relayed: Relayed) -> bool:
        owner = self.leases.holder(shard)
        if owner is not None and owner.router_id == self.router_id:
            if self.leases.token(shard, self._clock()) is None:
                return False
            self._route_here(relayed.message)
            return True
        peer = self._peers.get(owner.router_id) if owner is not None else None
        if peer is None or owner is None or relayed.here_only:
            return False
        try:
            peer[1].send_multipart(relayed.message, NOBLOCK, copy=False)
        except zmq.Again:
            return False
        self.forwarded[owner.router_id] += 1
        return True

    def _why_not(self, shard: int, relayed: Relayed) -> str:
        if relayed.here_only:
            return "not_owner"
        owner = self.leases.holder(shard)
        return "forward_full" if owner is not None and owner.router_id in self._peers else "no_owner"

    def close(self) -> None:
        for _, sock in self._peers.values():
            sock.close(linger=0)
        self._peers.clear()
