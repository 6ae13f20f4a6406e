"""What every edge process does between its clients and the router, whatever the client protocol.

An edge is a thin shell around the I/O-free :class:`~edges.core.hub.EdgeHub` (every client's
session) and its :class:`~edges.link.RouterLink` (the DEALER and SUB sockets). The
:class:`EdgeShell` feeds the hub what the link receives, carries out the hub's actions, writes each
session that has output to its client's transport, and runs the hub's tick timer. A subclass
(``edges/websocket/edge.py``, ``edges/webrtc/edge.py``) accepts clients, keeps their transports in
:attr:`EdgeShell._transports`, and says how one is closed.

When the router is one of a cluster (it sends a shard map), the shell keeps a link to every router
the map lists (:class:`~edges.router_links.RouterLinks`), sends each of the hub's messages to the
router it names, tells the hub which router welcomed or lost the edge, and hands the hub a router's
data only for the topics whose shard that router owns (the others are dropped and counted).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Coroutine, Sequence
from typing import Generic, Protocol, TypeVar

import msgspec

from edges.core.hub import CloseClient, EdgeAction, EdgeHub, ToRouter, UnwatchData, WatchData
from edges.core.session import EdgeLimits
from edges.latency import LatencySampler
from edges.link import MAX_QUEUED_CONTROL, DataBatch, RouterLink
from edges.router_links import RouterLinks
from router.core.clients import Connection
from router.core.errors import ErrorCode
from router.curve import CurveClient
from router.forwarding import ProxyHeaders
from router.logfmt import configure_logging
from router.logs import ThrottledLog
from router.wire import (
    EdgeMessage,
    Error,
    RouterEndpoints,
    RouterMessage,
    ShardMap,
    WireError,
    parse_data_head,
)

__all__ = [
    "DataFeed",
    "EdgeShell",
    "add_limit_arguments",
    "limits_from_args",
    "run_edge",
]


class DataFeed(Protocol):
    """Something that sees data messages before the hub does (the WebRTC edge's video sources)."""

    @property
    def by_wire(self) -> object:
        """Truthy while the feed wants messages at all."""
        ...

    def feed(self, topic: bytes, payload: bytes) -> None: ...


T = TypeVar("T", bound=Connection)


class EdgeShell(ABC, Generic[T]):
    """The hub, the router link and the loop between them; one subclass per client protocol.

    The subclass keeps each client's transport in :attr:`_transports` by client id while it has a
    session, and implements :meth:`_close_transport`.
    """

    def __init__(
        self,
        hub: EdgeHub,
        *,
        control: str,
        xpub: str,
        heartbeat_interval: float,
        curve: CurveClient | None,
        log: logging.Logger,
        max_queued_control: int = MAX_QUEUED_CONTROL,
    ) -> None:
        self.hub = hub
        self._heartbeat_interval = heartbeat_interval
        self._curve = curve
        self._max_queued_control = max_queued_control
        seed = RouterEndpoints(control=control, xpub=xpub)
        self.link = self._open_link(seed)
        """The link to the router of the command line (the first of a cluster's)."""
        self.links = RouterLinks(self.link, self._link_to, hub.keep_routers_for, seed)
        self._welcomed_as: dict[RouterLink, str] = {}
        """The router id each link was last welcomed by."""
        self.latency = LatencySampler()
        self._transports: dict[str, T] = {}
        """The transport of each client with a session, by client id."""
        self._data_feed: DataFeed | None = None
        """Sees each data message before the hub; ``None``: nothing does."""
        self._stopped = asyncio.Event()
        self._bad_data = ThrottledLog(log)
        self._tick_timer: asyncio.TimerHandle | None = None

    @abstractmethod
    def _close_transport(self, transport: T, code: int, reason: str) -> None:
        """Close a client's transport, as the hub asked (``CloseClient``)."""

    # ------------------------------------------------------------ router links

    def _open_link(self, endpoints: RouterEndpoints, edge_id: str | None = None) -> RouterLink:
        link = RouterLink(
            protocol=self.hub.protocol,
            control=endpoints.control,
            xpub=endpoints.xpub,
            edge_id=edge_id,
            heartbeat_interval=self._heartbeat_interval,
            curve=self._curve,
            max_queued_control=self._max_queued_control,
        )
        self._hook_data(link)
        link.on_message = lambda message: self._on_router_message(message, link)
        link.resync = lambda: self._resync(link)
        link.report = lambda: self.hub.report(self._router_of(link))
        link.on_lost = lambda: self._link_lost(link)
        return link

    def _hook_data(self, link: RouterLink) -> None:
        """Hand the link's data to the hub: all of it with one router, fenced in a cluster."""
        if self.hub.routes is None:
            link.on_data = self._on_data
        else:
            link.on_data = lambda batch: self._on_link_data(link, batch)

    def _link_to(self, endpoints: RouterEndpoints) -> RouterLink:
        """Another router of the cluster: a link with this edge's id, watching every local topic."""
        link = self._open_link(endpoints, self.link.edge_id)
        for topic in self.hub.watched:
            link.watch(topic)
        return link

    def run_links(self) -> Coroutine[None, None, None]:
        """What the edge's serving task runs: every router link until cancelled."""
        return self.links.run(self._heartbeat_interval, self._cluster_tick)

    def _router_of(self, link: RouterLink) -> str:
        """How the hub names the router of ``link``: by its id in a cluster, ``""`` without one."""
        return link.router_id if self.hub.routes is not None else ""

    def _resync(self, link: RouterLink) -> Sequence[EdgeMessage]:
        """What ``link`` sends after a ``welcome``: everything, to the one router; in a cluster, what
        is that router's (the hub's other messages go at the next turn of the loop)."""
        previous = self._welcomed_as.get(link, "")
        self._welcomed_as[link] = link.router_id
        if self.hub.routes is None:
            return self.hub.resync() if link is self.link else []
        messages = self.hub.router_welcomed(link.router_id, previous)
        asyncio.get_running_loop().call_soon(self._carry_out)
        return messages

    def _link_lost(self, link: RouterLink) -> None:
        if self.hub.routes is not None and self.links.to(link.router_id) is None:
            self.hub.router_lost(link.router_id)
            self._carry_out()

    def _cluster_tick(self) -> None:
        """Once a heartbeat interval: the routers heard from keep their maps counting, the hub asks
        again what was refused as ``not_owner``, and links follow the routers listed."""
        routes = self.hub.routes
        if routes is None:
            return
        now = asyncio.get_running_loop().time()
        for link in self.links:
            if link.welcomed.is_set():
                routes.view.heard(link.router_id, now)
        self.hub.cluster_tick()
        self._follow(now)
        self._carry_out()

    def _follow(self, now: float) -> None:
        routes = self.hub.routes
        if routes is None:
            return
        _, closed = self.links.follow(routes.view.routers(now), now)
        for link in closed:
            router_id = self._welcomed_as.pop(link, "")
            if router_id and self.links.to(router_id) is None:
                self.hub.router_lost(router_id)

    # ------------------------------------------------------------ running

    def stop(self) -> None:
        """Make :meth:`serve` return, once every client is closed."""
        self._stopped.set()

    async def _when_welcomed(self, link: asyncio.Task[None], stopped: asyncio.Task[bool]) -> bool:
        """Whether the router welcomed this edge before the link ended or :meth:`stop` was called;
        returns at the first of the three."""
        welcomed = asyncio.create_task(self.link.welcomed.wait())
        await asyncio.wait([welcomed, link, stopped], return_when=asyncio.FIRST_COMPLETED)
        welcomed.cancel()
        return self.link.welcomed.is_set() and not self._stopped.is_set()

    # ------------------------------------------------------------ the hub's output

    def _carry_out(self) -> None:
        """Do what the hub asks, then write every session that has output. A write that empties a
        ``reliable`` lane behind lets it ask the router for what it misses: carried out at once."""
        self._act(self.hub.drain_actions())
        transports = self._transports
        for session in self.hub.sessions_with_output():
            transport = transports.get(session.client_id)
            if transport is not None:
                transport.write()
        if self.hub.catching_up:
            self._act(self.hub.drain_actions())

    def _act(self, actions: list[EdgeAction]) -> None:
        for action in actions:
            match action:
                case ToRouter(message, ""):
                    self.link.send(message)
                case ToRouter(message, router):
                    self.links.send(router, message)
                case WatchData(topic):
                    self.links.watch(topic)
                case UnwatchData(topic):
                    self.links.unwatch(topic)
                case CloseClient(client_id, code, reason):
                    transport = self._transports.get(client_id)
                    if transport is not None:
                        self._close_transport(transport, code, reason)

    def drained(self, transport: object) -> None:
        """A client's transport took all it was given after a pause: a lane behind may ask now."""
        if self.hub.catching_up:
            self._act(self.hub.drain_actions())

    # ------------------------------------------------------------ router

    def _on_link_data(self, link: RouterLink, batch: DataBatch) -> None:
        """In a cluster, only the messages of ``link``'s router for topics of shards it owns go to
        the hub (a local topic's owner is looked up once per message; a topic no client holds is
        the hub's to count); the others are dropped and counted. A batch with nothing to drop goes
        on as it is, not copied."""
        routes = self.hub.routes
        assert routes is not None, "one router's data goes to _on_data"
        owners = routes.owners
        sender = link.router_id if link.welcomed.is_set() else None
        for head, _ in batch:
            owner = owners.get(head[: head.find(b"\0")])
            if owner is not None and owner != sender:
                break
        else:
            self._on_data(batch)
            return
        kept = [
            message
            for message in batch
            if (owner := owners.get(message[0][: message[0].find(b"\0")])) is None or owner == sender
        ]
        self.hub.fenced(len(batch) - len(kept))
        if kept:
            self._on_data(kept)

    def _on_data(self, batch: DataBatch) -> None:
        """Fan the batch out and write it; the latency sampler sees each message that has a
        producer header, and the wall clock once the batch is written."""
        deliver = self.hub.deliver
        feed = self._data_feed
        sample = self.latency.offer
        now = asyncio.get_running_loop().time()
        for head, payload in batch:
            try:
                meta = parse_data_head(head)
            except WireError as error:
                self.link.malformed_data += 1
                self._bad_data.warning("bad_data", "bad data frame from the router: %s", error, now=now)
                continue
            if feed is not None and feed.by_wire:
                feed.feed(meta.topic, bytes(payload))
            deliver(meta.topic, meta.epoch, meta.offset, payload, now)
            if meta.header:
                sample(meta.header)
        self._tick()
        if self.latency.waiting:
            self.latency.written(time.time_ns())

    def _tick(self) -> None:
        """Let the hub release rate-limited frames whose time came; wake again when it asks."""
        loop = asyncio.get_running_loop()
        if self._tick_timer is not None:
            self._tick_timer.cancel()
            self._tick_timer = None
        due = self.hub.tick(loop.time())
        if due is not None:
            self._tick_timer = loop.call_at(due, self._tick)
        self._carry_out()

    def _client_text(self, client_id: str, text: str) -> None:
        """A client's text message to the hub; wake for the deadline of the request it may make."""
        self.hub.client_text(client_id, text, asyncio.get_running_loop().time())
        due = self.hub.next_deadline()
        if due is not None:
            self._wake_by(due)
        self._carry_out()

    def _wake_by(self, when: float) -> None:
        """Make sure :meth:`_tick` runs at ``when`` or earlier (the hub has something due then)."""
        timer = self._tick_timer
        if timer is None or timer.when() > when:
            if timer is not None:
                timer.cancel()
            self._tick_timer = asyncio.get_running_loop().call_at(when, self._tick)

    def _on_router_message(self, message: RouterMessage, link: RouterLink | None = None) -> None:
        link = link or self.link
        if isinstance(message, Error) and message.code == ErrorCode.UNKNOWN_EDGE:
            return  # the link says hello again, and the hub's resync repeats what was lost
        if isinstance(message, ShardMap):
            now = asyncio.get_running_loop().time()
            alone = self.hub.routes is None
            self.hub.shard_map(link.router_id, message, now)
            if alone:
                self._hook_data(self.link)
            self._follow(now)
        else:
            self.hub.router_message(message, self._router_of(link))
        self._carry_out()


class CannotServeError(Exception):
    """The edge cannot start serving (its port cannot be bound): the process says why in one line
    and exits with status 2."""


class _Serving(Protocol):
    link: RouterLink

    @property
    def port(self) -> int: ...

    def stop(self) -> None: ...

    async def serve(self, ready: asyncio.Event | None = None) -> None: ...


async def run_edge(edge: _Serving, announce: bool) -> None:
    """Serve until SIGINT or SIGTERM; with ``announce``, print the bound port as JSON on stdout once
    the router welcomed the edge."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, edge.stop)
    ready = asyncio.Event()
    serving = asyncio.create_task(edge.serve(ready))
    waiting = asyncio.create_task(ready.wait())
    await asyncio.wait([serving, waiting], return_when=asyncio.FIRST_COMPLETED)
    if ready.is_set() and announce:
        print(json.dumps({"event": "ready", "port": edge.port, "edge_id": edge.link.edge_id}), flush=True)
    waiting.cancel()
    await serving


Config = TypeVar("Config")


def edge_main(
    kind: str,
    args: argparse.Namespace,
    config_from_args: Callable[[argparse.Namespace], Config],
    make_edge: Callable[[Config], _Serving],
) -> int:
    """An edge process from its parsed command line: logging, then its config (status 2 with the
    reason when unusable), then serving until SIGINT or SIGTERM."""
    configure_logging(args.log_level, args.log_format)
    try:
        config = config_from_args(args)
    except (ValueError, msgspec.ValidationError) as error:
        print(f"switchboard edge {kind}: {error}", file=sys.stderr)
        return 2
    from router.loop import run_async

    async def serve() -> None:
        await run_edge(make_edge(config), args.announce)

    try:
        with contextlib.suppress(KeyboardInterrupt):
            run_async(serve())
    except CannotServeError as error:
        print(f"switchboard edge {kind}: {error}", file=sys.stderr)
        return 2
    return 0


# ---------------------------------------------------------------- command line


def add_limit_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the per-client bounds; :func:`limits_from_args` reads them back."""
    defaults = EdgeLimits()
    add = parser.add_argument
    add("--max-message-bytes", type=int, default=defaults.max_message_bytes)
    add("--max-subscriptions", type=int, default=defaults.max_subscriptions)
    add("--queue-messages", type=int, default=defaults.queue_max_messages)
    add("--queue-bytes", type=int, default=defaults.queue_max_bytes)
    add(
        "--max-requests-per-second",
        type=float,
        default=defaults.max_requests_per_second,
        help="messages per client per second, ack aside; 0: no cap",
    )
    add("--request-burst", type=int, default=defaults.request_burst)
    add(
        "--request-timeout",
        type=float,
        default=defaults.request_timeout,
        help="seconds a client's connect or subscribe waits for a router's answer",
    )
    add(
        "--batch-max-bytes",
        type=int,
        default=defaults.batch_max_bytes,
        help="bytes of frames in one batch, for clients that ask for batches (WebSocket edge)",
    )


def add_front_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of what stands in front of an edge: reverse proxies and the viewer's origins."""
    add = parser.add_argument
    add(
        "--trusted-proxy",
        action="append",
        default=[],
        metavar="ADDRESS[/BITS]",
        help="a reverse proxy (address or network) whose forwarding headers name the client (repeat)",
    )
    add(
        "--proxy-headers",
        choices=[kind.value for kind in ProxyHeaders],
        default=ProxyHeaders.X_FORWARDED.value,
        help="the headers trusted proxies name the client in: X-Forwarded-For, or Forwarded (RFC 7239)",
    )
    add(
        "--viewer-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="another edge's origin the viewer page may connect to with ?ws= or ?whep= (repeat)",
    )


def limits_from_args(args: argparse.Namespace) -> EdgeLimits:
    """The per-client bounds of :func:`add_limit_arguments`' options."""
    return EdgeLimits(
        max_message_bytes=args.max_message_bytes,
        max_subscriptions=args.max_subscriptions,
        queue_max_messages=args.queue_messages,
        queue_max_bytes=args.queue_bytes,
        max_requests_per_second=args.max_requests_per_second or None,
        request_burst=args.request_burst,
        request_timeout=args.request_timeout,
        batch_max_bytes=args.batch_max_bytes,
    )
