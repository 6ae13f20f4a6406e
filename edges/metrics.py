"""An edge's Prometheus metrics, read from the hub, the router link and the sessions when scraped.

Nothing here runs per message: the hub, the link and the connections keep plain counters, and
:class:`EdgeCollector` reads them at scrape time. Every series carries the ``edge`` and
``protocol`` labels. ``docs/operations.md`` ("Metrics") lists every series.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from typing import Final, Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import Metric

from edges.core.drops import DropReason
from edges.core.hub import EdgeHub, EdgeStats
from edges.core.session import ClientSession
from edges.latency import LatencySampler
from edges.link import RouterLink
from edges.router_links import RouterLinks
from router.metric_families import counter, gauge

__all__ = ["BAD_INPUT", "BadProxyHeaders", "EdgeCollector", "EdgeMetrics", "EdgeProbe", "RefusedHandshakes"]

BAD_INPUT: Final = DropReason.BAD_INPUT
"""The drop reason of client messages the edge refused as malformed or out of place."""
LABELS: Final = ("edge", "protocol")


class EdgeProbe(Protocol):
    """What an edge process shows its collector."""

    hub: EdgeHub
    link: RouterLink
    links: RouterLinks
    latency: LatencySampler

    def client_sessions(self) -> Iterable[ClientSession]:
        """The sessions of the clients connected now."""
        ...

    def bytes_written(self) -> int:
        """Bytes written to clients over the process's life, closed clients included."""
        ...


class EdgeCollector:
    """A Prometheus collector over one edge process (``prometheus_client.registry.Collector``)."""

    def __init__(self, edge: EdgeProbe) -> None:
        self.edge = edge

    @property
    def _labels(self) -> tuple[str, str]:
        return self.edge.link.edge_id, self.edge.hub.protocol

    def collect(self) -> Iterator[Metric]:
        stats = self.edge.hub.stats()
        yield from self._clients(stats)
        yield from self._router()
        yield from self._traffic(stats)
        yield from self._drops(stats)
        yield from self._refusals(stats)
        yield from self._queues()
        labels = dict(zip(LABELS, self._labels, strict=True))
        yield self.edge.latency.family(
            "switchboard_edge_latency_seconds",
            "Producer timestamp to the edge's write, 1 in 16 messages with a timestamp.",
            labels,
        )

    def _one(self, value: float) -> list[tuple[tuple[str, str], float]]:
        return [(self._labels, value)]

    def _clients(self, stats: EdgeStats) -> Iterator[Metric]:
        yield gauge(
            "switchboard_edge_clients", "Client connections with a session.", LABELS, self._one(stats.clients)
        )
        yield gauge(
            "switchboard_edge_topics", "Topics watched for local clients.", LABELS, self._one(stats.topics)
        )

    def _router(self) -> Iterator[Metric]:
        link = self.edge.link
        series = (
            (gauge, "connected", "1 once the router welcomed this edge, 0 while it says hello again.",
             1.0 if link.welcomed.is_set() else 0.0),
            (gauge, "heartbeat_age_seconds", "Seconds since the router was last heard.", link.silent_for),
            (gauge, "control_held", "Control messages waiting for room on the link to the router.",
             link.control_held),
            (gauge, "control_held_peak",
             "The most control messages held at once for the router since the edge started.",
             link.control_held_peak),
            (counter, "control_refused",
             "Control messages refused because --max-queued-control were held (the edge then"
             " registers its clients again).", link.control_refused),
            (counter, "new_connections",
             "Control connections replaced because the router was silent past the heartbeat timeout.",
             link.new_connections),
        )  # fmt: skip
        for family, name, documentation, value in series:
            yield family(f"switchboard_edge_router_{name}", documentation, LABELS, self._one(value))
        links = self.edge.links
        yield gauge(
            "switchboard_edge_router_links",
            "Links to routers: 1, or one per router of a cluster.",
            LABELS,
            self._one(len(links)),
        )
        yield counter(
            "switchboard_edge_router_unsent",
            "Control messages for a router of a cluster that no welcomed link reached.",
            LABELS,
            self._one(links.unsent),
        )
        yield gauge(
            "switchboard_edge_router_links_welcomed",
            "Links whose router welcomed this edge and is not known to be lost.",
            LABELS,
            self._one(sum(link.welcomed.is_set() for link in links)),
        )

    def _traffic(self, stats: EdgeStats) -> Iterator[Metric]:
        links = list(self.edge.links)
        yield counter(
            "switchboard_edge_messages_in",
            "Data messages from the router (from every router of a cluster).",
            LABELS,
            self._one(sum(link.data_messages for link in links)),
        )
        yield counter(
            "switchboard_edge_bytes_in",
            "Payload bytes of the data messages.",
            LABELS,
            self._one(sum(link.data_bytes for link in links)),
        )
        yield counter(
            "switchboard_edge_malformed_data",
            "Data messages from the router dropped as malformed.",
            LABELS,
            self._one(sum(link.malformed_data for link in links)),
        )
        yield counter(
            "switchboard_edge_fenced_data",
            "Data messages of a cluster's router for a topic whose shard another router owns, dropped.",
            LABELS,
            self._one(stats.fenced_data),
        )
        yield counter(
            "switchboard_edge_unanswered_requests",
            "Client connects and subscribes no router answered within --request-timeout (each ended"
            " with unavailable).",
            LABELS,
            self._one(stats.unanswered),
        )
        yield gauge(
            "switchboard_edge_topics_waiting",
            "Topics whose subscriptions have no router to go to now (a cluster's shard with no owner,"
            " or one the edge has no link to).",
            LABELS,
            self._one(stats.topics_waiting),
        )
        yield counter(
            "switchboard_edge_deliveries",
            "Messages handed to a client's queue (one per subscribed client).",
            LABELS,
            self._one(stats.delivered),
        )
        yield counter(
            "switchboard_edge_bytes_out",
            "Bytes written to clients: data frames and replies, framing included.",
            LABELS,
            self._one(self.edge.bytes_written()),
        )
        yield counter(
            "switchboard_edge_recovered_messages",
            "Messages refilled from the router's history.",
            LABELS,
            self._one(stats.recovered),
        )
        yield counter(
            "switchboard_edge_gap_messages",
            "Messages of reliable topics that never reached the edge.",
            LABELS,
            self._one(stats.gaps),
        )

    def _drops(self, stats: EdgeStats) -> Iterator[Metric]:
        reasons = Counter(stats.dropped)
        reasons[BAD_INPUT] += stats.bad_client_messages
        reasons[DropReason.RATE_LIMITED] += stats.rate_limited_client_messages
        rows = [((*self._labels, reason), count) for reason, count in sorted(reasons.items())]
        yield counter("switchboard_edge_drops", "Messages dropped, by reason.", [*LABELS, "reason"], rows)

    def _refusals(self, stats: EdgeStats) -> Iterator[Metric]:
        rows = [((*self._labels, code), count) for code, count in sorted(stats.refused_requests.items())]
        yield counter(
            "switchboard_edge_refused_requests",
            "Subscribes the edge refused by itself, without asking the router, by error code.",
            [*LABELS, "code"],
            rows,
        )

    def _queues(self) -> Iterator[Metric]:
        messages = bytes_ = largest = 0
        for session in self.edge.client_sessions():
            queued = session.queued_messages
            messages += queued
            bytes_ += session.queued_bytes
            largest = max(largest, queued)
        yield gauge(
            "switchboard_edge_queued_messages", "Data frames queued for clients.", LABELS, self._one(messages)
        )
        yield gauge("switchboard_edge_queued_bytes", "Bytes queued for clients.", LABELS, self._one(bytes_))
        yield gauge(
            "switchboard_edge_client_queue_max_messages",
            "Data frames queued for the client with the longest queue.",
            LABELS,
            self._one(largest),
        )


class RefusedHandshakes:
    """A collector of the connections an edge refused at the handshake, by reason."""

    def __init__(self, edge: EdgeProbe, counts: Mapping[str, int]) -> None:
        self.edge = edge
        self.counts = counts

    def collect(self) -> Iterator[Metric]:
        labels = (self.edge.link.edge_id, self.edge.hub.protocol)
        rows = [((*labels, reason), count) for reason, count in sorted(self.counts.items())]
        yield counter(
            "switchboard_edge_refused_connections",
            "Connections refused at the handshake, by reason.",
            [*LABELS, "reason"],
            rows,
        )


class BadProxyHeaders:
    """A collector of the requests whose forwarding header from a trusted proxy was unusable, by
    header (the proxy's own address then stood for the client)."""

    def __init__(self, edge: EdgeProbe, counts: Mapping[str, int]) -> None:
        self.edge = edge
        self.counts = counts

    def collect(self) -> Iterator[Metric]:
        labels = (self.edge.link.edge_id, self.edge.hub.protocol)
        rows = [((*labels, header), count) for header, count in sorted(self.counts.items())]
        yield counter(
            "switchboard_edge_bad_proxy_headers",
            "Connections whose forwarding header from a trusted proxy was unusable, by header.",
            [*LABELS, "header"],
            rows,
        )


class EdgeMetrics:
    """An edge's registry: :meth:`render` is the body of a ``/metrics`` response."""

    content_type: Final = CONTENT_TYPE_PLAIN_0_0_4

    def __init__(self, edge: EdgeProbe) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(EdgeCollector(edge))

    def render(self) -> bytes:
        return generate_latest(self.registry)
