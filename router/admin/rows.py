"""The admin API's rows, built from the core's views. No I/O.

The core keeps the router's monotonic clock; rows show Unix times, through :class:`Clocks`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from router.admin.rates import RateMeter
from router.admin.shapes import (
    ClientRow,
    ClusterReply,
    ClusterRouterRow,
    EdgeRow,
    HistoryRow,
    RedisState,
    ShardRow,
    TopicRow,
)
from router.core import ClientView, EdgeView, TopicView
from router.core.shards import CHANGES
from router.core.views import ClusterView

__all__ = ["Clocks", "client_rows", "cluster_reply", "edge_rows", "topic_rows"]

LATE_AFTER = 2.0
"""An edge silent for this many heartbeat intervals is shown ``late``."""


class Clocks(NamedTuple):
    """The router's monotonic time and the Unix time, read together."""

    monotonic: float
    unix: float

    def to_unix(self, monotonic: float) -> float:
        return round(self.unix - (self.monotonic - monotonic), 3)


def client_rows(views: Iterable[ClientView], clocks: Clocks) -> list[ClientRow]:
    rows = []
    for view in views:
        info, figures = view.info, view.figures
        rows.append(
            ClientRow(
                client_id=info.client_id,
                edge_id=info.edge_id,
                protocol=info.protocol,
                remote=info.remote,
                user=view.user,
                subscriptions=list(view.topics),
                connected_at=clocks.to_unix(info.connected_at),
                queued_messages=figures.queued_messages if figures is not None else None,
                queued_bytes=figures.queued_bytes if figures is not None else None,
                drops=figures.dropped if figures is not None else None,
            )
        )
    return sorted(rows, key=lambda row: row.client_id)


def topic_rows(views: Iterable[TopicView], rates: RateMeter, drop_rates: RateMeter) -> list[TopicRow]:
    rows = []
    for view in views:
        history = view.history
        rows.append(
            TopicRow(
                topic=view.topic,
                subscribers=view.subscribers,
                messages=view.messages,
                bytes=view.bytes,
                rate=round(rates.rate(view.topic), 3),
                drops=view.edge_drops,
                drop_rate=round(drop_rates.rate(view.topic), 3),
                epoch=view.epoch,
                offset=view.offset,
                policy=view.policy,
                policy_overridden=view.overridden,
                history=None
                if history is None
                else HistoryRow(
                    messages=history.messages,
                    bytes=history.bytes,
                    first_offset=history.start + 1,
                    last_offset=history.last,
                ),
            )
        )
    return sorted(rows, key=lambda row: row.topic)


def edge_rows(views: Iterable[EdgeView], clocks: Clocks, heartbeat_interval: float) -> list[EdgeRow]:
    rows = []
    for view in views:
        silent_for = max(0.0, clocks.monotonic - view.last_seen)
        totals = view.totals
        rows.append(
            EdgeRow(
                edge_id=view.edge_id,
                protocol=view.protocol,
                health="ok" if silent_for <= LATE_AFTER * heartbeat_interval else "late",
                clients=view.clients,
                topics=view.topics,
                connected_at=clocks.to_unix(view.connected_at),
                last_heartbeat=clocks.to_unix(view.last_seen),
                silent_for=round(silent_for, 3),
                delivered=totals.delivered if totals is not None else None,
                queued_messages=totals.queued_messages if totals is not None else None,
                queued_bytes=totals.queued_bytes if totals is not None else None,
                drops=totals.dropped if totals is not None else None,
            )
        )
    return sorted(rows, key=lambda row: row.edge_id)


def cluster_reply(view: ClusterView) -> ClusterReply:
    """The cluster as ``view`` shows it: every router announced or sharing the shards, live ones
    first, and every shard."""
    served = view.served()
    routers = [
        ClusterRouterRow(
            router_id=router_id,
            live=router_id in view.live,
            endpoints=dict(sorted(view.routers.get(router_id, {}).items())),
            shards_served=served[router_id],
        )
        for router_id in sorted(view.routers.keys() | view.live, key=lambda r: (r not in view.live, r))
    ]
    shards = [
        ShardRow(
            shard=shard.shard,
            owner=None if shard.holder is None else shard.holder.router_id,
            token=None if shard.holder is None else shard.holder.token,
            lease_ms_left=None if shard.lease_left is None else int(shard.lease_left * 1000),
            degraded=shard.degraded,
        )
        for shard in view.shards
    ]
    return ClusterReply(
        router_id=view.router_id,
        shard_count=len(view.shards),
        lease_time=view.lease_time,
        redis=RedisState(
            where=view.redis, available=view.available, unavailable_rounds=view.unavailable_rounds
        ),
        routers=routers,
        shards=shards,
        changes={change: view.changes.get(change, 0) for change in CHANGES},
    )
