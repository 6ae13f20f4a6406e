"""An edge's links to the routers of a cluster: the one its command line names, and one per router
the shard view lists.

Every link is a :class:`~edges.link.RouterLink` (a DEALER and a SUB) with the edge's one id; each
says ``hello`` and keeps its own heartbeats and welcome secret, as the only link does without a
cluster. :class:`RouterLinks` opens a link for each router the view lists that no link reaches yet,
and closes one whose router the view has not listed for ``keep_for`` seconds. The link of the
command line (the *seed*) is never closed: it is how the edge finds the cluster again. What the
links carry, and for whom, is the shell's business (``edges/shell.py``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import zmq

from edges.link import RouterLink
from router.logs import ThrottledLog
from router.wire import EdgeMessage, RouterEndpoints

__all__ = ["RouterLinks"]

log = logging.getLogger("switchboard.edge")


@dataclass(eq=False)
class _Extra:
    """A link opened for a router of the view, and since when the view has not listed it."""

    link: RouterLink
    endpoints: RouterEndpoints
    task: asyncio.Task[None] | None = None
    unlisted_since: float | None = None


class RouterLinks:
    """The seed link and the links opened for the other routers of a cluster.

    ``make`` opens a link to a router's endpoints; ``keep_for``: seconds a link whose router the
    view stopped listing stays open (it may come back, or be listed again under its new id).
    """

    def __init__(
        self,
        seed: RouterLink,
        make: Callable[[RouterEndpoints], RouterLink],
        keep_for: float,
        seed_endpoints: RouterEndpoints | None = None,
    ) -> None:
        self.seed = seed
        self.seed_endpoints = seed_endpoints
        self._make = make
        self.keep_for = keep_for
        self._extra: dict[str, _Extra] = {}
        """By the router id the view listed it under."""
        self._group: asyncio.TaskGroup | None = None
        self.unsent = 0
        """Messages for a router no welcomed link reached: their requests wait until that router
        is welcomed again (a resync) or lost."""
        self._bad_endpoint = ThrottledLog(log)

    def __iter__(self) -> Iterator[RouterLink]:
        yield self.seed
        for extra in self._extra.values():
            yield extra.link

    def __len__(self) -> int:
        return 1 + len(self._extra)

    @property
    def welcomed(self) -> bool:
        """Whether some router welcomes this edge now."""
        return any(link.welcomed.is_set() for link in self)

    def to(self, router_id: str) -> RouterLink | None:
        """The welcomed link to ``router_id``."""
        for link in self:
            if link.router_id == router_id and link.welcomed.is_set():
                return link
        return None

    def send(self, router_id: str, message: EdgeMessage) -> bool:
        """Send ``message`` to ``router_id``; ``False``, counted in :attr:`unsent`, when no
        welcomed link reaches it."""
        link = self.to(router_id)
        if link is not None and link.send(message):
            return True
        self.unsent += 1
        return False

    def watch(self, topic: str) -> None:
        for link in self:
            link.watch(topic)

    def unwatch(self, topic: str) -> None:
        for link in self:
            link.unwatch(topic)

    # ------------------------------------------------------------ following the view

    def follow(
        self, listed: Mapping[str, RouterEndpoints], now: float
    ) -> tuple[list[RouterLink], list[RouterLink]]:
        """Open a link for each router of ``listed`` that no link reaches (by its id or its
        control endpoint), and close those whose router has not been listed for :attr:`keep_for`
        seconds (or that reach the same router as another link). Returns the links opened and
        those closed; an opened one runs once :meth:`run` runs."""
        closed = self._close_unlisted(listed, now)
        reached = {link.router_id for link in self if link.router_id} | set(self._extra)
        linked = {extra.endpoints.control for extra in self._extra.values()}
        if self.seed_endpoints is not None:
            linked.add(self.seed_endpoints.control)
        opened = []
        for router_id, endpoints in listed.items():
            if router_id not in reached and endpoints.control not in linked:
                try:
                    link = self._make(endpoints)
                except zmq.ZMQError as error:
                    self._bad_endpoint.warning(
                        router_id, "router %s: cannot link to %s: %s", router_id, endpoints, error, now=now
                    )
                    continue
                self._extra[router_id] = extra = _Extra(link, endpoints)
                self._start(extra)
                opened.append(link)
                log.info("linking to router %s at %s", router_id, endpoints.control)
        return opened, closed

    def _close_unlisted(self, listed: Mapping[str, RouterEndpoints], now: float) -> list[RouterLink]:
        closed = []
        seen = {self.seed.router_id} if self.seed.router_id else set()
        for key, extra in list(self._extra.items()):
            link = extra.link
            current = link.router_id or key
            duplicate = current in seen
            seen.add(current)
            if (current in listed or key in listed) and not duplicate:
                extra.unlisted_since = None
                continue
            if extra.unlisted_since is None:
                extra.unlisted_since = now
            if duplicate or now - extra.unlisted_since > self.keep_for:
                del self._extra[key]
                self._stop(extra)
                closed.append(link)
                log.info("closed the link to router %s", current)
        return closed

    # ------------------------------------------------------------ running

    async def run(self, every: float, tick: Callable[[], None]) -> None:
        """Run every link until cancelled, and call ``tick`` every ``every`` seconds."""
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                group.create_task(self.seed.run())
                for extra in self._extra.values():
                    self._start(extra)
                while True:
                    await asyncio.sleep(every)
                    tick()
        finally:
            self._group = None
            for extra in self._extra.values():
                extra.link.close()

    def _start(self, extra: _Extra) -> None:
        if self._group is not None and extra.task is None:
            extra.task = self._group.create_task(extra.link.run())

    def _stop(self, extra: _Extra) -> None:
        if extra.task is not None:
            extra.task.cancel()
        else:
            extra.link.close()
