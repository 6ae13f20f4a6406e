"""One router's part in a cluster: the rounds of reading, renewing and taking shard leases.

The decisions are :class:`~router.core.shards.ShardLeases`'; this shell only talks to Redis
(:class:`~router.cluster.store.ClusterStore`) and hands every change, and the shard map the edges
get, to the router as it happens. A shard is given up before its lease is released, and stops
being served when its serving time runs out even while Redis does not answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping

import msgspec

from router.cluster.config import ClusterSection
from router.cluster.history import ClusterHistory
from router.cluster.store import ClusterStore, StoreUnavailable
from router.core.policy import DeliveryPolicy
from router.core.shards import Change, ShardLeases
from router.core.views import ClusterView, ShardView
from router.logs import ThrottledLog
from router.wire import NO_OWNER, RouterEndpoints, ShardMap

log = logging.getLogger("switchboard.router")

Apply = Callable[[list[Change], ShardMap], None]
"""Where the node hands shard changes and the newest shard map: the router's control plane."""
ApplyPolicies = Callable[[dict[str, DeliveryPolicy]], None]
"""Where the node hands every runtime policy when some router set one: the router's control plane."""
TTLS_EVERY = 1.0
"""Seconds between two readings of how long the other routers' leases have left."""


class ClusterError(RuntimeError):
    """The router cannot join the cluster (Redis unreachable at start, another shard count)."""


class ClusterNode:
    """Takes part in the cluster until :meth:`stop`; :meth:`start` first."""

    def __init__(
        self,
        section: ClusterSection,
        router_id: str,
        endpoints: dict[str, str],
        apply: Apply,
        clock: Callable[[], float] = time.monotonic,
        apply_policies: ApplyPolicies | None = None,
    ) -> None:
        self.section = section
        self.router_id = router_id
        self.announcement = {
            name: _advertised(endpoint, section.advertise) for name, endpoint in endpoints.items()
        }
        self.leases = ShardLeases(router_id, section.shards, section.lease_time)
        self.routers: dict[str, dict[str, str]] = {}
        """The live routers' announcements, as last read."""
        self.unavailable = 0
        """Rounds that failed because Redis did not answer."""
        self.available = False
        """Whether the last round reached Redis."""
        self._ttls_read_at: float | None = None
        self._apply = apply
        self._apply_policies = apply_policies
        self._policies_to_share: dict[str, DeliveryPolicy] = {}
        self._policies_version: int | None = None
        self._clock = clock
        self.history: ClusterHistory | None = None
        """Reliable topics' history in Redis: loaded before a shard taken is served."""
        self._store: ClusterStore | None = None
        self._log = ThrottledLog(log)

    @property
    def store(self) -> ClusterStore:
        assert self._store is not None, "start() first"
        return self._store

    async def start(self) -> None:
        """Connect to Redis and check the shard count. Raises :class:`ClusterError`."""
        section = self.section
        assert section.url is not None or section.sentinels
        try:
            self._store = await ClusterStore.open(
                section.url or "",
                router_id=self.router_id,
                prefix=section.prefix,
                timeout=section.timeout,
                sentinels=section.sentinel_addresses(),
                sentinel_service=section.sentinel_service,
            )
            shards = await self._store.check_shards(section.shards)
        except StoreUnavailable as error:
            raise ClusterError(f"[cluster] cannot reach {error}; start Redis or fix [cluster] url") from None
        if shards != section.shards:
            await self._store.close()
            raise ClusterError(
                f"[cluster] shards = {section.shards}, but this cluster (prefix {section.prefix!r}) has "
                f"{shards}: every router of a cluster must use the same count"
            )

    async def run(self) -> None:
        """A round every ``tick``, forever."""
        while True:
            await self.round()
            await asyncio.sleep(self.section.tick)

    async def watch_expiry(self) -> None:
        """Stop serving a shard the moment its serving time runs out, whatever Redis is doing."""
        while True:
            await asyncio.sleep(self.section.tick / 2)
            if expired := self.leases.expire(self._clock()):
                self._hand_over(expired)

    async def round(self) -> None:
        """Read the cluster, then renew, release and take leases as :class:`ShardLeases` plans."""
        try:
            await self._round()
            self.available = True
        except StoreUnavailable as error:
            self.available = False
            self.unavailable += 1
            self._log.warning("redis", "cluster: %s", error, now=self._clock())
            self._hand_over(self.leases.expire(self._clock()))

    async def _round(self) -> None:
        store, leases, ttl = self.store, self.leases, self._ttl_ms()
        asked = self._clock()
        await store.announce(self.router_id, self.announcement, ttl_ms=ttl)
        self.routers = await store.routers()
        holders = await store.holders(self.section.shards)
        connected = await store.connected_routers()
        await self._sync_policies(store)
        steps, changes = leases.plan(self.routers, holders, asked, connected=connected)
        self._hand_over(changes)
        for shard, token in steps.release:
            await self._release(shard, token)
        if steps.renew:
            asked = self._clock()
            renewed = await store.renew(self.router_id, steps.renew, ttl)
            answers = [(shard, token, ok) for (shard, token), ok in zip(steps.renew, renewed, strict=True)]
            self._hand_over(leases.renewed(answers, asked))
        for shard, replacing in steps.acquire:
            asked = self._clock()
            taken = await store.acquire(shard, self.router_id, ttl, replacing=replacing)
            if taken is not None:
                await self._take(shard, taken, asked)
        self._hand_over([])
        asked = self._clock()
        if self._ttls_read_at is None or asked - self._ttls_read_at >= TTLS_EVERY:
            leases.ttls_read(await store.lease_ttls(self.section.shards), asked)
            self._ttls_read_at = asked

    def share_policy(self, topic: str, policy: DeliveryPolicy) -> None:
        """A policy set at run time here, for every router: written to Redis in the next round."""
        self._policies_to_share[topic] = policy

    async def _sync_policies(self, store: ClusterStore) -> None:
        """Write the policies set here, then, when any router set one since the last look, hand
        them all to the router (the last written wins), but those set here since, not yet written."""
        while self._policies_to_share:
            topic, policy = next(iter(self._policies_to_share.items()))
            await store.set_policy(topic, msgspec.json.encode(policy))
            if self._policies_to_share.get(topic) is policy:
                del self._policies_to_share[topic]
        if self._apply_policies is None or await store.policies_version() == self._policies_version:
            return
        version, encoded = await store.policies()
        policies = {}
        for topic, value in encoded.items():
            if topic in self._policies_to_share:
                continue
            try:
                policies[topic] = msgspec.json.decode(value, type=DeliveryPolicy)
            except (msgspec.ValidationError, msgspec.DecodeError, ValueError) as error:
                self._log.warning(
                    "policy", "cluster: the policy of %s in Redis: %s", topic, error, now=self._clock()
                )
        self._policies_version = version
        self._apply_policies(policies)

    async def _take(self, shard: int, token: int, asked: float) -> None:
        """Serve a shard just acquired, its reliable topics loaded first; if they cannot be, the
        lease goes back, and a later round tries again. Handing over again, with no change, once
        the topics continue their sequences lets the messages parked for the shard be routed."""
        loaded = []
        if self.history is not None:
            try:
                loaded = await self.history.load(shard)
            except StoreUnavailable:
                with contextlib.suppress(StoreUnavailable):
                    await self.store.release(shard, self.router_id, token)
                raise
        self._hand_over(self.leases.acquired(shard, token, asked))
        if self.history is not None:
            self.history.adopt(loaded)
        self._hand_over([])

    async def stop(self) -> None:
        """Leave the cluster: stop serving, release every lease, withdraw the announcement."""
        if self._store is None:
            return
        changes = self.leases.drop_all()
        self._hand_over(changes)
        try:
            for change in changes:
                await self._release(change.shard, change.token)
            await self._store.leave(self.router_id)
        except StoreUnavailable as error:
            log.warning("cluster: could not release the leases: %s", error)
        await self._store.close()

    async def _release(self, shard: int, token: int) -> None:
        """Give a lease back, once the shard's reliable messages waiting here are in Redis."""
        if self.history is not None:
            await self.history.hand_over(shard, token, self.section.timeout)
        await self.store.release(shard, self.router_id, token)

    def shard_map(self) -> ShardMap:
        """Who serves each shard, and where every live router is, as this router knows it."""
        owners = [NO_OWNER if holder is None else tuple(holder) for holder in self.leases.owners()]
        routers = {}
        for router_id, info in self.routers.items():
            if router_id in self.leases.live and "control" in info and "xpub" in info:
                routers[router_id] = RouterEndpoints(control=info["control"], xpub=info["xpub"])
        return ShardMap(shards=self.section.shards, owners=owners, routers=routers)  # type: ignore[arg-type]

    def view(self, changes: Mapping[str, int]) -> ClusterView:
        """What this router knows of the cluster now; ``changes``: the shards gained and lost, by
        reason (the control plane counts them)."""
        now, leases = self._clock(), self.leases
        degraded = leases.degraded()
        return ClusterView(
            router_id=self.router_id,
            lease_time=self.section.lease_time,
            redis=self._store.where if self._store is not None else "",
            available=self.available,
            unavailable_rounds=self.unavailable,
            routers={**self.routers, self.router_id: self.announcement},
            live=leases.live | {self.router_id},
            shards=[
                ShardView(shard, holder, leases.lease_left(shard, now), shard in degraded)
                for shard, holder in enumerate(leases.owners())
            ],
            changes=dict(changes),
        )

    def _hand_over(self, changes: list[Change]) -> None:
        self._apply(changes, self.shard_map())

    def _ttl_ms(self) -> int:
        return round(self.section.lease_time * 1000)


def _advertised(endpoint: str, host: str | None) -> str:
    """``endpoint`` with a wildcard host replaced by ``host``. Raises :class:`ClusterError` for a
    wildcard with no ``host``: nobody could connect to what the router would announce."""
    transport, _, address = endpoint.partition("://")
    bound, _, port = address.rpartition(":")
    if bound not in ("0.0.0.0", "*", "[::]", "::"):
        return endpoint
    if host is None:
        raise ClusterError(
            f"[cluster] advertise is not set, and the router binds {endpoint}: set it to the host"
            " other routers, edges and producers reach this router at"
        )
    return f"{transport}://{host}:{port}"
