"""EdgeHub: every client of one edge, their subscriptions, and the fan-out of data to them. No I/O.

The shell feeds the hub (client messages, router replies, data from the SUB socket), then drains
:meth:`EdgeHub.drain_actions` (messages for the router, SUB socket changes, clients to close) and
:meth:`EdgeHub.sessions_with_output` (sessions whose :meth:`~edges.core.session.ClientSession.data_to_send`
has something to write). Actions must be carried out in the order given.

The hub holds each client (:mod:`edges.core.client`), which owns one
:class:`~edges.core.subscription.Subscription` per topic and handles its own requests; it indexes
the subscriptions by topic and fans each message out, building its frame once
(:mod:`edges.core.fanout`). The shell gives the time: ``now`` to :meth:`EdgeHub.deliver`, and
:meth:`EdgeHub.tick` when a rate-limited ``latest`` frame is due. ``reliable`` subscriptions that
owe messages are refilled from the router's history (:mod:`edges.core.catch_up`): the shell drains
the actions again after writing to clients while :attr:`EdgeHub.catching_up`. After a router
restart, :meth:`EdgeHub.resync` rebuilds the edge's state there.

With a cluster of routers (from the first :meth:`EdgeHub.shard_map` on), each request goes where
:attr:`EdgeHub.routes` say (``ToRouter.router``), a topic's subscriptions move when its shard
changes owner, and a router welcomed again gets back only what is its own
(:meth:`EdgeHub.router_welcomed`); with one router, none of this happens.

The hub logs one thing itself, through a :class:`~router.logs.ThrottledLog`: the subscribes it
refuses without asking the router (bad topic, the per-client limit, a repeated subscribe), which
:attr:`EdgeStats.refused_requests` also counts.
"""

from __future__ import annotations

import logging
from typing import Final, NamedTuple

from edges.core.actions import CloseClient, EdgeAction, ToRouter, UnwatchData, WatchData
from edges.core.catch_up import CatchUp
from edges.core.client import EdgeClient, Refusal
from edges.core.client_wire import CloseCode, Connect, Refresh, Subscribe, Unsubscribe
from edges.core.deadlines import Deadlines
from edges.core.fanout import Fanout
from edges.core.output import Data, Framing, Payload, data_frame
from edges.core.reports import EdgeCounters, EdgeStats
from edges.core.requests import Reply, RequestKind, RouterRequest, RouterRequests
from edges.core.routes import Routes
from edges.core.session import ClientSession, EdgeLimits, State
from edges.core.shard_view import KEEP_FOR, ShardView
from edges.core.subscription import Subscription
from router import wire
from router.core.errors import ErrorCode
from router.core.policy import DeliveryPolicy
from router.logs import ThrottledLog

__all__ = [
    "CloseClient",
    "EdgeAction",
    "EdgeHub",
    "EdgeLimits",
    "EdgeStats",
    "ToRouter",
    "UnwatchData",
    "WatchData",
]

log = logging.getLogger("switchboard.edge")

REFUSAL_LOG_BURST: Final = 20
"""Lines logged per error code of refused subscribes every 5 seconds; the rest are counted."""


class Awaited(NamedTuple):
    """A client's connect (``subscription`` ``None``) or subscribe that waits for a router."""

    client_id: str
    subscription: Subscription | None = None


class EdgeHub:
    """All clients of one edge, their subscriptions by topic, router requests and fan-out."""

    def __init__(
        self,
        limits: EdgeLimits | None = None,
        *,
        protocol: str = "websocket",
        framing: Framing | None = None,
        recovery: bool = True,
        keep_routers_for: float = KEEP_FOR,
        batching: bool = False,
    ) -> None:
        """``framing`` heads each data frame for the transport, once per message (the WebSocket
        edge frames it as a WebSocket binary message), and each skipped frame; by default frames go
        as they are. Without ``recovery`` the hub never asks the router's history: a
        ``reliable`` client that fell behind skips what it missed once its queue is drained.
        ``keep_routers_for``: see :attr:`ShardView.keep_for`. With ``batching``, a client that
        asks for batches in ``connect`` gets them (the shell writes them)."""
        self.limits = limits or EdgeLimits()
        self.protocol = protocol
        self.recovery = recovery
        self.keep_routers_for = keep_routers_for
        self._routes: Routes | None = None
        self._framing = framing
        self._batching = batching
        self._clients: dict[str, EdgeClient] = {}
        self._actions: list[EdgeAction] = []
        self._with_output: dict[str, ClientSession] = {}
        self._counters = EdgeCounters()
        self._requests = RouterRequests(self._actions)
        self._catch_up = CatchUp(self._requests, self._frame, enabled=recovery)
        self._fanout = Fanout(self._catch_up, self._frame, self._actions, self._with_output, self._counters)
        self._refusal_log = ThrottledLog(log, burst=REFUSAL_LOG_BURST)
        self._last_now = 0.0
        """The newest time a client message came with, which paces the refusal log."""
        self._connect_deadlines = Deadlines[str](self.limits.connect_timeout, "the connect timeout")
        self._answer_deadlines = Deadlines[Awaited](self.limits.request_timeout, "the request timeout")
        """Connects and subscribes of clients that wait for a router's answer."""

    # ------------------------------------------------------------ output

    def drain_actions(self) -> list[EdgeAction]:
        """What the shell must do now, in order."""
        if self._catch_up:
            self._catch_up.ask()
        actions = self._actions.copy()
        self._actions.clear()
        return actions

    @property
    def catching_up(self) -> bool:
        """Some ``reliable`` subscription waits to be refilled: after writing to clients, drain the
        actions again, since one whose queue the write emptied asks for its next messages then."""
        return bool(self._catch_up)

    def sessions_with_output(self) -> list[ClientSession]:
        """Sessions that got something to write since the last call."""
        sessions = list(self._with_output.values())
        self._with_output.clear()
        return sessions

    # ------------------------------------------------------------ clients

    def open_client(self, client_id: str, remote: str = "", now: float | None = None) -> ClientSession:
        """A transport was accepted. ``client_id`` must be unique on this edge. Opened at ``now``,
        the client has :attr:`EdgeLimits.connect_timeout` seconds to send ``connect`` before
        :meth:`tick` closes it; without ``now`` it has no deadline (a WebRTC offer connects at once)."""
        if client_id in self._clients:
            raise ValueError(f"client {client_id!r} is already open")
        session = ClientSession(
            client_id,
            remote,
            self.limits,
            framing=self._framing,
            recoverable=self.recovery,
            batching=self._batching,
        )
        self._clients[client_id] = EdgeClient(session, self._requests, self._fanout)
        if now is not None:
            self._connect_deadlines.add(client_id, now)
        return session

    def session(self, client_id: str) -> ClientSession | None:
        client = self._clients.get(client_id)
        return client.session if client is not None else None

    def client_text(self, client_id: str, text: str, now: float | None = None) -> None:
        """One text message from a client, received at ``now`` (seconds of a monotonic clock;
        without it the client's request rate is not checked)."""
        client = self._client(client_id)
        if now is not None:
            self._last_now = now
        match client.session.receive_text(text, now):
            case Connect() as connect:
                client.connect(connect.token, self.protocol)
                if now is not None:
                    self._answer_deadlines.add(Awaited(client_id), now)
            case Subscribe() as subscribe:
                self._subscribe(client, subscribe, now)
            case Unsubscribe() as unsubscribe:
                client.unsubscribe(unsubscribe)
            case Refresh() as refresh:
                client.refresh(refresh)
        self._settle(client)

    def _subscribe(self, client: EdgeClient, subscribe: Subscribe, now: float | None) -> None:
        refusal = client.subscribe(subscribe, self.limits.max_subscriptions)
        if refusal is not None:
            self._refused_subscribe(client.client_id, subscribe.topic, refusal)
            return
        if now is not None:
            self._answer_deadlines.add(Awaited(client.client_id, client.subscriptions[subscribe.topic]), now)
        if self._routes is not None:
            self._settle_topic(subscribe.topic)

    def _refused_subscribe(self, client_id: str, topic: str, refusal: Refusal) -> None:
        """Count and log a subscribe the edge refused, at most :data:`REFUSAL_LOG_BURST` lines per
        code every 5 seconds."""
        code, message = refusal
        self._counters.refused[code] += 1
        ids = {"client_id": client_id, "topic": topic[:80], "reason": code}
        self._refusal_log.info(
            f"subscribe-{code}",
            "refused subscribe of %s: %s",
            client_id,
            message,
            now=self._last_now,
            extra=ids,
        )

    def client_connect(self, client_id: str, connect: Connect) -> None:
        """A ``connect`` that came from elsewhere than a text message (a WebRTC offer's token)."""
        client = self._client(client_id)
        if client.session.receive(connect) is not None:
            client.connect(connect.token, self.protocol)
        self._settle(client)

    def client_binary(self, client_id: str, data: bytes, now: float | None = None) -> None:
        """One binary message from a client (always refused)."""
        client = self._client(client_id)
        client.session.receive_binary(data, now)
        self._settle(client)

    def close_client(self, client_id: str, code: int = CloseCode.GOING_AWAY, reason: str = "") -> None:
        """The edge closes a client (for example, at shutdown). Ignored if it is already closing."""
        client = self._clients.get(client_id)
        if client is not None and client.session.is_open:
            client.session.close(code, reason)
            self._settle(client)

    def client_closed(self, client_id: str, reason: str = "connection closed") -> None:
        """The client's transport is closed (``reason`` says how, for the router's events and
        logs); forget it. Unknown ids are ignored."""
        client = self._clients.pop(client_id, None)
        if client is None:
            return
        client.session.connection_lost()
        if not client.close_sent:
            client.forget(reason)
        self._with_output.pop(client_id, None)
        self._counters.retire(client.session)

    def _client(self, client_id: str) -> EdgeClient:
        client = self._clients.get(client_id)
        if client is None:
            raise KeyError(f"no open client {client_id!r}")
        return client

    def _settle(self, client: EdgeClient) -> None:
        """After any change to a session: note its output, and carry out a close it started."""
        session = client.session
        if session.has_output:
            self._with_output[session.client_id] = session
        close = client.close_to_carry_out()
        if close is not None:
            client.forget(f"{close.reason or 'closed by the edge'} ({close.code})")
            self._actions.append(CloseClient(session.client_id, *close))

    @property
    def watched(self) -> list[str]:
        """Every topic a local client holds, which the SUB sockets watch."""
        return list(self._fanout.by_name)

    def policy_of(self, topic: str) -> DeliveryPolicy | None:
        """The topic's policy as the router last gave it, or ``None`` before any."""
        state = self._fanout.by_name.get(topic)
        return state.policy if state is not None else None

    # ------------------------------------------------------------ data

    def deliver(
        self, topic: bytes, epoch: int, offset: int, payload: Payload, now: float | None = None
    ) -> int:
        """Fan one message out to the topic's confirmed subscribers; returns to how many.

        The frame is built once and the same object goes to every subscriber's lane, which queues,
        holds or skips it under the topic's policy. A subscriber skips messages at or before the
        position its ``subscribed`` announced in the same epoch. ``now`` (seconds, from the shell)
        drives rate limits; without it the hub uses the last time it was given, and applies no
        rate limit before it was given any.
        """
        count = self._fanout.deliver(topic, epoch, offset, payload, now)
        if self._fanout.too_slow:
            self._close_too_slow()
        return count

    def tick(self, now: float) -> float | None:
        """Time passed: queue the rate-limited ``latest`` frames whose token came, close the
        clients that sent no ``connect`` in time, and end the connects and subscribes no router
        answered in time.

        Returns when to call again (the earliest time a held frame can go or a deadline passes),
        or ``None`` when there is neither. Costs nothing when there is neither.
        """
        due = self._fanout.tick(now)
        if self._fanout.too_slow:
            self._close_too_slow()
        if self._connect_deadlines:
            self._close_unconnected(self._connect_deadlines.expired(now))
        if self._answer_deadlines:
            self._end_unanswered(self._answer_deadlines.expired(now))
        deadline = self.next_deadline()
        return deadline if due is None or (deadline is not None and deadline < due) else due

    def next_deadline(self) -> float | None:
        """The earliest time :meth:`tick` has a client or a request to end, if any."""
        dues = [d for d in (self._connect_deadlines.next_due(), self._answer_deadlines.next_due()) if d]
        return min(dues, default=None)

    def _close_unconnected(self, client_ids: list[str]) -> None:
        reason = f"no connect within {self.limits.connect_timeout:g} s"
        for client_id in client_ids:
            client = self._clients.get(client_id)
            if client is not None and client.session.state is State.AWAITING_CONNECT:
                client.session.close(CloseCode.CONNECT_TIMEOUT, reason)
                self._settle(client)

    def _end_unanswered(self, awaited: list[Awaited]) -> None:
        """A connect still unanswered closes its client; a subscribe still unanswered ends with
        ``unavailable`` (the router is told to forget it, should the request reach it late)."""
        timeout = self.limits.request_timeout
        for client_id, sub in awaited:
            client = self._clients.get(client_id)
            if client is None or not client.session.is_open:
                continue
            if sub is None:
                if client.session.state is State.REGISTERING:
                    self._counters.unanswered += 1
                    client.unanswered_connect(f"no router answered connect within {timeout:g} s")
            elif client.subscriptions.get(sub.topic) is sub and not sub.confirmed:
                self._counters.unanswered += 1
                client.unanswered_subscribe(sub, f"no router answered within {timeout:g} s; subscribe again")
            self._settle(client)

    def _frame(self, channel: int, offset: int, payload: Payload) -> Data:
        return data_frame(channel, offset, payload, self._framing)

    def _close_too_slow(self) -> None:
        sessions, self._fanout.too_slow = self._fanout.too_slow, []
        for session in sessions:
            client = self._clients.get(session.client_id)
            if client is not None and session.is_open:
                session.close(CloseCode.TOO_SLOW, "too slow")
                self._settle(client)

    # ------------------------------------------------------------ router messages

    def router_message(self, message: wire.RouterMessage, router: str = "") -> None:
        """A message from the router (with a cluster: from the router ``router``). Welcome,
        Heartbeat and Stats belong to the link, and ShardMap to :meth:`shard_map`: ignored. In a
        cluster, a topic's policy is taken from its owner only."""
        match message:
            case wire.Registered() | wire.Refreshed() | wire.SubscribeOk() | wire.Unsubscribed():
                self._reply(message, router)
            case wire.Recovered() | wire.Error():
                self._reply(message, router)
            case wire.DropClient():
                self._drop(message)
            case wire.PolicyUpdate():
                if self._routes is None or self._routes.owner(message.topic) == router:
                    self._fanout.set_policy(message.topic, message.policy)
        if self._fanout.too_slow:
            self._close_too_slow()

    def _reply(self, message: Reply, router: str) -> None:
        request = self._requests.take(message, router)
        if request is None:
            self._unmatched(message, router)
            return
        if (
            self._routes is not None
            and isinstance(message, wire.Error)
            and message.code == ErrorCode.NOT_OWNER
            and request.topic
        ):
            self._not_owner(message.request_id, request, router)
            return
        client = self._clients[request.client_id]
        match message:
            case wire.Recovered():
                if self._catch_up.recovered(message.request_id, request, message):
                    self._with_output[client.client_id] = client.session
            case wire.Error() if request.kind is RequestKind.RECOVER:
                self._recovery_failed(message.request_id, request)
            case _:
                client.reply(request, message)
        self._settle(client)

    def _recovery_failed(self, request_id: int, request: RouterRequest) -> None:
        if self._catch_up.failed(request_id, request):
            session = self._clients[request.client_id].session
            self._with_output[session.client_id] = session

    def _drop(self, message: wire.DropClient) -> None:
        client = self._clients.get(message.client_id)
        if client is None or not client.session.is_open:
            self._counters.unexpected_replies += 1
            return
        client.known_to_router = False
        code = CloseCode.GOING_AWAY if message.code == CloseCode.GOING_AWAY else CloseCode.DROPPED
        client.session.close(code, message.reason)
        self._settle(client)

    # ------------------------------------------------------------ router restart

    def resync(self) -> list[wire.EdgeMessage]:
        """After a router restart: the messages that rebuild this edge's state there, in order.

        The caller sends ``Hello`` first, then these. Requests in flight were lost with the old
        router: unsubscribes are answered now, catch-ups end (the new router's history is of
        another epoch), registers and subscribes are sent again, and token refreshes after them (a
        client registers with the last token the router accepted).
        """
        lost = self._requests.lose_all()
        self._counters.report_all_again()
        refreshes = []
        for request_id, request in lost.items():
            if request.kind is RequestKind.UNSUBSCRIBE:
                client = self._clients[request.client_id]
                client.unsubscribed(request)
                self._settle(client)
            elif request.kind is RequestKind.RECOVER:
                self._recovery_failed(request_id, request)
            elif request.kind is RequestKind.REFRESH:
                refreshes.append(request)
        messages: list[wire.EdgeMessage] = []
        for client in self._clients.values():
            messages += client.resync(self.protocol)
        for request in refreshes:
            client = self._clients[request.client_id]
            if client.session.state is State.READY:
                request_id = self._requests.add(request)
                messages.append(
                    wire.RefreshToken(request_id=request_id, client_id=client.client_id, token=request.token)
                )
        return messages

    # ------------------------------------------------------------ a cluster of routers

    @property
    def routes(self) -> Routes | None:
        """Where requests go in a cluster of routers, and who owns each local topic; ``None``
        until a router sends a shard map (with one router, always)."""
        return self._routes

    def shard_map(self, router: str, shard_map: wire.ShardMap, now: float) -> None:
        """A shard map from ``router`` (the id its link was welcomed with), received at ``now``.

        The first one starts cluster mode: that router has every request in flight and every
        subscription so far, and those of topics it does not serve move. From then on, each topic
        whose shard changed owner (another router, or a new lease: the old holder forgot its
        subscriptions) moves to the new owner, and topics refused as ``not_owner`` are asked for
        again."""
        routes = self._routes
        first = routes is None
        if routes is None:
            routes = self._start_cluster(router)
        changed = set(routes.view.apply(router, shard_map, now))
        if not (changed or first):
            return
        routes.view_changed()
        shard_of = routes.view.shard_of
        for name in list(self._fanout.by_name):
            elsewhere = routes.home(name) != routes.owner(name)
            if elsewhere if first else shard_of(name.encode()) in changed:
                self._unsettle(name)
        routes.unblock()
        self._settle_all()

    def _start_cluster(self, router: str) -> Routes:
        routes = self._routes = Routes(ShardView(self.keep_routers_for))
        routes.welcomed.add(router)
        self._requests.route(routes.destinations, routes.everyone, router)
        self._fanout.routes = routes
        for name in self._fanout.by_name:
            routes.topic_added(name)
            routes.settle(name, router)
        self._counters.report_all_again()
        log.info("router %s sent a shard map: talking to a cluster of routers", router)
        return routes

    def router_welcomed(self, router: str, replaces: str = "") -> list[wire.EdgeMessage]:
        """A router of the cluster welcomed the edge (again; its link was welcomed as ``replaces``
        before, when that is another id): what to send it, in order.

        What was in flight to it is lost, and nothing else: unsubscribes are answered now,
        recovers asked again, refreshes sent again. It gets a register for every client (silent
        but for a client still waiting for its only register), then the subscriptions of every
        topic it owns. Messages for other routers (topics that could not go anywhere before) wait
        in :meth:`drain_actions`."""
        routes = self._routes
        assert routes is not None, "a router of a cluster"
        start = len(self._actions)
        lost = self._forget_router(router)
        if replaces and replaces != router:
            lost |= self._forget_router(replaces)
        routes.welcomed.add(router)
        self._counters.report_all_again(router)
        refreshes = []
        for request_id, request in lost.items():
            if request.kind is RequestKind.REFRESH:
                refreshes.append(request)
            elif request.kind is not RequestKind.REGISTER:
                self._lost(request_id, request)
        for client in self._clients.values():
            client.register_with(self.protocol, router)
        for request in refreshes:
            self._clients[request.client_id].refresh_again(request, (router,))
        self._settle_all()
        mine: list[wire.EdgeMessage] = []
        others: list[EdgeAction] = []
        for action in self._actions[start:]:
            if isinstance(action, ToRouter) and action.router == router:
                mine.append(action.message)
            else:
                others.append(action)
        self._actions[start:] = others
        return mine

    def router_lost(self, router: str) -> None:
        """A router of the cluster no longer welcomes the edge (silent, restarted, or its link was
        closed): it will answer nothing it was asked, and forgets the edge's clients when it says
        ``welcome`` again. Registers and refreshes it alone had go to the other routers; its
        topics wait for it, or go to their new owner."""
        routes = self._routes
        if routes is None:
            return
        lost = self._forget_router(router)
        self._counters.report_all_again(router)
        for request_id, request in lost.items():
            client = self._clients[request.client_id]
            if request.kind is RequestKind.REGISTER:
                if not request.silent:
                    client.register_again(self.protocol)
            elif request.kind is RequestKind.REFRESH:
                client.refresh_again(request)
            else:
                self._lost(request_id, request)
        self._settle_all()

    def cluster_tick(self) -> None:
        """Ask again for the topics a router answered ``not_owner`` for (call about once a second)."""
        routes = self._routes
        if routes is not None and routes.unblock():
            self._settle_all()

    def fenced(self, count: int) -> None:
        """The shell dropped ``count`` data messages of routers that do not own their topic."""
        self._counters.fenced_data += count

    def _forget_router(self, router: str) -> dict[int, RouterRequest]:
        routes = self._routes
        assert routes is not None
        routes.welcomed.discard(router)
        for name in routes.homed_at(router):
            routes.unsettle(name)
        return self._requests.lose_router(router)

    def _unsettle(self, name: str) -> None:
        """The topic's subscriptions are no longer at its home: what was in flight there is lost."""
        assert self._routes is not None
        self._routes.unsettle(name)
        for request_id, request in self._requests.lose_topic(name).items():
            self._lost(request_id, request)

    def _lost(self, request_id: int, request: RouterRequest) -> None:
        """A topic's request no router will answer: an unsubscribe is done (its router forgot the
        subscription), a recover is asked again. A subscribe is sent again with its topic's."""
        match request.kind:
            case RequestKind.UNSUBSCRIBE:
                client = self._clients[request.client_id]
                client.unsubscribed(request)
                self._settle(client)
            case RequestKind.RECOVER:
                self._catch_up.redirect(request_id, request)

    def _not_owner(self, request_id: int, request: RouterRequest, router: str) -> None:
        """``router`` does not serve the topic (the view is behind): it holds none of its
        subscriptions, and is asked again once the view changes or at :meth:`cluster_tick`."""
        assert self._routes is not None
        self._routes.block(request.topic, router)
        self._lost(request_id, request)
        for other_id, other in self._requests.lose_topic(request.topic).items():
            self._lost(other_id, other)

    def _unmatched(self, message: Reply, router: str) -> None:
        """A reply that answers no request in flight: another router's answer to a register or
        refresh answered already (a refresh's revocations still apply), the answer to a request
        whose topic moved since, or unexpected."""
        if self._routes is not None:
            later = self._requests.take_later(message, router)
            if later is not None:
                if isinstance(message, wire.Refreshed) and message.revoked:
                    client = self._clients[later.client_id]
                    client.revoke(message.revoked)
                    self._settle(client)
                return
            if self._requests.take_retired(message, router):
                return
        self._counters.unexpected_replies += 1

    def _settle_all(self) -> None:
        routes = self._routes
        assert routes is not None
        for name in list(self._fanout.by_name):
            if routes.home(name) is None:
                self._settle_topic(name)

    def _settle_topic(self, name: str) -> None:
        """Send every subscription of a topic without a home to its owner, if it can go there now."""
        routes = self._routes
        assert routes is not None
        target = routes.target(name)
        if target is None or routes.home(name) is not None:
            return
        routes.settle(name, target)
        fanout = self._fanout
        for sub in list(fanout.by_name[name].holders.values()):
            position = fanout.position(sub) if sub.confirmed else None
            self._clients[sub.client_id].send_subscribe(sub, position)

    # ------------------------------------------------------------ counters

    def report(self, router: str = "") -> list[wire.EdgeStatsReport]:
        """The ``edge_stats`` messages to send the router (with a cluster: ``router``) now (every
        heartbeat interval): the totals, every topic's drops, and each registered client whose
        figures changed since the last report to it (all of them after :meth:`resync`), split to
        fit control messages."""
        sessions = [client.session for client in self._clients.values()]
        registered = [client.session for client in self._clients.values() if client.known_to_router]
        topic_drops = {name: topic.drops() for name, topic in self._fanout.by_name.items()}
        return self._counters.report(self.stats(), sessions, registered, topic_drops, router)

    def stats(self) -> EdgeStats:
        sessions = [client.session for client in self._clients.values()]
        catch_up = self._catch_up
        stats = self._counters.stats(sessions, len(self._fanout), catch_up.refilled, catch_up.gaps)
        routes = self._routes
        if routes is not None:
            stats.topics_waiting = sum(1 for name in self._fanout.by_name if routes.home(name) is None)
        return stats
