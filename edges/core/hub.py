"""EdgeHub: every client session of one edge, their subscriptions by topic, and fan-out. No I/O.

The shell feeds the hub (client messages, router replies, data from the SUB socket), then drains
:meth:`EdgeHub.drain_actions` (messages for the router, SUB socket changes, clients to close) and
:meth:`EdgeHub.sessions_with_output` (sessions whose :meth:`~edges.core.session.ClientSession.data_to_send`
has something to write). Actions must be carried out in the order given.

Each client holds one :class:`~edges.core.subscription.Subscription` per topic; the hub indexes
them by client and by topic (:mod:`edges.core.topic_index`) and fans each message out, building its
frame once. The shell gives the time: ``now`` to :meth:`EdgeHub.deliver`, and :meth:`EdgeHub.tick`
when a rate-limited ``latest`` frame is due. ``reliable`` subscriptions that owe messages are
refilled from the router's history (:mod:`edges.core.catch_up`): the shell drains the actions again
after writing to clients while :attr:`EdgeHub.catching_up`. After a router restart,
:meth:`EdgeHub.resync` rebuilds the edge's state there.

A topic is watched (:class:`WatchData`) from the moment its first local client asks for it until
its last one leaves. A subscriber receives data once the router confirmed its subscription and it
was told so.

The hub logs one thing itself, through a :class:`~router.logs.ThrottledLog`: the subscribes it
refuses without asking the router (bad topic, the per-client limit, a repeated subscribe), which
:attr:`EdgeStats.refused_requests` also counts.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Final

from edges.core.actions import CloseClient, EdgeAction, ToRouter, UnwatchData, WatchData
from edges.core.catch_up import CatchUp
from edges.core.client import EdgeClient
from edges.core.client_wire import (
    CloseCode,
    Connect,
    Refresh,
    Refreshed,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
    client_error_code,
    encode_data_frame,
)
from edges.core.reports import EdgeCounters, EdgeStats
from edges.core.requests import Reply, RequestKind, RouterRequest, RouterRequests
from edges.core.session import ClientSession, EdgeLimits, State
from edges.core.subscription import Subscription
from edges.core.topic_index import Topic, TopicIndex
from router import wire
from router.core.errors import ErrorCode
from router.core.policy import DeliveryPolicy
from router.core.topics import topic_error
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


class EdgeHub:
    """All client sessions of one edge: subscriptions by client and topic, router requests and fan-out."""

    def __init__(
        self,
        limits: EdgeLimits | None = None,
        *,
        protocol: str = "websocket",
        frame_encoder: Callable[[bytes], bytes] | None = None,
        recovery: bool = True,
    ) -> None:
        """``frame_encoder`` wraps each data frame for the transport, once per message (the
        WebSocket edge frames it as a WebSocket binary message), and each skipped frame; by default
        frames go as they are. Without ``recovery`` the hub never asks the router's history: a
        ``reliable`` client that fell behind skips what it missed once its queue is drained."""
        self.limits = limits or EdgeLimits()
        self.protocol = protocol
        self.recovery = recovery
        self._frame_encoder = frame_encoder
        self._now: float | None = None
        self._clients: dict[str, EdgeClient] = {}
        self._topics = TopicIndex()
        self._requests = RouterRequests()
        self._catch_up = CatchUp(self._requests, self._frame, enabled=recovery)
        self._held: dict[Subscription, None] = {}
        """Subscriptions holding a rate-limited ``latest`` frame, for :meth:`tick`."""
        self._too_slow: list[ClientSession] = []
        self._actions: list[EdgeAction] = []
        self._with_output: dict[str, ClientSession] = {}
        self._counters = EdgeCounters()
        self._refusal_log = ThrottledLog(log, burst=REFUSAL_LOG_BURST)

    # ------------------------------------------------------------ output

    def drain_actions(self) -> list[EdgeAction]:
        """What the shell must do now, in order."""
        if self._catch_up:
            for message in self._catch_up.requests():
                self._to_router(message)
        actions, self._actions = self._actions, []
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

    def _to_router(self, message: wire.EdgeMessage) -> None:
        self._actions.append(ToRouter(message))

    def _request(self, request: RouterRequest, message: Callable[[int], wire.EdgeMessage]) -> int:
        """Record ``request`` and send the router ``message(request_id)``."""
        request_id = self._requests.add(request)
        self._to_router(message(request_id))
        return request_id

    # ------------------------------------------------------------ clients

    def open_client(self, client_id: str, remote: str = "") -> ClientSession:
        """A transport was accepted. ``client_id`` must be unique on this edge."""
        if client_id in self._clients:
            raise ValueError(f"client {client_id!r} is already open")
        session = ClientSession(
            client_id, remote, self.limits, frame_encoder=self._frame_encoder, recoverable=self.recovery
        )
        self._clients[client_id] = EdgeClient(session)
        return session

    def session(self, client_id: str) -> ClientSession | None:
        client = self._clients.get(client_id)
        return client.session if client is not None else None

    def client_text(self, client_id: str, text: str, now: float | None = None) -> None:
        """One text message from a client, received at ``now`` (seconds of a monotonic clock;
        without it the client's request rate is not checked)."""
        client = self._client(client_id)
        match client.session.receive_text(text, now):
            case Connect() as connect:
                self._register(client, connect)
            case Subscribe() as subscribe:
                self._subscribe(client, subscribe)
            case Unsubscribe() as unsubscribe:
                self._unsubscribe(client, unsubscribe)
            case Refresh() as refresh:
                self._refresh(client, refresh)
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
            self._forget(client, reason)
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
            self._forget(client, f"{close.reason or 'closed by the edge'} ({close.code})")
            self._actions.append(CloseClient(session.client_id, *close))

    def _forget(self, client: EdgeClient, reason: str) -> None:
        """Take a closing client out of every topic and request, and out of the router."""
        for sub in list(client.subscriptions.values()):
            self._leave(client, sub)
        self._requests.forget_client(client.session.client_id)
        if client.known_to_router:
            client.known_to_router = False
            self._to_router(wire.UnregisterClient(client_id=client.session.client_id, reason=reason))

    # ------------------------------------------------------------ client requests

    def _register(self, client: EdgeClient, connect: Connect) -> None:
        client.known_to_router = True
        request = RouterRequest(RequestKind.REGISTER, client.client_id)
        self._request(
            request, lambda request_id: client.register_message(request_id, self.protocol, connect.token)
        )

    def _subscribe(self, client: EdgeClient, request: Subscribe) -> None:
        name = request.topic
        refusal = client.subscribe_refusal(name, self.limits.max_subscriptions, topic_error(name))
        if refusal is not None:
            self._refuse_subscribe(client, request, *refusal)
            return
        client_id, resume = client.client_id, request.resume
        topic = self._topics.by_name.get(name) or self._watch(name)
        sub = Subscription(client.session, name, topic.channel, request.id, 0, resume, request.window)
        sub.request_id = self._request(
            RouterRequest(RequestKind.SUBSCRIBE, client_id, name, subscription=sub),
            lambda request_id: wire.Subscribe(
                request_id=request_id,
                client_id=client_id,
                topic=name,
                resume_epoch=resume.epoch if resume is not None else None,
                resume_offset=resume.offset if resume is not None else None,
            ),
        )
        client.subscriptions[name] = topic.holders[client_id] = sub

    def _refuse_subscribe(self, client: EdgeClient, request: Subscribe, code: str, message: str) -> None:
        """Answer ``error``; count and log the refusal, at most :data:`REFUSAL_LOG_BURST` lines
        per code every 5 seconds."""
        client_id = client.session.client_id
        self._counters.refused[code] += 1
        ids = {"client_id": client_id, "topic": request.topic[:80], "reason": code}
        kind = f"subscribe-{code}"
        self._refusal_log.info(kind, "refused subscribe of %s: %s", client_id, message, extra=ids)
        client.session.send_error(request.id, code, message)

    def _unsubscribe(self, client: EdgeClient, request: Unsubscribe) -> None:
        name, client_id = request.topic, client.client_id
        refusal = client.unsubscribe_refusal(name)
        if refusal is not None:
            client.session.send_error(request.id, *refusal)
            return
        self._request(
            RouterRequest(RequestKind.UNSUBSCRIBE, client_id, name, request.id),
            lambda request_id: wire.Unsubscribe(request_id=request_id, client_id=client_id, topic=name),
        )
        self._leave(client, client.subscriptions[name])

    def _refresh(self, client: EdgeClient, refresh: Refresh) -> None:
        client_id = client.session.client_id
        request = RouterRequest(
            RequestKind.REFRESH, client_id, client_request=refresh.id, token=refresh.token
        )
        self._request(
            request,
            lambda request_id: wire.RefreshToken(
                request_id=request_id, client_id=client_id, token=refresh.token
            ),
        )

    def _leave(self, client: EdgeClient, sub: Subscription) -> None:
        """End one subscription; its queued data goes, and the topic with its last client."""
        client_id = sub.client_id
        del client.subscriptions[sub.topic]
        topic = self._topics.by_name[sub.topic]
        del topic.holders[client_id]
        if not sub.confirmed:
            self._requests.discard(sub.request_id)
        topic.receiving.pop(client_id, None)
        topic.retired_drops += sub.leave()
        self._held.pop(sub, None)
        self._catch_up.discard(sub)
        if not topic.holders:
            self._topics.remove(topic)
            self._actions.append(UnwatchData(topic.name))

    def _watch(self, name: str) -> Topic:
        self._actions.append(WatchData(name))
        return self._topics.add(name)

    def policy_of(self, topic: str) -> DeliveryPolicy | None:
        """The topic's policy as the router last gave it, or ``None`` before any."""
        state = self._topics.by_name.get(topic)
        return state.policy if state is not None else None

    # ------------------------------------------------------------ data

    def deliver(self, topic: bytes, epoch: int, offset: int, payload: bytes, now: float | None = None) -> int:
        """Fan one message out to the topic's confirmed subscribers; returns to how many.

        The frame is built once and the same object goes to every subscriber's lane, which queues,
        holds or skips it under the topic's policy. A subscriber skips messages at or before the
        position its ``subscribed`` announced in the same epoch. ``now`` (seconds, from the shell)
        drives rate limits; without it the hub uses the last time it was given, and applies no
        rate limit before it was given any.
        """
        state = self._topics.by_wire.get(topic)
        if state is None:
            self._counters.unexpected_data += 1
            return 0
        if now is None:
            now = self._now
        else:
            self._now = now
        missed = state.advance(epoch, offset)
        if missed is not None:
            self._owe_gap(state, *missed)
        frame = self._frame(state.channel, offset, payload)
        with_output = self._with_output
        count = 0
        for sub in state.receiving.values():
            if offset <= sub.start_offset and epoch == sub.start_epoch:
                continue
            if sub.push(offset, frame, now):
                self._attend(sub, state)
            with_output[sub.client_id] = sub.session
            count += 1
        self._counters.delivered += count
        if self._too_slow:
            self._close_too_slow()
        return count

    def _frame(self, channel: int, offset: int, payload: bytes) -> bytes:
        frame = encode_data_frame(channel, offset, payload)
        return self._frame_encoder(frame) if self._frame_encoder is not None else frame

    def _owe_gap(self, topic: Topic, first: int, last: int) -> None:
        for sub in self._catch_up.gap(topic.receiving.values(), topic.epoch, first, last):
            self._with_output[sub.client_id] = sub.session

    def _attend(self, sub: Subscription, topic: Topic) -> None:
        """A subscription asked to be looked at: it holds a frame for later, fell behind, or its
        client is too slow."""
        if sub.session.too_slow:
            self._too_slow.append(sub.session)
        if sub.held:
            self._held[sub] = None
        if sub.lane_behind:
            self._catch_up.fell_behind(sub, topic.epoch)

    def _close_too_slow(self) -> None:
        sessions, self._too_slow = self._too_slow, []
        for session in sessions:
            client = self._clients.get(session.client_id)
            if client is not None and session.is_open:
                session.close(CloseCode.TOO_SLOW, "too slow")
                self._settle(client)

    def tick(self, now: float) -> float | None:
        """Time passed: queue the rate-limited ``latest`` frames whose token came.

        Returns when to call again (the earliest time a held frame can go), or ``None`` when no
        frame is held. Costs nothing when none is.
        """
        self._now = now
        if not self._held:
            return None
        due = math.inf
        for sub in list(self._held):
            again = sub.release(now)
            session = sub.session
            if session.too_slow:
                self._too_slow.append(session)
            if again is not None:
                due = min(due, again)
                continue
            del self._held[sub]
            if session.has_output:
                self._with_output[session.client_id] = session
        if self._too_slow:
            self._close_too_slow()
        return None if due == math.inf else max(due, now)

    # ------------------------------------------------------------ router messages

    def router_message(self, message: wire.RouterMessage) -> None:
        """A message from the router. Welcome, Heartbeat and Stats belong to the link and are ignored."""
        match message:
            case wire.Registered() | wire.Refreshed() | wire.SubscribeOk() | wire.Unsubscribed():
                self._reply(message)
            case wire.Recovered() | wire.Error():
                self._reply(message)
            case wire.DropClient():
                self._drop(message)
            case wire.PolicyUpdate():
                topic = self._topics.by_name.get(message.topic)
                if topic is not None:
                    self._set_policy(topic, message.policy)

    def _reply(self, message: Reply) -> None:
        request = self._requests.take(message)
        if request is None:
            self._counters.unexpected_replies += 1
            return
        client = self._clients[request.client_id]
        session = client.session
        match message:
            case wire.Registered():
                client.registered(message.user, request.silent)
            case wire.Refreshed():
                self._refreshed(client, request, message)
            case wire.SubscribeOk():
                self._subscribed(client, request, message)
            case wire.Unsubscribed():
                session.send(Unsubscribed(id=_int(request.client_request), topic=request.topic))
            case wire.Recovered():
                if self._catch_up.recovered(message.request_id, request, message):
                    self._with_output[session.client_id] = session
            case wire.Error() if request.kind is RequestKind.RECOVER:
                self._recovery_failed(message.request_id, request)
            case wire.Error():
                self._refused(client, request, message)
        self._settle(client)

    def _refreshed(self, client: EdgeClient, request: RouterRequest, reply: wire.Refreshed) -> None:
        """The router took the new token: it is the one to register with from now on. Each
        subscription it revoked ends as a lost one (an ``error`` with its ``topic``)."""
        session = client.session
        session.token = request.token
        session.send(Refreshed(id=_int(request.client_request), expires_at=reply.expires_at))
        for sub in client.revoked(reply.revoked):
            self._leave(client, sub)
            message = f"the refreshed token does not allow {sub.topic!r}"
            session.send_error(None, ErrorCode.FORBIDDEN, message, topic=sub.topic)

    def _subscribed(self, client: EdgeClient, request: RouterRequest, ok: wire.SubscribeOk) -> None:
        sub = request.subscription_for(ok.request_id)
        if sub is None:
            return
        topic = self._topics.by_name[sub.topic]
        self._set_policy(topic, ok.policy)
        if request.silent:
            sub.reconfirm(ok.epoch, ok.offset)
            self._catch_up.discard(sub)
            return
        sub.confirm(ok.policy, ok.epoch, ok.offset)
        topic.receiving[sub.client_id] = sub
        reply = Subscribed(
            id=sub.client_request,
            topic=topic.name,
            channel=topic.channel,
            epoch=ok.epoch,
            offset=ok.offset,
            content_type=ok.content_type,
            policy=ok.policy.kind,
            resume=ok.resume,
            resume_from=ok.resume_from,
        )
        client.session.send(reply)
        if topic.epoch != ok.epoch:
            topic.epoch, topic.offset = ok.epoch, ok.offset
        if self._catch_up.owe_from_start(sub, ok, topic.offset):
            self._with_output[sub.client_id] = sub.session

    def _set_policy(self, topic: Topic, policy: DeliveryPolicy) -> None:
        """The topic's policy, applied at once to its subscriptions."""
        if not topic.set_policy(policy):
            return
        for sub in list(topic.receiving.values()):
            if sub.set_policy(policy):
                self._attend(sub, topic)
            if sub.session.has_output:
                self._with_output[sub.client_id] = sub.session
        if self._too_slow:
            self._close_too_slow()

    def _refused(self, client: EdgeClient, request: RouterRequest, error: wire.Error) -> None:
        code = client_error_code(error.code)
        if request.kind is RequestKind.REGISTER:
            client.registration_refused(code, error.message)
        elif request.kind is RequestKind.SUBSCRIBE:
            self._subscribe_refused(client, request, error)
        else:
            client.session.send_error(request.client_request, code, error.message)

    def _subscribe_refused(self, client: EdgeClient, request: RouterRequest, error: wire.Error) -> None:
        sub = request.subscription_for(error.request_id)
        if sub is None:
            return
        code, message = client_error_code(error.code), error.message
        self._leave(client, sub)
        if request.silent:
            client.session.send_error(None, code, message, topic=sub.topic)
        else:
            client.session.send_error(sub.client_request, code, message)

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
                client.session.send(Unsubscribed(id=_int(request.client_request), topic=request.topic))
                self._settle(client)
            elif request.kind is RequestKind.RECOVER:
                self._recovery_failed(request_id, request)
            elif request.kind is RequestKind.REFRESH:
                refreshes.append(request)
        messages: list[wire.EdgeMessage] = []
        for client in self._clients.values():
            messages += client.resync_messages(self._requests, self.protocol)
        for request in refreshes:
            client = self._clients[request.client_id]
            if client.session.state is State.READY:
                request_id = self._requests.add(request)
                messages.append(
                    wire.RefreshToken(request_id=request_id, client_id=client.client_id, token=request.token)
                )
        return messages

    # ------------------------------------------------------------ counters

    def report(self) -> list[wire.EdgeStatsReport]:
        """The ``edge_stats`` messages to send the router now (every heartbeat interval): the
        totals, every topic's drops, and each registered client whose figures changed since the
        last report (all of them after :meth:`resync`), split to fit control messages."""
        sessions = [client.session for client in self._clients.values()]
        registered = [client.session for client in self._clients.values() if client.known_to_router]
        topic_drops = {name: topic.drops() for name, topic in self._topics.by_name.items()}
        return self._counters.report(self.stats(), sessions, registered, topic_drops)

    def stats(self) -> EdgeStats:
        sessions = [client.session for client in self._clients.values()]
        catch_up = self._catch_up
        return self._counters.stats(sessions, len(self._topics), catch_up.refilled, catch_up.gaps)


def _int(value: int | None) -> int:
    assert value is not None, "client-visible requests carry the client's id"
    return value
