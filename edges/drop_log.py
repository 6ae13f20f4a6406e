"""Log lines for bursts of messages lost to slow clients, a bounded number per interval.

The delivery queues count every drop (``edges/core/delivery.py``) and log nothing, so a flood costs no
log lines per message. Every ``interval`` the edge calls :meth:`DropBursts.check` with its
sessions: each client that lost messages since the last check is a burst, and the :data:`MOST`
that lost the most get a line each, with the client's id and the main reason; one more line says
how many other clients lost messages. Only losses count (:data:`LOSS_REASONS`): a ``latest``
topic's conflation and a rate limit are the configured behaviour, and frames dropped with an
unsubscribe or a close were not wanted any more.
"""

from __future__ import annotations

import heapq
import logging
from collections import Counter
from collections.abc import Iterable
from typing import Final

from edges.core.drops import LOSS_REASONS, DropReason
from edges.core.session import ClientSession

__all__ = ["LOSS_REASONS", "MOST", "DropBursts"]

MOST: Final = 5


class DropBursts:
    """Remembers each client's losses at the last check, to log what grew since."""

    def __init__(self, logger: logging.Logger, edge_id: str, interval: float) -> None:
        self.logger = logger
        self.edge_id = edge_id
        self.interval = interval
        self._last: dict[str, int] = {}

    def check(self, sessions: Iterable[ClientSession]) -> None:
        bursts: list[tuple[int, str, Counter[DropReason]]] = []
        seen: dict[str, int] = {}
        for session in sessions:
            lost = sum(session.dropped[reason] for reason in LOSS_REASONS)
            if lost:
                seen[session.client_id] = lost
                grew = lost - self._last.get(session.client_id, 0)
                if grew > 0:
                    bursts.append((grew, session.client_id, session.dropped))
        self._last = seen
        for grew, client_id, dropped in heapq.nlargest(MOST, bursts):
            self._log_client(client_id, grew, dropped)
        if len(bursts) > MOST:
            others = len(bursts) - MOST
            self.logger.warning(
                "%d more clients lost messages in the last %.0f s",
                others,
                self.interval,
                extra={"edge_id": self.edge_id, "clients": others},
            )

    def _log_client(self, client_id: str, grew: int, dropped: Counter[DropReason]) -> None:
        reason = max(LOSS_REASONS, key=lambda r: dropped[r])
        self.logger.warning(
            "client %s lost %d messages in the last %.0f s (mostly %s)",
            client_id,
            grew,
            self.interval,
            reason,
            extra={"client_id": client_id, "edge_id": self.edge_id, "reason": reason, "count": grew},
        )
