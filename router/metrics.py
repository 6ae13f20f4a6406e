"""The router's Prometheus metrics, read from the core's own counters when scraped.

Nothing here runs per message: :class:`RouterCollector` asks the
:class:`~router.core.ConnectionManager` and the :class:`~router.core.control.ControlPlane` for their
figures at scrape time. :meth:`RouterMetrics.render` returns the text exposition format, for the
metrics listener (``router/http_listener.py``, ``serve_metrics``).

Per-topic series are bounded by :class:`TopicSeries`; the cluster's series are there in cluster
mode only. ``docs/operations.md`` ("Metrics") lists every series.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Final

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import InfoMetricFamily, Metric

from router.core.manager import ConnectionManager, ConnectionStats, TopicCounters
from router.core.shards import CHANGES
from router.core.topics import TopicRegistry
from router.core.views import ClusterView
from router.metric_families import counter, gauge

__all__ = [
    "CONTENT_TYPE",
    "MAX_TOPIC_SERIES",
    "OTHER_TOPICS",
    "RouterCollector",
    "RouterMetrics",
    "TopicSeries",
]

CONTENT_TYPE: Final = CONTENT_TYPE_PLAIN_0_0_4
MAX_TOPIC_SERIES: Final = 100
OTHER_TOPICS: Final = "other"
"""The ``topic`` label of everything summed outside the named topics (a topic starts with ``/``)."""


class TopicSeries:
    """Which topics get series of their own: every topic declared exactly in ``[topics]``, and the
    first ``most`` other topics the router held state for at a scrape, for the life of the process.

    The rest is summed under ``topic="other"``. A name once given a series keeps it, so no count
    ever moves from a named series back to ``other``, and ``other`` only grows.
    """

    def __init__(self, registry: TopicRegistry, most: int = MAX_TOPIC_SERIES) -> None:
        self.most = most
        self._declared = {spec.pattern for spec in registry.declarations() if _is_exact(spec.pattern)}
        self._named: set[str] = set()

    def named(self, topics: Iterable[TopicCounters]) -> list[TopicCounters]:
        """The topics among ``topics`` that have series of their own, giving free ones out in order."""
        chosen = []
        for topic in topics:
            name = topic.topic
            if name not in self._declared and name not in self._named:
                if len(self._named) >= self.most:
                    continue
                self._named.add(name)
            chosen.append(topic)
        return chosen


def _is_exact(pattern: str) -> bool:
    return not {"*", "**"} & set(pattern.split("/"))


class RouterCollector:
    """A Prometheus collector over the router's core (``prometheus_client.registry.Collector``).

    ``refusals`` maps ``(request, code)`` to how many control requests were refused so;
    ``clock`` is the clock the manager's ``now`` came from, for heartbeat ages; ``cluster`` gives
    the view of the cluster at a scrape, ``None`` outside cluster mode.
    """

    def __init__(
        self,
        manager: ConnectionManager,
        refusals: Mapping[tuple[str, str], int] | None = None,
        router_id: str = "",
        clock: Callable[[], float] = time.monotonic,
        edges_lost: Mapping[str, int] | None = None,
        cluster: Callable[[], ClusterView | None] = lambda: None,
    ) -> None:
        self.manager = manager
        self.refusals: Mapping[tuple[str, str], int] = refusals if refusals is not None else Counter()
        self.edges_lost: Mapping[str, int] = edges_lost if edges_lost is not None else Counter()
        self.router_id = router_id
        self.topic_series = TopicSeries(manager.registry)
        self.cluster = cluster
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        stats = self.manager.get_connection_stats()
        yield InfoMetricFamily("switchboard_router", "The router process.", {"router_id": self.router_id})
        yield from self._edges()
        yield from self._sizes(stats)
        yield from self._topics(stats)
        yield from self._traffic(stats)
        yield from self._drops(stats)
        view = self.cluster()
        if view is not None:
            yield from _cluster(view)

    def _edges(self) -> Iterator[Metric]:
        edges = self.manager.edge_statuses()
        protocols = Counter(edge.protocol for edge in edges)
        yield gauge(
            "switchboard_router_edges",
            "Edges the router knows.",
            ["protocol"],
            [((p,), n) for p, n in protocols.items()],
        )
        clients = [((e.edge_id, e.protocol), e.clients) for e in edges]
        yield gauge(
            "switchboard_router_clients", "Clients registered, by edge.", ["edge", "protocol"], clients
        )
        now = self._clock()
        ages = [((e.edge_id,), max(0.0, now - e.last_seen)) for e in edges]
        yield gauge(
            "switchboard_router_edge_heartbeat_age_seconds",
            "Seconds since the edge was last heard.",
            ["edge"],
            ages,
        )
        yield counter(
            "switchboard_router_edges_lost",
            "Edges forgotten with all their clients, by reason (edge heartbeat timeout, edge restarted).",
            ["reason"],
            [((reason,), n) for reason, n in sorted(self.edges_lost.items())],
        )

    def _sizes(self, stats: ConnectionStats) -> Iterator[Metric]:
        yield gauge(
            "switchboard_router_topics", "Topics the router holds state for.", [], [((), stats.topics)]
        )
        yield gauge(
            "switchboard_router_subscriptions",
            "Subscriptions of all clients.",
            [],
            [((), stats.subscriptions)],
        )
        yield gauge(
            "switchboard_router_history_messages",
            "Messages kept in the histories of reliable topics.",
            [],
            [((), stats.history_messages)],
        )
        yield gauge(
            "switchboard_router_history_bytes",
            "Header and payload bytes kept in the histories of reliable topics.",
            [],
            [((), stats.history_bytes)],
        )

    def _topics(self, stats: ConnectionStats) -> Iterator[Metric]:
        every = self.manager.topic_counters()
        named = self.topic_series.named(every)
        names = {topic.topic for topic in named}
        other = TopicCounters(
            OTHER_TOPICS,
            stats.messages_in - sum(t.messages_in for t in named),
            stats.bytes_in - sum(t.bytes_in for t in named),
            sum(t.subscribers for t in every if t.topic not in names),
        )
        rows = [*named, other]
        yield counter(
            "switchboard_router_messages_in",
            "Producer messages accepted, by topic.",
            ["topic"],
            [((t.topic,), t.messages_in) for t in rows],
        )
        yield counter(
            "switchboard_router_bytes_in",
            "Payload bytes of the accepted producer messages, by topic.",
            ["topic"],
            [((t.topic,), t.bytes_in) for t in rows],
        )
        yield gauge(
            "switchboard_router_topic_subscribers",
            "Clients subscribed, by topic.",
            ["topic"],
            [((t.topic,), t.subscribers) for t in rows],
        )

    def _traffic(self, stats: ConnectionStats) -> Iterator[Metric]:
        yield counter(
            "switchboard_router_messages_routed",
            "Accepted messages sent on to the edges (some client watched the topic).",
            [],
            [((), stats.messages_routed)],
        )
        yield counter(
            "switchboard_router_deliveries",
            "Routed messages times the clients subscribed to their topic at the time.",
            [],
            [((), stats.deliveries)],
        )

    def _drops(self, stats: ConnectionStats) -> Iterator[Metric]:
        drops = sorted(((reason,), count) for reason, count in stats.drops.items())
        yield counter("switchboard_router_drops", "Input the router dropped, by reason.", ["reason"], drops)
        refused = sorted(self.refusals.items())
        yield counter(
            "switchboard_router_refused_requests", "Control requests refused.", ["request", "code"], refused
        )


def _cluster(view: ClusterView) -> Iterator[Metric]:
    served = view.served()[view.router_id]
    yield gauge("switchboard_router_shards_served", "Shards this router serves.", [], [((), served)])
    degraded = sum(1 for shard in view.shards if shard.degraded)
    yield gauge(
        "switchboard_router_shards_degraded",
        "Shards whose serving time ran out here, with no other holder yet: topics from memory only.",
        [],
        [((), degraded)],
    )
    yield counter(
        "switchboard_router_shard_changes",
        "Shards this router gained, and lost by reason (handed_over, taken, expired).",
        ["change"],
        [((change,), view.changes.get(change, 0)) for change in CHANGES],
    )
    yield gauge(
        "switchboard_router_cluster_routers",
        "Routers sharing the shards as this router last read Redis, itself included.",
        [],
        [((), len(view.live))],
    )
    yield counter(
        "switchboard_router_forwarded",
        "Producer messages of other routers' shards passed on to their owner.",
        [],
        [((), view.forwarded)],
    )
    yield counter(
        "switchboard_router_parked",
        "Producer messages of other routers' shards held while their shard had no owner that could"
        " take them ([cluster] park_time).",
        [],
        [((), view.parked)],
    )
    yield gauge(
        "switchboard_router_parked_messages",
        "Producer messages held now for a shard with no owner that can take them.",
        [],
        [((), view.parked_now)],
    )
    yield gauge(
        "switchboard_router_history_pending",
        "Reliable messages waiting to be written to Redis before they are published.",
        [],
        [((), view.history_pending)],
    )
    yield counter(
        "switchboard_router_history_written",
        "Reliable messages written to Redis and published.",
        [],
        [((), view.history_written)],
    )
    yield counter(
        "switchboard_router_redis_unavailable",
        "Rounds of reading and renewing the leases that failed because Redis did not answer.",
        [],
        [((), view.unavailable_rounds)],
    )


class RouterMetrics:
    """The router's registry: :meth:`render` is the body of a ``/metrics`` response."""

    content_type: Final = CONTENT_TYPE

    def __init__(self, collector: RouterCollector) -> None:
        self.collector = collector
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)

    def render(self) -> bytes:
        return generate_latest(self.registry)
