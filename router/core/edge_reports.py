"""What each edge reports about its clients and topics, kept by the router. No I/O.

An edge sends ``edge_stats`` reports (``docs/protocol.md``, 3.4): its totals, the drops of each
topic it serves, and the figures of each client that changed since its last report. The router
keeps the newest figures of every edge here, so the admin API can show a client's queue depth and
drops, and :meth:`~router.core.ConnectionManager.get_connection_stats` can add up all edges.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Container, Iterable, Mapping
from typing import NamedTuple

import msgspec

__all__ = ["ClientFigures", "DropIncrease", "EdgeFigures", "EdgeTotals", "drop_increases"]


class ClientFigures(msgspec.Struct, frozen=True, array_like=True):
    """One client at its edge: data frames and bytes waiting in its queue, and the messages it
    did not get since it connected (every drop reason together)."""

    client_id: str
    queued_messages: int
    queued_bytes: int
    dropped: int


class EdgeTotals(msgspec.Struct, frozen=True, kw_only=True):
    """One edge's figures over its life (``delivered``, ``dropped`` by reason) and now (the rest)."""

    clients: int = 0
    delivered: int = 0
    queued_messages: int = 0
    queued_bytes: int = 0
    dropped: dict[str, int] = {}


class EdgeFigures:
    """The newest figures one edge reported. A report may list only part of the edge's clients
    and topics (the ones that changed, or one slice of many): each entry replaces the one before,
    and entries the router no longer needs are forgotten through :meth:`forget_client` and
    :meth:`keep_topics`."""

    __slots__ = ("clients", "reported_at", "topic_drops", "totals")

    def __init__(self) -> None:
        self.totals = EdgeTotals()
        self.clients: dict[str, ClientFigures] = {}
        self.topic_drops: dict[str, int] = {}
        self.reported_at: float | None = None
        """When the newest report arrived (the router's monotonic clock); ``None`` before one."""

    def update(
        self,
        totals: EdgeTotals,
        topic_drops: Mapping[str, int],
        clients: Iterable[ClientFigures],
        known_clients: Container[str],
        now: float,
    ) -> None:
        """Take one report. Figures of clients not in ``known_clients`` (the edge's clients
        registered with this router) are ignored."""
        self.totals = totals
        self.topic_drops.update(topic_drops)
        for figures in clients:
            if figures.client_id in known_clients:
                self.clients[figures.client_id] = figures
        self.reported_at = now

    def forget_client(self, client_id: str) -> None:
        self.clients.pop(client_id, None)

    def keep_topics(self, topics: Iterable[str]) -> None:
        """Forget the drops of every topic not in ``topics``."""
        wanted = set(topics)
        for name in [t for t in self.topic_drops if t not in wanted]:
            del self.topic_drops[name]


class DropIncrease(NamedTuple):
    """``dropped`` more messages of ``topic`` not delivered by one edge, over ``window`` seconds."""

    topic: str
    dropped: int
    window: float


def drop_increases(
    before: Mapping[str, int], after: Mapping[str, int], reported: Iterable[str], window: float
) -> list[DropIncrease]:
    """How the drops of the ``reported`` topics grew from ``before`` to ``after``. A count lower
    than before started again (the topic's last local client left in between), so all of it is
    new; a topic missing from ``after`` is one the router does not keep."""
    increases: list[DropIncrease] = []
    for topic in reported:
        now, then = after.get(topic, 0), before.get(topic, 0)
        count = now - then if now >= then else now
        if count > 0:
            increases.append(DropIncrease(topic, count, window))
    return increases


def add_totals(all_totals: Iterable[EdgeTotals]) -> EdgeTotals:
    """The sum of several edges' totals."""
    clients = delivered = queued_messages = queued_bytes = 0
    dropped: Counter[str] = Counter()
    for totals in all_totals:
        clients += totals.clients
        delivered += totals.delivered
        queued_messages += totals.queued_messages
        queued_bytes += totals.queued_bytes
        dropped.update(totals.dropped)
    return EdgeTotals(
        clients=clients,
        delivered=delivered,
        queued_messages=queued_messages,
        queued_bytes=queued_bytes,
        dropped=dict(dropped),
    )
