"""The ``[cluster]`` table: off unless ``url`` is set (``docs/cluster.md``)."""

from __future__ import annotations

import msgspec

from router.core.shards import DEFAULT_SHARDS

MAX_SHARDS = 1024


class ClusterSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Cluster mode: shard leases (and, later, reliable history) in Redis 7 or Valkey."""

    url: str | None = None
    """``redis://[user:password@]host:port/db``; ``None``: one router, state in memory."""
    prefix: str = "switchboard"
    """Every key of this cluster starts with it: one Redis can hold several clusters."""
    shards: int = DEFAULT_SHARDS
    """How many shards topics map to; every router of a cluster must agree."""
    lease_time: float = 2.0
    """Seconds a shard's lease lasts without a renewal: how long a paused or cut-off router's
    shards wait before another router takes them (a dead process's are taken at once)."""
    tick: float = 0.1
    """Seconds between two rounds of reading the leases and renewing this router's."""
    timeout: float = 0.5
    """Seconds a Redis connection or reply may take before it counts as unavailable."""
    advertise: str | None = None
    """The host other processes reach this router at, when its sockets bind a wildcard address
    (``0.0.0.0``, ``*``); the bound address otherwise."""
    sentinels: list[str] = []
    """``host:port`` of Redis Sentinels: then the master of ``sentinel_service`` is used, and of
    ``url`` only its user, password and database."""
    sentinel_service: str = "mymaster"
    max_pending_messages: int = 100_000
    """Reliable messages that may wait for Redis (unavailable, or the shard degraded); past it,
    new ones are dropped and counted as ``history_unavailable``."""
    max_pending_bytes: int = 256 * 1024 * 1024
    park_time: float = 5.0
    """Seconds a PUSH producer's message for another router's shard may wait for an owner that can
    take it (a takeover under way, an owner just killed); then it is dropped and counted."""
    max_parked_messages: int = 50_000
    max_parked_bytes: int = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        if not 1 <= self.shards <= MAX_SHARDS:
            raise ValueError(f"[cluster] shards must be 1 to {MAX_SHARDS}")
        if self.lease_time <= 0 or self.tick <= 0 or self.timeout <= 0:
            raise ValueError("[cluster] lease_time, tick and timeout must be positive")
        if 2 * self.tick + 2 * self.timeout >= self.lease_time * 0.75:
            raise ValueError(
                "[cluster] lease_time must leave room for renewals: more than (2 tick + 2 timeout) / 0.75"
            )
        if min(self.max_pending_messages, self.max_pending_bytes) < 1:
            raise ValueError("[cluster] max_pending_messages and max_pending_bytes must be at least 1")
        if min(self.max_parked_messages, self.max_parked_bytes) < 1 or not 0 < self.park_time < 3600:
            raise ValueError(
                "[cluster] max_parked_messages and max_parked_bytes must be at least 1, park_time 0 to 3600 s"
            )
        for address in self.sentinels:
            self._host_port(address)

    @property
    def enabled(self) -> bool:
        return bool(self.url) or bool(self.sentinels)

    def sentinel_addresses(self) -> list[tuple[str, int]]:
        return [self._host_port(address) for address in self.sentinels]

    @staticmethod
    def _host_port(address: str) -> tuple[str, int]:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"[cluster] sentinels: {address!r} is not host:port")
        return host.strip("[]"), int(port)
