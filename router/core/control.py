"""The router's side of the edge control protocol, with no I/O.

:class:`ControlPlane` turns each control message from an edge into calls on the
:class:`~router.core.ConnectionManager` and returns what the router process must send: replies to
edges and subscription changes for producers upstream.

The router process gives the plane its ``router_id`` and, on every call, the time: ``now`` (a
monotonic clock) and ``unix_time`` (what token lifetimes and event times are measured in).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from typing import NamedTuple

import msgspec

from router.core import (
    Action,
    ClientDropped,
    ClientInfo,
    ConnectionManager,
    DeliveryPolicy,
    DemandChanged,
    DropIncrease,
    ErrorCode,
    PolicyChanged,
    Recovery,
    RecoveryStatus,
    RefusedError,
    Subscribed,
    UnwatchTopic,
    WatchTopic,
)
from router.core.edge_claims import EdgeClaims
from router.core.events import (
    CLIENT_CLOSED,
    ClientConnected,
    ClientDisconnected,
    ClientRefused,
    EdgeDown,
    EdgeUp,
    EventHooks,
    ShardChanged,
    SlowClientDrops,
    SubscribeRefused,
)
from router.core.events import Subscribed as SubscribedEvent
from router.core.shards import EXPIRED, GAINED, Change, Gained, Lost
from router.logs import ThrottledLog
from router.wire import (
    CLOSE_GOING_AWAY,
    CONTROL_VERSION,
    RESUME_NONE,
    DropClient,
    EdgeMessage,
    EdgeStatsReport,
    Error,
    Heartbeat,
    Hello,
    PolicyUpdate,
    Recover,
    Recovered,
    Refreshed,
    RefreshToken,
    RegisterClient,
    Registered,
    RouterMessage,
    ShardMap,
    Stats,
    StatsRequest,
    Subscribe,
    SubscribeOk,
    UnregisterClient,
    Unsubscribe,
    Unsubscribed,
    Welcome,
    WireError,
    decode_edge_message,
)

log = logging.getLogger("switchboard.router")


class ToEdge(NamedTuple):
    edge_id: str
    message: RouterMessage


class ToPeer(NamedTuple):
    """A reply to a control connection that speaks for no edge (yet): by its routing id."""

    peer: bytes
    message: RouterMessage


class Upstream(NamedTuple):
    """Tell PUB producers (through XSUB) that ``topic`` is now watched, or no longer."""

    topic: str
    watched: bool


class Demand(NamedTuple):
    """Tell producers (on the demand socket) the most messages per second ``topic``'s watchers
    want now (``ConnectionManager.get_demand``)."""

    topic: str
    rate: float


Outbound = ToEdge | ToPeer | Upstream | Demand

KICKED = "kicked by an operator"
OBSERVER_MESSAGES = (Hello, Heartbeat, StatsRequest)
"""What a connection with an observer's Curve key may send."""
MAX_EDGE_ID_BYTES = 255
EDGE_TIMED_OUT = "edge heartbeat timeout"
EDGE_RESTARTED = "edge restarted"
DRAINED = "edge draining: reconnect to another edge"


class ControlPlane:
    """Edge control messages in, replies and upstream subscription changes out."""

    def __init__(
        self,
        manager: ConnectionManager,
        heartbeat_interval: float,
        heartbeat_timeout: float,
        *,
        router_id: str,
        new_secret: Callable[[], str],
    ) -> None:
        """``router_id`` names this router process in ``welcome`` and heartbeats: a new one at
        every start (``docs/protocol.md``, 3.3 rule 6: 16 random hex digits). ``new_secret``
        makes the secret of each ``welcome`` (``router/core/edge_claims.py``)."""
        self.manager = manager
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.router_id = router_id
        self._log = ThrottledLog(log)
        self.refusals: Counter[tuple[str, str]] = Counter()
        """Refused requests by ``(message type, error code)``, for metrics."""
        self.edges_lost: Counter[str] = Counter()
        """Edges forgotten, with every client on them, by reason (timed out, said hello again)."""
        self._refusal_log = ThrottledLog(log, burst=20)
        self.events = EventHooks()
        """Who hears of clients and edges coming and going (``router/core/events.py``)."""
        self.claims = EdgeClaims(new_secret)
        """Which control connection speaks for which edge (``router/core/edge_claims.py``)."""
        self.shard_map: ShardMap | None = None
        """Cluster mode: the newest shard map, sent after each ``welcome``; ``None`` outside it."""
        self.shard_changes: Counter[str] = Counter()
        """Shards gained (``gained``) and lost (by reason), for metrics."""

    def handle(
        self,
        peer: bytes,
        body: bytes,
        now: float,
        unix_time: float | None = None,
        *,
        key: str | None = None,
        observer: bool = False,
    ) -> list[Outbound]:
        """One message from the control connection whose ROUTER routing id is ``peer``.

        ``now`` is a monotonic time in seconds. ``unix_time`` (seconds since the Unix epoch, what
        token lifetimes are measured in) defaults to ``now``, for callers with one clock. ``key``
        is the connection's Curve public key (Z85), ``None`` without Curve; ``observer``: that key
        is an observer's, which may say hello, send heartbeats and ask for stats, nothing else.
        """
        try:
            message = decode_edge_message(body)
        except WireError as error:
            self.manager.count_drop("bad_control")
            sender = self.claims.edge_of(peer) or repr(peer)
            self._log.warning("bad_control", "bad control message from %s: %s", sender, error, now=now)
            return [self._reply_to(peer, _error(0, ErrorCode.BAD_REQUEST, error.detail[:200]))]
        unix = now if unix_time is None else unix_time
        edge_id = message.edge_id if isinstance(message, Hello) else self.claims.edge_of(peer)
        try:
            if isinstance(message, Hello):
                return self._hello(peer, key, message, now, unix)
            if edge_id is None:
                raise RefusedError(ErrorCode.UNKNOWN_EDGE, "this connection must say hello first")
            if observer and not isinstance(message, OBSERVER_MESSAGES):
                raise RefusedError(
                    ErrorCode.FORBIDDEN, "an observer key cannot register or serve clients: use an edge key"
                )
            return self._dispatch(edge_id, message, now, unix)
        except RefusedError as refused:
            self._count_refusal(edge_id or "", message, refused, now)
            if isinstance(message, Subscribe) and edge_id is not None:
                self._subscribe_refused(message, refused, unix)
            elif isinstance(message, RegisterClient) and edge_id is not None:
                self._client_refused(edge_id, message, refused, unix)
            return [self._reply_to(peer, _refusal(message, refused))]

    def _reply_to(self, peer: bytes, message: RouterMessage) -> Outbound:
        edge_id = self.claims.edge_of(peer)
        return ToPeer(peer, message) if edge_id is None else ToEdge(edge_id, message)

    def tick(
        self, now: float, unix_time: float | None = None, *, expire_edges: bool = True
    ) -> list[Outbound]:
        """Called every heartbeat interval: silent edges expired (unless not ``expire_edges``: the
        shell has not read every waiting message), and heartbeats to the others; clients whose
        session ended by ``unix_time`` (default: ``now``) dropped, and their edges told with
        ``drop_client``."""
        unix = now if unix_time is None else unix_time
        known = self.manager.edge_ids()
        expired = self.manager.expire_edges(now, self.heartbeat_timeout) if expire_edges else []
        gone = [e for e in known if not self.manager.is_edge_known(e)]
        for edge_id in gone:
            self.claims.release(edge_id)
        self._edges_down(gone, EDGE_TIMED_OUT, unix)
        self.manager.expire_history(now)
        ended = self.manager.expire_sessions(unix)
        out: list[Outbound] = [
            ToEdge(edge_id, Heartbeat(router_id=self.router_id)) for edge_id in self.manager.edge_ids()
        ]
        for action in [*expired, *ended]:
            if isinstance(action, ClientDropped):
                client_id, edge_id, reason = action
                ids = {"client_id": client_id, "edge_id": edge_id, "reason": reason}
                log.info("client %s of edge %s dropped: %s", *action, extra=ids)
        return out + self._carry_out(expired, unix) + self._carry_out(ended, unix, tell_edges=True)

    # ------------------------------------------------------------ operator requests

    def set_delivery_policy(self, topic: str, policy: DeliveryPolicy) -> list[Outbound]:
        """Change a topic's policy now: its edges get ``policy`` at once."""
        return self._outbound(self.manager.set_delivery_policy(topic, policy))

    def kick(self, client_id: str, reason: str = KICKED, *, unix_time: float) -> list[Outbound]:
        """Forget a client, and tell its edge to close it (4002). Raises ``unknown_client``.
        ``unix_time`` stamps the events."""
        edge_id = self.manager.client_edge(client_id)
        if edge_id is None:
            raise RefusedError(ErrorCode.UNKNOWN_CLIENT, f"no client {client_id!r}")
        actions = self.manager.unregister_client(client_id)
        self._client_gone(client_id, edge_id, reason, unix_time)
        log.info("client %s of edge %s kicked: %s", client_id, edge_id, reason)
        drop = DropClient(client_id=client_id, reason=reason)
        return [*self._carry_out(actions, unix_time), ToEdge(edge_id, drop)]

    def drain(self, edge_id: str, reason: str = DRAINED, *, unix_time: float) -> list[Outbound]:
        """Forget every client of an edge, and tell the edge to close each with 1001 (connect
        again, elsewhere). Raises ``unknown_edge``. ``unix_time`` stamps the events."""
        if not self.manager.is_edge_known(edge_id):
            raise RefusedError(ErrorCode.UNKNOWN_EDGE, f"no edge {edge_id!r}")
        clients = [info.client_id for info in self.manager.get_active_clients(edge_id)]
        out: list[Outbound] = []
        for client_id in clients:
            out += self._carry_out(self.manager.unregister_client(client_id), unix_time)
            self._client_gone(client_id, edge_id, reason, unix_time)
            drop = DropClient(client_id=client_id, reason=reason, code=CLOSE_GOING_AWAY)
            out.append(ToEdge(edge_id, drop))
        log.info("edge %s drained: %d clients told to reconnect", edge_id, len(clients))
        return out

    # ------------------------------------------------------------ dispatch

    def _dispatch(self, edge_id: str, message: EdgeMessage, now: float, unix_time: float) -> list[Outbound]:
        self.manager.edge_heartbeat(edge_id, now)
        match message:
            case Heartbeat():
                return []
            case RegisterClient():
                info = ClientInfo(
                    client_id=message.client_id,
                    edge_id=edge_id,
                    protocol=message.protocol,
                    remote=message.remote,
                    connected_at=now,
                )
                identity = self.manager.register_client(info, message.token, unix_time)
                self._client_connected(info, identity.user, unix_time)
                reply = Registered(
                    request_id=message.request_id, client_id=message.client_id, user=identity.user
                )
                return [ToEdge(edge_id, reply)]
            case RefreshToken():
                self._check_owner(edge_id, message.client_id)
                return self._refresh(edge_id, message, unix_time)
            case UnregisterClient():
                self._check_owner(edge_id, message.client_id)
                actions = self.manager.unregister_client(message.client_id)
                self._client_gone(message.client_id, edge_id, message.reason or CLIENT_CLOSED, unix_time)
                return self._carry_out(actions, unix_time)
            case Subscribe():
                self._check_owner(edge_id, message.client_id)
                granted = self.manager.subscribe(
                    message.client_id, message.topic, _resume_position(message), now, message.max_rate
                )
                ok = _subscribe_ok(message, granted)
                self._subscribed(message.client_id, granted.topic, unix_time)
                return [*self._carry_out(granted.actions, unix_time), ToEdge(edge_id, ok)]
            case Unsubscribe():
                self._check_owner(edge_id, message.client_id)
                actions = self.manager.unsubscribe(message.client_id, message.topic)
                done = Unsubscribed(
                    request_id=message.request_id, client_id=message.client_id, topic=message.topic
                )
                return [*self._carry_out(actions, unix_time), ToEdge(edge_id, done)]
            case Recover():
                recovery = self.manager.recover(
                    message.topic,
                    message.from_offset,
                    message.epoch,
                    now,
                    to_offset=message.to_offset,
                    edge_id=edge_id,
                )
                return [ToEdge(edge_id, _recovered(message, recovery))]
            case StatsRequest():
                stats = self.manager.get_connection_stats()
                return [ToEdge(edge_id, Stats(request_id=message.request_id, stats=_as_dict(stats)))]
            case EdgeStatsReport():
                report = (message.totals, message.topic_drops, message.clients, now)
                self._slow_client_drops(edge_id, self.manager.edge_report(edge_id, *report), unix_time)
                return []
        raise RefusedError(ErrorCode.BAD_REQUEST, f"unexpected {type(message).__name__}")

    def _hello(
        self, peer: bytes, key: str | None, hello: Hello, now: float, unix_time: float
    ) -> list[Outbound]:
        """Welcome an edge on this connection, if it may claim the id (``edge_claims.py``)."""
        if hello.version != CONTROL_VERSION:
            raise RefusedError(
                ErrorCode.UNSUPPORTED_VERSION,
                f"control version {hello.version} is not supported; this router speaks {CONTROL_VERSION}",
            )
        edge_id = hello.edge_id
        if not 0 < len(edge_id.encode()) <= MAX_EDGE_ID_BYTES:
            raise RefusedError(ErrorCode.BAD_REQUEST, f"edge_id must be 1 to {MAX_EDGE_ID_BYTES} bytes")
        again = self.manager.is_edge_known(edge_id)
        self.claims.check(edge_id, peer, key, hello.session)
        actions = self.manager.edge_hello(edge_id, hello.protocol, now)
        session = self.claims.claim(edge_id, peer, key, hello.session)
        if again:
            self._edges_down([edge_id], EDGE_RESTARTED, unix_time)
        out = self._carry_out(actions, unix_time)
        if self.events:
            self.events.emit(EdgeUp(time=unix_time, edge_id=edge_id, protocol=hello.protocol))
        log.info("edge %s (%s) connected", edge_id, hello.protocol, extra={"edge_id": edge_id})
        welcome = Welcome(
            router_id=self.router_id,
            version=CONTROL_VERSION,
            heartbeat_interval=self.heartbeat_interval,
            heartbeat_timeout=self.heartbeat_timeout,
            session=session,
        )
        shard_map = [ToEdge(edge_id, self.shard_map)] if self.shard_map is not None else []
        return [*out, ToEdge(edge_id, welcome), *shard_map]

    # ------------------------------------------------------------ cluster shards

    def shards_changed(
        self, changes: Sequence[Change], shard_map: ShardMap | None = None, *, unix_time: float
    ) -> list[Outbound]:
        """Shards gained and lost (``router/core/shards.py``), and the shard map when it changed,
        which every edge gets at once. A lost shard's topics are unwatched upstream; an expired
        one's stay served from memory (it is degraded) until another router takes it. ``unix_time``
        stamps the events."""
        lost: list[int] = []
        for change in changes:
            match change:
                case Gained(shard, token):
                    self.manager.shard_gained(shard)
                    reason = GAINED
                    log.info("serving shard %d (token %d)", shard, token)
                case Lost(shard, token, reason):
                    if reason != EXPIRED:
                        lost.append(shard)
                    log.info("shard %d (token %d) lost: %s", shard, token, reason)
            self.shard_changes[reason] += 1
            if self.events:
                self.events.emit(ShardChanged(time=unix_time, shard=shard, token=token, reason=reason))
        out = self._outbound(self.manager.shards_lost(lost) if lost else [])
        if shard_map is not None and shard_map != self.shard_map:
            self.shard_map = shard_map
            out += [ToEdge(edge_id, shard_map) for edge_id in self.manager.edge_ids()]
        return out

    def _refresh(self, edge_id: str, message: RefreshToken, unix_time: float) -> list[Outbound]:
        refresh = self.manager.refresh_client(message.client_id, message.token, unix_time)
        reply = Refreshed(
            request_id=message.request_id,
            client_id=message.client_id,
            user=refresh.identity.user,
            expires_at=refresh.identity.expires_at,
            revoked=list(refresh.revoked),
        )
        return [*self._carry_out(refresh.actions, unix_time), ToEdge(edge_id, reply)]

    def _count_refusal(self, edge_id: str, message: EdgeMessage, refused: RefusedError, now: float) -> None:
        """Count a refused request, and log it: 20 lines per kind and code every 5 s at most."""
        request = str(type(message).__struct_config__.tag)
        code = refused.code.value
        self.refusals[request, code] += 1
        ids = {"edge_id": edge_id, "reason": code}
        for key in ("client_id", "topic"):
            if hasattr(message, key):
                ids[key] = getattr(message, key)
        self._refusal_log.info(f"{request}-{code}", "refused %s: %s", request, refused, now=now, extra=ids)

    def _check_owner(self, edge_id: str, client_id: str) -> None:
        if self.manager.client_edge(client_id) != edge_id:
            raise RefusedError(ErrorCode.UNKNOWN_CLIENT, f"edge {edge_id!r} has no client {client_id!r}")

    def _carry_out(
        self, actions: list[Action], unix_time: float, *, tell_edges: bool = False
    ) -> list[Outbound]:
        """What the router sends for ``actions``, and the events of the clients they drop, at
        ``unix_time``. With ``tell_edges``, a dropped client's edge gets ``drop_client`` (not when
        the edge itself was lost)."""
        for action in actions:
            if isinstance(action, ClientDropped):
                self._client_gone(*action, unix_time)
        return self._outbound(actions, tell_edges=tell_edges)

    def _outbound(self, actions: list[Action], *, tell_edges: bool = False) -> list[Outbound]:
        out: list[Outbound] = []
        for action in actions:
            match action:
                case WatchTopic(topic):
                    out.append(Upstream(topic, watched=True))
                case UnwatchTopic(topic):
                    out.append(Upstream(topic, watched=False))
                case DemandChanged(topic, rate):
                    out.append(Demand(topic, rate))
                case PolicyChanged(topic, policy, edge_ids):
                    out += [ToEdge(e, PolicyUpdate(topic=topic, policy=policy)) for e in sorted(edge_ids)]
                case ClientDropped(client_id, edge_id, reason) if tell_edges:
                    out.append(ToEdge(edge_id, DropClient(client_id=client_id, reason=reason)))
        return out

    # ------------------------------------------------------------ events

    def _client_connected(self, info: ClientInfo, user: str, unix_time: float) -> None:
        if self.events:
            self.events.emit(
                ClientConnected(
                    time=unix_time,
                    client_id=info.client_id,
                    edge_id=info.edge_id,
                    protocol=info.protocol,
                    user=user,
                    remote=info.remote,
                )
            )

    def _client_refused(
        self, edge_id: str, message: RegisterClient, refused: RefusedError, unix_time: float
    ) -> None:
        if self.events:
            refusal = ClientRefused(
                time=unix_time,
                client_id=message.client_id,
                edge_id=edge_id,
                code=refused.code.value,
                reason=refused.detail,
            )
            self.events.emit(refusal)

    def _client_gone(self, client_id: str, edge_id: str, reason: str, unix_time: float) -> None:
        if self.events:
            self.events.emit(
                ClientDisconnected(time=unix_time, client_id=client_id, edge_id=edge_id, reason=reason)
            )

    def _subscribed(self, client_id: str, topic: str, unix_time: float) -> None:
        if self.events:
            self.events.emit(SubscribedEvent(time=unix_time, client_id=client_id, topic=topic))

    def _subscribe_refused(self, message: Subscribe, refused: RefusedError, unix_time: float) -> None:
        if self.events:
            client_id, topic, code = message.client_id, message.topic, refused.code.value
            self.events.emit(SubscribeRefused(time=unix_time, client_id=client_id, topic=topic, code=code))

    def _slow_client_drops(self, edge_id: str, increases: list[DropIncrease], unix_time: float) -> None:
        if self.events:
            for topic, count, window in increases:
                drops = SlowClientDrops(
                    time=unix_time, edge_id=edge_id, topic=topic, count=count, window=window
                )
                self.events.emit(drops)

    def _edges_down(self, edge_ids: list[str], reason: str, unix_time: float) -> None:
        self.edges_lost[reason] += len(edge_ids)
        if self.events:
            for edge_id in edge_ids:
                self.events.emit(EdgeDown(time=unix_time, edge_id=edge_id, reason=reason))


def _resume_position(subscribe: Subscribe) -> tuple[int, int] | None:
    epoch, offset = subscribe.resume_epoch, subscribe.resume_offset
    if epoch is None and offset is None:
        return None
    if epoch is None or offset is None:
        raise RefusedError(ErrorCode.BAD_REQUEST, "resume_epoch and resume_offset go together")
    return epoch, offset


def _subscribe_ok(request: Subscribe, granted: Subscribed) -> SubscribeOk:
    status, after, upto = granted.resume or (RESUME_NONE, 0, 0)
    return SubscribeOk(
        request_id=request.request_id,
        client_id=request.client_id,
        topic=granted.topic,
        epoch=granted.epoch,
        offset=granted.offset,
        content_type=granted.content_type,
        policy=granted.policy,
        resume=status,
        resume_from=after,
        resume_to=upto,
    )


def _recovered(request: Recover, recovery: Recovery) -> Recovered | Error:
    if recovery.status is not RecoveryStatus.OK:
        detail = f"cannot recover {request.topic!r} after offset {request.from_offset}"
        if recovery.status is RecoveryStatus.HISTORY_EXCEEDED:
            detail += f": the history starts after offset {recovery.start}"
        return _error(request.request_id, recovery.status, detail)
    return Recovered(
        request_id=request.request_id,
        topic=request.topic,
        epoch=recovery.epoch,
        messages=[(entry.offset, entry.header, entry.payload) for entry in recovery.messages],
        more=recovery.more,
    )


def _refusal(message: EdgeMessage, refused: RefusedError) -> Error:
    request_id = getattr(message, "request_id", 0)
    client_id = getattr(message, "client_id", "")
    return _error(request_id, refused.code, refused.detail, client_id)


def _error(request_id: int, code: ErrorCode | RecoveryStatus, detail: str, client_id: str = "") -> Error:
    return Error(request_id=request_id, code=code.value, message=detail, client_id=client_id)


def _as_dict(stats: object) -> dict[str, object]:
    result = msgspec.to_builtins(stats)
    assert isinstance(result, dict)
    return result
