"""Cluster mode: several routers share one Redis 7 (or Valkey) for shard leases and reliable history."""

from router.cluster.store import (
    Append,
    AppendResult,
    ClusterStore,
    Holder,
    StoreUnavailable,
)

__all__ = ["Append", "AppendResult", "ClusterStore", "Holder", "StoreUnavailable"]
