"""The router process: ZeroMQ sockets around the sans-I/O core.

One coroutine per socket role. Ingest sockets (PULL, XSUB) use the drain pattern: wait for
readiness once, then receive without blocking until the socket is empty or a batch is full, so the
event loop costs nothing per message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable

import zmq

from router.cluster.history import ClusterHistory, Pending
from router.cluster.node import ClusterNode
from router.cluster.relay import Message, PeerRelay
from router.config import RouterConfig
from router.core import ConnectionManager, DeliveryPolicy, ErrorCode, RefusedError
from router.core.control import KICKED, ControlPlane, Demand, Outbound, ToEdge, ToPeer, Upstream
from router.core.events import Event, EventListener, event_frames
from router.core.external_sessions import ExternalSessions
from router.core.jwt_sessions import KEYS_PENDING, JwtSessions
from router.core.manager import Route
from router.core.session_gate import SessionGate
from router.core.shards import TAKEN, Change, Gained
from router.core.token_bucket import TokenBucket
from router.core.views import ClusterView
from router.curve import CURVE_REFUSED, HANDSHAKE_FAILURES, CurveClient, handshake_failure
from router.jwks import JwksFetcher
from router.logs import ThrottledLog
from router.metrics import RouterCollector, RouterMetrics
from router.session_link import SessionServiceLink
from router.wire import (
    FORWARDED,
    MAX_CONTROL_BYTES,
    ShardMap,
    WireError,
    check_producer_header,
    data_frame_head,
    demand_frame,
    encode_control,
    split_producer_frames,
)
from router.zmqio import NOBLOCK, SNDMORE_NOBLOCK, Readable

log = logging.getLogger("switchboard.router")

CONTROL_SEND_HWM = 100_000
"""Replies queued per edge connection: room for every reply to a re-registration of the most
clients. A reply past it is not dropped unseen: the send fails, and is counted."""
HANDOVER_GRACE = 1.0
"""Seconds a router in cluster mode keeps asking PUB producers for a topic it stopped serving."""
BACKLOG_READ = 10
"""Batches of control messages read before each heartbeat tick."""
DEMAND_ANSWERS_PER_SECOND = 100.0
"""Subscriptions on the demand socket answered with the current demand, per second at most."""


class BindError(RuntimeError):
    """A socket of the router could not bind its endpoint (a busy port, an address this host
    does not have): which setting names it, and why."""

    def __init__(self, setting: str, endpoint: str, reason: str) -> None:
        super().__init__(f"{setting} = {endpoint!r}: {reason}")


def random_epoch() -> int:
    """A topic's epoch: random, so that a restarted router starts every sequence anew."""
    return secrets.randbits(32) or 1


class RouterServer:
    """Binds the router's four sockets and runs until :meth:`stop`."""

    def __init__(
        self,
        config: RouterConfig,
        manager: ConnectionManager | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.manager = manager or ConnectionManager(
            config.registry(), config.sessions.session_manager(), limits=config.limits, new_epoch=random_epoch
        )
        self.control = ControlPlane(
            self.manager,
            config.router.heartbeat_interval,
            config.router.edge_timeout,
            router_id=secrets.token_hex(8),
            new_secret=lambda: secrets.token_hex(16),
        )
        self.dispatch: ControlPlane | SessionGate = self.control
        """Where control messages go: the control plane, behind a gate with an external session
        service (``docs/session-service.md``) or keys from a JWKS URL (``docs/tokens.md``)."""
        sessions = self.manager.sessions
        if isinstance(sessions, ExternalSessions):
            self.dispatch = SessionGate(self.control, sessions, config.sessions.timeout)
        self._session_service: SessionServiceLink | None = None
        self.jwks: JwksFetcher | None = None
        if isinstance(sessions, JwtSessions) and config.sessions.jwks_url is not None:
            timeout = config.sessions.jwks_fetch_timeout
            self.dispatch = SessionGate(self.control, sessions, timeout)
            self.jwks = JwksFetcher(config.sessions.jwks_url, sessions, timeout)
        self.endpoints: dict[str, str] = {}
        self.metrics = RouterMetrics(
            RouterCollector(
                self.manager,
                self.control.refusals,
                self.control.router_id,
                clock,
                edges_lost=self.control.edges_lost,
                cluster=self.cluster_view,
            )
        )
        self._clock = clock
        self._context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._sockets: list[zmq.Socket[bytes]] = []
        self._stopped = asyncio.Event()
        self._readable: dict[zmq.Socket[bytes], Readable] = {}
        self._drop_log = ThrottledLog(log)
        self._curve = config.security.curve_server()
        self._monitors: dict[str, zmq.Socket[bytes]] = {}
        """With Curve on: a monitor of each socket's failed handshakes, by socket name."""
        self.cluster: ClusterNode | None = None
        """Cluster mode (``[cluster]``): this router's leases; ``None`` for a router on its own."""
        self.history: ClusterHistory | None = None
        """Cluster mode: reliable topics written to Redis before they are published."""
        self._unwatching: dict[str, asyncio.TimerHandle] = {}
        """Cluster mode: topics whose upstream unsubscription waits out :data:`HANDOVER_GRACE`."""
        self.relay: PeerRelay | None = None
        """Cluster mode: passes producer messages of other routers' shards on to them."""
        self.demand: zmq.Socket[bytes] | None = None
        """With ``[router] demand``: tells producers the rate each topic's watchers want."""
        if config.cluster.enabled:
            self.manager.serve_shards(config.cluster.shards)

    # ------------------------------------------------------------ lifecycle

    def bind(self) -> dict[str, str]:
        """Bind every socket; returns the endpoints actually bound (``:0`` ports resolved). Raises
        :class:`BindError`, having closed what it opened, when one cannot bind."""
        try:
            return self._bind()
        except BindError:
            self._close()
            raise

    def _bind(self) -> dict[str, str]:
        section = self.config.router
        frame_cap = 2 * self.config.limits.max_payload_bytes
        if self._curve is not None:
            self._curve.start(self._context)
        self.pull = self._socket(
            zmq.PULL, "pull", section.pull, rcvhwm=section.ingest_hwm, maxmsgsize=frame_cap
        )
        self.xsub = self._socket(
            zmq.XSUB, "xsub", section.xsub, rcvhwm=section.ingest_hwm, maxmsgsize=frame_cap
        )
        self.xpub = self._socket(zmq.XPUB, "xpub", section.xpub, sndhwm=section.fanout_hwm)
        self.router = self._socket(zmq.ROUTER, "control", section.control, maxmsgsize=2 * MAX_CONTROL_BYTES)
        if self.config.events.publish:
            self.events = self._socket(zmq.PUB, "events", self.config.events.publish)
            self.add_event_listener(self._publish_event)
        if section.demand:
            self.demand = self._socket(zmq.XPUB, "demand", section.demand, xpub_verbose=1)
        return dict(self.endpoints)

    def _socket(self, kind: int, name: str, endpoint: str, **options: int) -> zmq.Socket[bytes]:
        sock = self._context.socket(kind)
        sock.linger = 0
        for option, value in options.items():
            sock.setsockopt(getattr(zmq, option.upper()), value)
        if self._curve is not None:
            self._curve.secure(sock, name)
            self._monitors[name] = sock.get_monitor_socket(HANDSHAKE_FAILURES)
        try:
            sock.bind(endpoint[:-2] + ":*" if endpoint.endswith(":0") else endpoint)
        except zmq.ZMQError as error:
            sock.close(linger=0)
            setting = "[events] publish" if name == "events" else f"[router] {name}"
            raise BindError(setting, endpoint, error.strerror) from None
        self.endpoints[name] = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._sockets.append(sock)
        return sock

    async def join_cluster(self) -> None:
        """In cluster mode, after :meth:`bind`: connect to Redis and announce this router's
        endpoints. Raises :class:`~router.cluster.node.ClusterError`; nothing to do otherwise."""
        if not self.config.cluster.enabled or self.cluster is not None:
            return
        announced = dict(self.endpoints)
        if self._curve is not None:
            announced["curve_public_key"] = self._curve.public_key.decode()
        cluster = ClusterNode(
            self.config.cluster,
            self.control.router_id,
            announced,
            self._shards_changed,
            self._clock,
            apply_policies=self._policies_shared,
        )
        await cluster.start()
        section = self.config.cluster
        self.relay = PeerRelay(
            self._context, cluster.leases, self._curve, section, self._clock, self._route_parked
        )
        cluster.history = self.history = ClusterHistory(
            self.manager,
            cluster.leases,
            lambda: cluster.store,
            self._publish,
            max_pending_messages=section.max_pending_messages,
            max_pending_bytes=section.max_pending_bytes,
            clock=self._clock,
        )
        self.cluster = cluster

    def _shards_changed(self, changes: list[Change], shard_map: ShardMap) -> None:
        """Shards gained or lost, or a round of the cluster node done (``changes`` empty). Parked
        messages are passed on then, but not with a gain: a gained shard's reliable topics are
        adopted first, and the node hands over again, with no change, right after."""
        self._send(self.control.shards_changed(changes, shard_map, unix_time=time.time()))
        if self.relay is not None and self.cluster is not None:
            self.relay.sync(self.cluster.routers)
            if not any(isinstance(change, Gained) for change in changes):
                for reason, count in self.relay.tick().items():
                    self._dropped(reason, count)
        if self.history is None:
            return
        for change in changes:
            if isinstance(change, Gained):
                self.history.wake()
            elif change.reason == TAKEN:
                self.history.forget_shard(change.shard)

    def _publish(self, topic: bytes, epoch: int, offset: int, header: bytes, payload: bytes) -> None:
        self.xpub.send(data_frame_head(topic, epoch, offset, header), SNDMORE_NOBLOCK)
        self.xpub.send(payload, NOBLOCK)

    def cluster_view(self) -> ClusterView | None:
        """What this router knows of the cluster, in cluster mode (after :meth:`join_cluster`)."""
        if self.cluster is None:
            return None
        view = self.cluster.view(self.control.shard_changes)
        relay, history = self.relay, self.history
        if relay is not None:
            view = view._replace(
                forwarded=sum(relay.forwarded.values()), parked=relay.parked, parked_now=len(relay.parking)
            )
        pending, written = (history.pending_messages, history.written) if history is not None else (0, 0)
        return view._replace(history_pending=pending, history_written=written)

    async def serve(self) -> None:
        """Run every role until :meth:`stop`; binds first if :meth:`bind` was not called.

        A role that fails unexpectedly stops the whole router with its exception, rather than
        leaving a router that answers heartbeats but forwards nothing.
        """
        if not self._sockets:
            self.bind()
        await self.join_cluster()
        self._readable = {sock: Readable(sock) for sock in [*self._sockets, *self._monitors.values()]}
        roles = {
            "ingest-pull": self._ingest(self.pull),
            "ingest-xsub": self._ingest(self.xsub),
            "fanout-subscriptions": self._drain_fanout_subscriptions(),
            "control": self._control_loop(),
            "heartbeat": self._heartbeat_loop(),
            **{f"handshakes-{name}": self._watch_handshakes(name) for name in self._monitors},
        }
        if self.demand is not None:
            roles["demand-subscriptions"] = self._answer_demand_subscriptions(self.demand)
        if self.jwks is not None:
            roles["jwks"] = self.jwks.run(self._keys_fetched)
        if self.cluster is not None:
            roles["cluster"] = self.cluster.run()
            roles["cluster-expiry"] = self.cluster.watch_expiry()
        if self.history is not None:
            roles["cluster-history"] = self.history.run()
        if isinstance(self.manager.sessions, ExternalSessions) and isinstance(self.dispatch, SessionGate):
            endpoint = self.config.sessions.endpoint
            assert endpoint is not None
            curve = self._service_curve()
            link = SessionServiceLink(
                self._context, endpoint, self.dispatch, self.manager.sessions, self._send, self._clock, curve
            )
            self._session_service = link
            roles["session-service"] = link.run()
            if link.handshakes is not None:
                roles["session-service-handshakes"] = link.watch_handshakes()
        tasks: list[asyncio.Task[object]] = [
            asyncio.create_task(role, name=name) for name, role in roles.items()
        ]
        stopped = asyncio.create_task(self._stopped.wait())
        log.info("router listening: %s", self.endpoints)
        try:
            await asyncio.wait([stopped, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                if task.done() and task.exception() is not None:
                    log.critical("router role %s failed", task.get_name(), exc_info=task.exception())
                    raise RuntimeError(f"router role {task.get_name()} failed") from task.exception()
        finally:
            for task in [stopped, *tasks]:
                task.cancel()
            await asyncio.gather(stopped, *tasks, return_exceptions=True)
            if self.cluster is not None:
                await self.cluster.stop()
            self._close()

    async def fetch_keys(self) -> str | None:
        """With ``[sessions] jwks_url``: fetch the key set once, before serving. Returns why, if
        the fetch failed and the router has no key at all: it must not start."""
        if self.jwks is None:
            return None
        error = await self.jwks.refresh()
        return error if not self.jwks.sessions.keys else None

    def close(self) -> None:
        """Close the sockets of a router that will not :meth:`serve`."""
        self._close()

    def _close(self) -> None:
        for pending in self._unwatching.values():
            pending.cancel()
        for readable in self._readable.values():
            readable.close()
        for monitor in self._monitors.values():
            monitor.close(linger=0)
        for sock in self._sockets:
            sock.close(linger=0)
        if self._session_service is not None:
            self._session_service.close()
        if self.relay is not None:
            self.relay.close()
        if self._curve is not None:
            self._curve.stop()
        self._context.term()

    def stop(self) -> None:
        self._stopped.set()

    def reload_allowed_keys(self) -> None:
        """Read the Curve allow-list again (on SIGHUP); nothing to do with Curve off."""
        if self._curve is not None:
            self._curve.reload()

    # ------------------------------------------------------------ events

    def add_event_listener(self, listener: EventListener) -> None:
        """Call ``listener`` with every event (``router/core/events.py``), in the router's loop, as it
        happens. It must not block; what it raises is logged and ignored."""
        self.control.events.add(listener)

    def remove_event_listener(self, listener: EventListener) -> None:
        self.control.events.remove(listener)

    def _publish_event(self, event: Event) -> None:
        """Events go out as ``[name, JSON]``; a subscriber that cannot keep up loses them (PUB)."""
        self.events.send_multipart(event_frames(event), NOBLOCK)

    # ------------------------------------------------------------ operator requests (while serving)

    def set_delivery_policy(self, topic: str, policy: DeliveryPolicy) -> list[str]:
        """Change a topic's delivery policy now; returns the edges told, which apply it at once.
        Raises :class:`RefusedError` for a bad or undeclared topic."""
        out = self.control.set_delivery_policy(topic, policy)
        self._send(out)
        if self.cluster is not None:
            self.cluster.share_policy(topic, policy)
        return [item.edge_id for item in out if isinstance(item, ToEdge)]

    def _policies_shared(self, policies: dict[str, DeliveryPolicy]) -> None:
        """Cluster mode: the runtime policies in Redis, which any router may have set."""
        for topic, policy in policies.items():
            if self.manager.get_delivery_policy(topic) == policy:
                continue
            try:
                self._send(self.control.set_delivery_policy(topic, policy))
            except RefusedError as error:
                log.warning("cluster: the policy of %s set by another router: %s", topic, error)

    def kick_client(self, client_id: str, reason: str = KICKED) -> str:
        """Forget a client and have its edge close it (4002); returns the edge's id. Raises
        :class:`RefusedError` (``unknown_client``)."""
        edge_id = self.manager.client_edge(client_id)
        self._send(self.control.kick(client_id, reason, unix_time=time.time()))
        assert edge_id is not None
        return edge_id

    def drain_edge(self, edge_id: str) -> list[str]:
        """Forget every client of an edge and have the edge close each with 1001, so that they
        connect again, to another edge; returns their ids. Raises :class:`RefusedError`
        (``unknown_edge``)."""
        clients = [info.client_id for info in self.manager.get_active_clients(edge_id)]
        self._send(self.control.drain(edge_id, unix_time=time.time()))
        return clients

    # ------------------------------------------------------------ data

    async def _ingest(self, sock: zmq.Socket[bytes]) -> None:
        """Producer messages in, data frames out on XPUB (only for watched topics).

        Payloads are received as zero-copy frames and forwarded as they are; only the topic and
        header frames become ``bytes``, and the payload too on topics that keep a history.

        The clock is read once per batch, for ``ingest_max_rate`` and history ages: a batch's
        messages count as received when it started, which can only make a rate cap stricter. A
        message over the rate comes back with no clients, so nothing is sent and nothing logged.
        """
        readable = self._readable[sock]
        passes_on = sock is self.pull
        receive = sock.recv
        send = self.xpub.send
        route = self.manager.route_wire
        emit = self._emit
        batch = self.config.router.max_batch
        clock = self._clock
        while True:
            await readable.wait()
            now = clock()
            for _ in range(batch):
                try:
                    frames = [receive(NOBLOCK, copy=False)]
                except zmq.Again:
                    break
                while frames[-1].more:
                    frames.append(receive(NOBLOCK, copy=False))
                forwarded = len(frames) == 4 and frames[3].bytes == FORWARDED
                if forwarded:
                    frames.pop()
                try:
                    topic_frame, header_frame, payload = split_producer_frames(frames)
                    topic = topic_frame.bytes
                    header = b"" if header_frame is None else check_producer_header(header_frame.bytes)
                    where = route(topic, len(payload), now)
                except RefusedError as error:
                    if error.code is ErrorCode.NOT_OWNER:
                        self._not_served(topic, frames, forwarded, passes_on)
                    else:
                        self._count_bad_input(error)
                    continue
                except WireError as error:
                    self._count_bad_input(error)
                    continue
                if where.keeps_history:
                    emit(where, topic, header, payload, now)
                elif where.clients:
                    send(data_frame_head(topic, where.epoch, where.offset, header), SNDMORE_NOBLOCK)
                    send(payload, NOBLOCK, copy=False)
            else:
                await asyncio.sleep(0)

    def _emit(
        self, where: Route, topic: bytes, header: bytes, payload: zmq.Frame | bytes, now: float
    ) -> None:
        """Publish a routed message, after its history keeps it (in cluster mode, once Redis has).
        The ingest loop sends a message that keeps no history itself, without this call."""
        if where.keeps_history:
            body = payload if isinstance(payload, bytes) else payload.bytes
            if self.history is not None:
                self.history.add(Pending(where.topic, topic, where.epoch, where.offset, header, body))
                return
            self.manager.record(where.topic, where.offset, header, body, now)
        if where.clients:
            self.xpub.send(data_frame_head(topic, where.epoch, where.offset, header), SNDMORE_NOBLOCK)
            self.xpub.send(payload, NOBLOCK, copy=False)

    def _route_parked(self, message: Message) -> None:
        """A message parked for a shard this router has taken since: routed here, in its turn."""
        topic_frame, header_frame, payload = message[:3]
        topic = topic_frame if isinstance(topic_frame, bytes) else topic_frame.bytes
        header = header_frame if isinstance(header_frame, bytes) else header_frame.bytes
        now = self._clock()
        try:
            where = self.manager.route_wire(topic, len(payload), now)
        except RefusedError as error:
            if error.code is ErrorCode.NOT_OWNER:
                self._dropped("not_owner")
            else:
                self._count_bad_input(error)
            return
        self._emit(where, topic, header, payload, now)

    def _not_served(self, topic: bytes, frames: list[zmq.Frame], forwarded: bool, pulled: bool) -> None:
        """A message of another router's shard, ``pulled`` from a producer or, ``forwarded``, from
        another router: passed on to its owner, or parked until this router serves it; one that
        came through XSUB is dropped (a PUB producer sends to the owner itself, and passing on the
        copy a router still subscribed during a handover got would deliver it twice)."""
        reason = "not_owner"
        if self.relay is not None and pulled:
            reason = (
                self.relay.keep(topic, frames) if forwarded else self.relay.forward(topic, frames)
            ) or ""
        if reason:
            self._dropped(reason)

    def _dropped(self, reason: str, count: int = 1) -> None:
        self.manager.count_drop(reason, count)
        self._drop_log.warning(
            reason, "dropped a message of another router's shard: %s", reason, now=self._clock()
        )

    def _count_bad_input(self, error: WireError | RefusedError) -> None:
        if isinstance(error, WireError):
            self.manager.count_drop(error.reason)
            reason = error.reason
        else:
            reason = error.code.value
        extra = {"reason": reason}
        self._drop_log.warning(
            reason, "dropped a producer message: %s", error, now=self._clock(), extra=extra
        )

    async def _drain_fanout_subscriptions(self) -> None:
        """Edges' SUB subscriptions reach XPUB as messages; read them so they never pile up."""
        readable = self._readable[self.xpub]
        while True:
            await readable.wait()
            self._take_fanout_subscriptions()

    def _take_fanout_subscriptions(self) -> None:
        """Reading XPUB applies the subscriptions that arrived: before a ``subscribe`` is answered,
        so the edge's SUB subscription, sent just before it, is in force for the data that follows
        the reply's offset as often as the network allows (the edge refills the rest)."""
        with contextlib.suppress(zmq.Again):
            while True:
                self.xpub.recv(NOBLOCK)

    # ------------------------------------------------------------ demand

    async def _answer_demand_subscriptions(self, sock: zmq.Socket[bytes]) -> None:
        """A producer that subscribes on the demand socket gets the demand of every watched topic
        its prefix matches at once; later changes come as they happen. Each answer walks every
        watched topic, so at most :data:`DEMAND_ANSWERS_PER_SECOND` subscriptions are answered;
        the rest are counted (``demand_unanswered``) and get only the changes."""
        readable = self._readable[sock]
        answers = TokenBucket(DEMAND_ANSWERS_PER_SECOND)
        while True:
            await readable.wait()
            with contextlib.suppress(zmq.Again):
                while True:
                    self._demand_subscription(sock.recv(NOBLOCK), answers)

    def _demand_subscription(self, message: bytes, answers: TokenBucket) -> None:
        if message[:1] != b"\x01":
            return
        if answers.take(self._clock()):
            self._tell_demands(message[1:])
            return
        self.manager.count_drop("demand_unanswered")
        now = self._clock()
        self._drop_log.warning("demand", "too many demand subscriptions: some get only changes", now=now)

    def _tell_demands(self, prefix: bytes) -> None:
        for topic, rate in self.manager.demands():
            raw = topic.encode()
            if raw.startswith(prefix):
                self._tell_demand(raw, rate)

    def _tell_demand(self, topic: bytes, rate: float) -> None:
        if self.demand is not None:
            self.demand.send_multipart([topic, demand_frame(rate)], NOBLOCK)

    # ------------------------------------------------------------ Curve

    def _service_curve(self) -> CurveClient | None:
        """With Curve on, the router's key pair as a client of its session service."""
        key = self.config.sessions.service_public_key(curve_on=self._curve is not None)
        if self._curve is None or key is None:
            return None
        return self._curve.client_of(key)

    async def _watch_handshakes(self, name: str) -> None:
        """Count each peer a socket's Curve handshake turned away, and log why (the allow-list
        logs the refused keys themselves)."""
        monitor = self._monitors[name]
        readable = self._readable[monitor]
        while True:
            await readable.wait()
            with contextlib.suppress(zmq.Again):
                while True:
                    reason, why = handshake_failure(monitor.recv_multipart(NOBLOCK))
                    self.manager.count_drop(reason)
                    if reason != CURVE_REFUSED:
                        kind, now = f"{reason}-{name}", self._clock()
                        self._drop_log.warning(
                            kind, "%s: a peer failed the Curve handshake: %s", name, why, now=now
                        )

    # ------------------------------------------------------------ control

    async def _control_loop(self) -> None:
        readable = self._readable[self.router]
        while True:
            await readable.wait()
            if not self._read_control(self.config.router.max_batch):
                await asyncio.sleep(0)

    def _read_control(self, limit: int) -> bool:
        """Handle up to ``limit`` waiting control messages; whether the socket is empty now."""
        for _ in range(limit):
            try:
                frames = self.router.recv_multipart(NOBLOCK, copy=False)
            except zmq.Again:
                return True
            self._on_control(frames)
        return False

    def _on_control(self, frames: list[zmq.Frame]) -> None:
        if len(frames) != 2:
            self.manager.count_drop("bad_control")
            self._drop_log.warning(
                "bad_control", "control message of %d frames", len(frames), now=self._clock()
            )
            return
        peer, body = frames
        key, observer = None, False
        if self._curve is not None:
            key = str(body.get("User-Id"))
            observer = self._curve.is_observer(key)
        self._take_fanout_subscriptions()
        now, unix = self._clock(), time.time()
        self._send(self.dispatch.handle(peer.bytes, body.bytes, now, unix, key=key, observer=observer))
        self._ask_session_service()
        if self.jwks is not None:
            self.jwks.wake()

    async def _heartbeat_loop(self) -> None:
        """Every interval: the control messages that wait are read first, since any of them shows
        its edge alive; only then are silent edges forgotten. While more wait than
        :data:`BACKLOG_READ` batches, no edge is forgotten that round (its heartbeat may be among
        them), and the backlog is counted."""
        interval = self.config.router.heartbeat_interval
        while True:
            await asyncio.sleep(interval)
            caught_up = self._read_control(BACKLOG_READ * self.config.router.max_batch)
            if not caught_up:
                self.manager.count_drop("control_backlog")
                self._drop_log.warning(
                    "control_backlog",
                    "control messages wait unread; no edge is forgotten until they are read",
                    now=self._clock(),
                )
            self._send(self.dispatch.tick(self._clock(), time.time(), expire_edges=caught_up))
            self._ask_session_service()

    def _keys_fetched(self) -> None:
        """A JWKS fetch ended: the registers that waited for it are handled again."""
        if isinstance(self.dispatch, SessionGate):
            self._send(self.dispatch.decided(KEYS_PENDING, self._clock(), time.time()))

    def _ask_session_service(self) -> None:
        if self._session_service is not None:
            self._session_service.flush()

    def _upstream(self, topic: str, watched: bool) -> None:
        """Ask PUB producers for a topic, or stop. In cluster mode a router stops only
        :data:`HANDOVER_GRACE` seconds later (unless asked again meanwhile): when a shard moves,
        the new owner asks before the old one stops, so a PUB producer never sends into a gap."""
        pending = self._unwatching.pop(topic, None)
        if pending is not None:
            pending.cancel()
        if not watched and self.cluster is not None:
            later = asyncio.get_running_loop().call_later(HANDOVER_GRACE, self._unwatch_now, topic)
            self._unwatching[topic] = later
            return
        self.xsub.send((b"\x01" if watched else b"\x00") + topic.encode(), NOBLOCK)
        self._readable[self.xsub].recheck()

    def _unwatch_now(self, topic: str) -> None:
        self._unwatching.pop(topic, None)
        with contextlib.suppress(zmq.ZMQError):
            self.xsub.send(b"\x00" + topic.encode(), NOBLOCK)
            self._readable[self.xsub].recheck()

    def _send(self, outbound: list[Outbound]) -> None:
        for item in outbound:
            try:
                match item:
                    case ToEdge(edge_id, message):
                        peer = self.control.claims.peer_of(edge_id)
                        if peer is not None:
                            self.router.send_multipart([peer, encode_control(message)], NOBLOCK)
                            self._readable[self.router].recheck()
                    case ToPeer(peer, message):
                        self.router.send_multipart([peer, encode_control(message)], NOBLOCK)
                        self._readable[self.router].recheck()
                    case Upstream(topic, watched):
                        self._upstream(topic, watched)
                    case Demand(topic, rate):
                        self._tell_demand(topic.encode(), rate)
            except zmq.ZMQError as error:
                self.manager.count_drop("control_send_failed")
                what, now = type(item).__name__, self._clock()
                self._drop_log.warning("control_send", "could not send %s: %s", what, error, now=now)
