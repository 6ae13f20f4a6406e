"""The edge's counters, and the ``edge_stats`` reports it sends the router from them. No I/O.

Counters cover the hub's whole life: a client that closes hands its figures over with
:meth:`EdgeCounters.retire`. A report carries the totals, every topic's drops, and each registered
client whose figures changed since the last report, split into messages that fit the control link.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from typing import Final

import msgspec

from edges.core.drops import NOT_DROPS
from edges.core.session import ClientSession
from router import wire
from router.core.edge_reports import ClientFigures, EdgeTotals

__all__ = ["REPORT_BUDGET", "EdgeCounters", "EdgeStats", "client_figures", "split_report"]

REPORT_BUDGET: Final = 48 * 1024
"""Bytes of topic and client entries in one ``edge_stats`` message, under the 64 KiB bound."""


class EdgeStats(msgspec.Struct, kw_only=True):
    """Counters over the hub's life (closed clients included) and the current sizes."""

    clients: int
    topics: int
    delivered: int
    dropped: dict[str, int]
    bad_client_messages: int
    rate_limited_client_messages: int = 0
    unexpected_data: int
    unexpected_replies: int
    recovered: int = 0
    """Frames queued from the router's history for clients that were behind."""
    gaps: int = 0
    """Messages of ``reliable`` topics the edge never received from the router (offset gaps)."""
    refused_requests: dict[str, int] = msgspec.field(default_factory=dict)
    """Subscribes the edge refused by itself, without asking the router, by error code."""
    fenced_data: int = 0
    """Data messages of a cluster's router that did not own their topic's shard, dropped."""
    unanswered: int = 0
    """Connects and subscribes that no router answered within the request timeout."""
    topics_waiting: int = 0
    """Topics with subscriptions and no router to send them to (a cluster's shard with no owner,
    or whose owner the edge has no link to yet)."""


class EdgeCounters:
    """What the hub counts itself, what closed clients counted, and what the last report said."""

    def __init__(self) -> None:
        self.delivered = 0
        self.unexpected_data = 0
        self.unexpected_replies = 0
        self.refused: Counter[str] = Counter()
        """Subscribes refused by the hub itself, by error code."""
        self._retired_drops: Counter[str] = Counter()
        self._retired_bad = 0
        self._retired_rate_limited = 0
        self.fenced_data = 0
        self.unanswered = 0
        self._reported: dict[str, dict[str, ClientFigures]] = {}
        """What the last report to each router (``""``: the one router) said of each client."""

    def retire(self, session: ClientSession) -> None:
        """A closed client's counts stay in the totals."""
        self._retired_drops.update(session.dropped)
        self._retired_bad += session.bad_messages
        self._retired_rate_limited += session.rate_limited
        for reported in self._reported.values():
            reported.pop(session.client_id, None)

    def report_all_again(self, router: str | None = None) -> None:
        """The next report (to ``router``; by default to every router) lists every registered
        client (a new router knows none)."""
        if router is None:
            self._reported.clear()
        else:
            self._reported.pop(router, None)

    def stats(self, sessions: Collection[ClientSession], topics: int, recovered: int, gaps: int) -> EdgeStats:
        dropped = Counter(self._retired_drops)
        bad = self._retired_bad
        rate_limited = self._retired_rate_limited
        for session in sessions:
            dropped.update(session.dropped)
            bad += session.bad_messages
            rate_limited += session.rate_limited
        return EdgeStats(
            clients=len(sessions),
            topics=topics,
            delivered=self.delivered,
            dropped=dict(dropped),
            bad_client_messages=bad,
            rate_limited_client_messages=rate_limited,
            unexpected_data=self.unexpected_data,
            unexpected_replies=self.unexpected_replies,
            recovered=recovered,
            gaps=gaps,
            refused_requests=dict(self.refused),
            fenced_data=self.fenced_data,
            unanswered=self.unanswered,
        )

    def report(
        self,
        stats: EdgeStats,
        sessions: Collection[ClientSession],
        registered: Iterable[ClientSession],
        topic_drops: Mapping[str, int],
        router: str = "",
    ) -> list[wire.EdgeStatsReport]:
        """The ``edge_stats`` messages for ``stats``, the open ``sessions`` (the ``registered`` ones
        reported when their figures changed since the last report to ``router``) and each topic's
        drops."""
        totals = EdgeTotals(
            clients=stats.clients,
            delivered=stats.delivered,
            queued_messages=sum(session.queued_messages for session in sessions),
            queued_bytes=sum(session.queued_bytes for session in sessions),
            dropped=stats.dropped,
        )
        return split_report(totals, topic_drops, self._changed(registered, router))

    def _changed(self, sessions: Iterable[ClientSession], router: str) -> list[ClientFigures]:
        reported = self._reported.setdefault(router, {})
        changed = []
        for session in sessions:
            figures = client_figures(session)
            if reported.get(figures.client_id) != figures:
                reported[figures.client_id] = figures
                changed.append(figures)
        return changed


def client_figures(session: ClientSession) -> ClientFigures:
    dropped = sum(n for reason, n in session.dropped.items() if reason not in NOT_DROPS)
    return ClientFigures(session.client_id, session.queued_messages, session.queued_bytes, dropped)


def split_report(
    totals: EdgeTotals, topic_drops: Mapping[str, int], clients: list[ClientFigures]
) -> list[wire.EdgeStatsReport]:
    """One report, or several of at most about :data:`REPORT_BUDGET` bytes of entries each."""
    reports = [wire.EdgeStatsReport(totals=totals)]
    room = REPORT_BUDGET

    def next_entry(name: str) -> wire.EdgeStatsReport:
        nonlocal room
        size = len(name.encode()) + 32
        if size > room:
            reports.append(wire.EdgeStatsReport(totals=totals))
            room = REPORT_BUDGET
        room -= size
        return reports[-1]

    for topic, drops in topic_drops.items():
        next_entry(topic).topic_drops[topic] = drops
    for figures in clients:
        next_entry(figures.client_id).clients.append(figures)
    return reports
