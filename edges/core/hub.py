"""EdgeHub: every client session of one edge, its topics, and its half of the router link. No I/O.

The shell feeds the hub (client messages, router replies, data from the SUB socket), then drains
:meth:`EdgeHub.drain_actions` (messages for the router, SUB socket changes, clients to close) and
:meth:`EdgeHub.sessions_with_output` (sessions whose :meth:`~edges.core.session.ClientSession.data_to_send`
has something to write). Actions must be carried out in the order given.

Each client's data goes through its :class:`~edges.core.delivery.DeliveryQueue`, one lane per topic under
the topic's delivery policy (``docs/policies.md``). The shell gives the time: ``now`` to
:meth:`EdgeHub.deliver`, and :meth:`EdgeHub.tick` when a rate-limited ``latest`` frame is due.

A ``reliable`` lane that fell behind is refilled once the client read what was queued: the hub
sends the router a ``recover`` for what the lane misses (``docs/protocol.md``, 3.3 rule 9) and
queues the ``recovered`` messages in order. The shell drains the actions again after writing to
clients while :attr:`EdgeHub.catching_up`. The hub does the same for a client that subscribes with
a ``resume`` position the router's history still reaches, and for offsets of a ``reliable`` topic
that never reached the edge (a gap in the topic's sequence).

A topic is watched (the SUB socket subscribed to ``topic + b"\\0"``) from the moment its first
local client asks for it until its last one leaves, and has a channel number for that long. A
subscriber receives data once the router confirmed its subscription and it was told so.

The hub logs one thing itself, through a :class:`~router.logs.ThrottledLog`: the subscribes it
refuses without asking the router (bad topic, the per-client limit, a repeated subscribe), which
:attr:`EdgeStats.refused_requests` also counts.
"""

from __future__ import annotations

import heapq
import logging
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final, Literal, NamedTuple

import msgspec

from edges.core.client_wire import (
    CloseCode,
    Connect,
    Refresh,
    Refreshed,
    Resume,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
    client_error_code,
)
from edges.core.delivery import Lane
from edges.core.output import Data, Framing, data_frame
from edges.core.session import ClientSession, EdgeLimits, State
from router import wire
from router.core.edge_reports import ClientFigures, EdgeTotals
from router.core.errors import ErrorCode
from router.core.policy import DeliveryPolicy
from router.core.topics import topic_error
from router.logs import ThrottledLog

__all__ = [
    "Behind",
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


# ---------------------------------------------------------------- actions


class ToRouter(NamedTuple):
    """Send this control message to the router on the DEALER socket."""

    message: wire.EdgeMessage


class WatchData(NamedTuple):
    """Subscribe the SUB socket to :attr:`prefix` (the topic's first local client arrived)."""

    topic: str

    @property
    def prefix(self) -> bytes:
        return self.topic.encode() + b"\0"


class UnwatchData(NamedTuple):
    """Unsubscribe the SUB socket from :attr:`prefix` (the topic's last local client left)."""

    topic: str

    @property
    def prefix(self) -> bytes:
        return self.topic.encode() + b"\0"


class CloseClient(NamedTuple):
    """Write the session's pending output (it ends with ``closing``), then close the transport
    with ``code`` and ``reason``, then call :meth:`EdgeHub.client_closed`."""

    client_id: str
    code: int
    reason: str


EdgeAction = ToRouter | WatchData | UnwatchData | CloseClient


class Behind(NamedTuple):
    """A client's ``reliable`` topic that stopped queueing: what :meth:`EdgeHub.behind` lists."""

    client_id: str
    topic: str
    epoch: int
    first_offset: int
    """The first message not queued: where a refill starts."""
    last_offset: int
    owed: int
    """Messages owed, from ``first_offset`` to ``last_offset``."""
    asked: bool
    """A ``recover`` is out and not answered yet."""


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


# ---------------------------------------------------------------- internal state


@dataclass(eq=False, slots=True)
class _Topic:
    name: str
    channel: int
    members: set[str] = field(default_factory=set)
    """Clients holding the topic, whether the router confirmed them yet or not."""
    active: dict[str, tuple[ClientSession, Lane, int, int]] = field(default_factory=dict)
    """Confirmed subscribers: session, lane, and the epoch and offset their ``subscribed`` announced."""
    policy: DeliveryPolicy | None = None
    reliable: bool = False
    epoch: int = 0
    """The epoch of the newest message received, or of the first subscription's position."""
    offset: int = 0
    """The newest offset received in :attr:`epoch` (or that position's)."""
    retired_drops: int = 0
    """The drops of the lanes of subscribers that left (see :meth:`EdgeHub.report`)."""

    def drops(self) -> int:
        return self.retired_drops + sum(lane.drops for _, lane, _, _ in self.active.values())


@dataclass(eq=False, slots=True)
class _Behind:
    session: ClientSession
    lane: Lane
    topic: _Topic
    epoch: int
    asked: int = 0
    """The id of the ``recover`` out for this lane, 0 when none is."""


@dataclass(eq=False, slots=True)
class _Member:
    topic: _Topic
    client_request: int
    request_id: int | None
    """The router request for this subscription in flight, while the client waits for it."""
    resume: Resume | None = None
    window: int | None = None


@dataclass(eq=False, slots=True)
class _Client:
    session: ClientSession
    subscriptions: dict[str, _Member] = field(default_factory=dict)
    requests: set[int] = field(default_factory=set)
    known_to_router: bool = False
    """A RegisterClient was sent, and neither refused nor ended by the router since."""
    close_sent: bool = False


class _Request(NamedTuple):
    """A router request in flight. ``silent``: sent by :meth:`EdgeHub.resync`, no client waits.
    ``token``: the new token of a ``refresh``."""

    kind: Literal["register", "subscribe", "unsubscribe", "recover", "refresh"]
    client_id: str
    topic: str = ""
    client_request: int | None = None
    silent: bool = False
    token: str = ""


# ---------------------------------------------------------------- the hub


class EdgeHub:
    """All client sessions of one edge: topic index, channels, router requests and fan-out."""

    def __init__(
        self,
        limits: EdgeLimits | None = None,
        *,
        protocol: str = "websocket",
        framing: Framing | None = None,
        recovery: bool = True,
    ) -> None:
        """``framing`` heads each data frame for the transport, once per message (the WebSocket
        edge frames it as a WebSocket binary message), and each skipped frame; by default
        frames go as they are. Without ``recovery`` the hub never asks the router's history: a
        ``reliable`` client that fell behind skips what it missed once its queue is drained."""
        self.limits = limits or EdgeLimits()
        self.protocol = protocol
        self.recovery = recovery
        self._framing = framing
        self._now: float | None = None
        self._waiting: dict[tuple[str, int], tuple[ClientSession, Lane]] = {}
        """Lanes holding a rate-limited ``latest`` frame, for :meth:`tick`."""
        self._behind: dict[tuple[str, int], _Behind] = {}
        self._too_slow: list[ClientSession] = []
        self.refilled = 0
        self.gaps = 0
        self._clients: dict[str, _Client] = {}
        self._topics: dict[str, _Topic] = {}
        self._wire_topics: dict[bytes, _Topic] = {}
        self._free_channels: list[int] = []
        self._next_channel = 0
        self._pending: dict[int, _Request] = {}
        self._next_request = 1
        self._actions: list[EdgeAction] = []
        self._with_output: dict[str, ClientSession] = {}
        self._retired_drops: Counter[str] = Counter()
        self._retired_bad = 0
        self._retired_rate_limited = 0
        self._reported: dict[str, ClientFigures] = {}
        """What the last :meth:`report` said of each client."""
        self.delivered = 0
        self.unexpected_data = 0
        self.unexpected_replies = 0
        self.refused: Counter[str] = Counter()
        """Subscribes refused by the hub itself, by error code."""
        self._refusal_log = ThrottledLog(log, burst=REFUSAL_LOG_BURST)

    # ------------------------------------------------------------ output

    def drain_actions(self) -> list[EdgeAction]:
        """What the shell must do now, in order."""
        if self._behind:
            self._ask_catch_ups()
        actions, self._actions = self._actions, []
        return actions

    @property
    def catching_up(self) -> bool:
        """Some ``reliable`` lane waits to be refilled: after writing to clients, drain the actions
        again, since a lane whose queue the write emptied asks for its next messages then."""
        return bool(self._behind)

    def sessions_with_output(self) -> list[ClientSession]:
        """Sessions that got something to write since the last call."""
        sessions = list(self._with_output.values())
        self._with_output.clear()
        return sessions

    # ------------------------------------------------------------ clients

    def open_client(self, client_id: str, remote: str = "") -> ClientSession:
        """A transport was accepted. ``client_id`` must be unique on this edge."""
        if client_id in self._clients:
            raise ValueError(f"client {client_id!r} is already open")
        session = ClientSession(
            client_id, remote, self.limits, framing=self._framing, recoverable=self.recovery
        )
        self._clients[client_id] = _Client(session)
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

    def client_connect(self, client_id: str, connect: Connect) -> None:
        """A ``connect`` that came from elsewhere than a text message (a WebRTC offer's token)."""
        client = self._client(client_id)
        if client.session.receive(connect) is not None:
            self._register(client, connect)
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
        self._reported.pop(client_id, None)
        self._retired_drops.update(client.session.dropped)
        self._retired_bad += client.session.bad_messages
        self._retired_rate_limited += client.session.rate_limited

    def _client(self, client_id: str) -> _Client:
        client = self._clients.get(client_id)
        if client is None:
            raise KeyError(f"no open client {client_id!r}")
        return client

    def _settle(self, client: _Client) -> None:
        """After any change to a session: note its output, and carry out a close it started."""
        session = client.session
        if session.has_output:
            self._with_output[session.client_id] = session
        if session.close_request is not None and not client.close_sent:
            client.close_sent = True
            code, reason = session.close_request
            self._forget(client, f"{reason or 'closed by the edge'} ({code})")
            self._actions.append(CloseClient(session.client_id, *session.close_request))

    def _forget(self, client: _Client, reason: str) -> None:
        """Take a closing client out of every topic and request, and out of the router."""
        for name in list(client.subscriptions):
            self._leave(client, name)
        for request_id in client.requests:
            self._pending.pop(request_id, None)
        client.requests.clear()
        if client.known_to_router:
            client.known_to_router = False
            self._to_router(wire.UnregisterClient(client_id=client.session.client_id, reason=reason))

    # ------------------------------------------------------------ client requests

    def _register(self, client: _Client, connect: Connect) -> None:
        session = client.session
        request_id = self._request(client, _Request("register", session.client_id))
        client.known_to_router = True
        self._to_router(self._register_message(request_id, session, connect.token))

    def _register_message(
        self, request_id: int, session: ClientSession, token: str | None
    ) -> wire.RegisterClient:
        return wire.RegisterClient(
            request_id=request_id,
            client_id=session.client_id,
            protocol=self.protocol,
            remote=session.remote,
            token=token,
        )

    def _subscribe(self, client: _Client, request: Subscribe) -> None:
        refusal = self._subscribe_refusal(client, request.topic)
        if refusal is not None:
            self._refuse_subscribe(client, request, *refusal)
            return
        name = request.topic
        topic = self._topics.get(name) or self._watch(name)
        client_id = client.session.client_id
        request_id = self._request(client, _Request("subscribe", client_id, name))
        resume = request.resume
        client.subscriptions[name] = _Member(topic, request.id, request_id, resume, request.window)
        topic.members.add(client_id)
        self._to_router(
            wire.Subscribe(
                request_id=request_id,
                client_id=client_id,
                topic=name,
                resume_epoch=resume.epoch if resume is not None else None,
                resume_offset=resume.offset if resume is not None else None,
            )
        )

    def _subscribe_refusal(self, client: _Client, name: str) -> tuple[str, str] | None:
        reason = topic_error(name)
        if reason is not None:
            return ErrorCode.BAD_TOPIC, f"{name[:80]!r}: {reason}"
        member = client.subscriptions.get(name)
        if member is not None:
            state = "already subscribed" if member.request_id is None else "a subscribe is in progress"
            return ErrorCode.BAD_REQUEST, f"{state} on {name!r}"
        most = self.limits.max_subscriptions
        if len(client.subscriptions) >= most:
            return ErrorCode.LIMIT_EXCEEDED, f"at most {most} subscriptions per client"
        return None

    def _refuse_subscribe(self, client: _Client, request: Subscribe, code: str, message: str) -> None:
        """Answer ``error``; count and log the refusal, at most :data:`REFUSAL_LOG_BURST` lines
        per code every 5 seconds."""
        client_id = client.session.client_id
        self.refused[code] += 1
        ids = {"client_id": client_id, "topic": request.topic[:80], "reason": code}
        kind = f"subscribe-{code}"
        self._refusal_log.info(kind, "refused subscribe of %s: %s", client_id, message, extra=ids)
        client.session.send_error(request.id, code, message)

    def _unsubscribe(self, client: _Client, request: Unsubscribe) -> None:
        name = request.topic
        member = client.subscriptions.get(name)
        if member is None:
            client.session.send_error(
                request.id, ErrorCode.NOT_SUBSCRIBED, f"not subscribed to {name[:80]!r}"
            )
            return
        if member.request_id is not None:
            client.session.send_error(request.id, ErrorCode.BAD_REQUEST, "wait for the subscribe reply first")
            return
        client_id = client.session.client_id
        request_id = self._request(client, _Request("unsubscribe", client_id, name, request.id))
        self._to_router(wire.Unsubscribe(request_id=request_id, client_id=client_id, topic=name))
        self._leave(client, name)

    def _refresh(self, client: _Client, refresh: Refresh) -> None:
        client_id = client.session.client_id
        request = _Request("refresh", client_id, client_request=refresh.id, token=refresh.token)
        request_id = self._request(client, request)
        self._to_router(wire.RefreshToken(request_id=request_id, client_id=client_id, token=refresh.token))

    def _leave(self, client: _Client, name: str) -> None:
        """Remove one subscription locally; its queued data goes, and the topic with its last client."""
        member = client.subscriptions.pop(name)
        topic = member.topic
        client_id = client.session.client_id
        topic.members.discard(client_id)
        active = topic.active.pop(client_id, None)
        if active is not None:
            topic.retired_drops += active[1].drops
            client.session.purge_channel(topic.channel)
        if member.request_id is not None:
            self._pending.pop(member.request_id, None)
            client.requests.discard(member.request_id)
        if not topic.members:
            self._unwatch(topic)

    def _request(self, client: _Client, request: _Request) -> int:
        request_id = self._next_request
        self._next_request += 1
        self._pending[request_id] = request
        client.requests.add(request_id)
        return request_id

    def _to_router(self, message: wire.EdgeMessage) -> None:
        self._actions.append(ToRouter(message))

    # ------------------------------------------------------------ topics and channels

    def _watch(self, name: str) -> _Topic:
        channel = heapq.heappop(self._free_channels) if self._free_channels else self._new_channel()
        topic = _Topic(name, channel)
        self._topics[name] = topic
        self._wire_topics[name.encode()] = topic
        self._actions.append(WatchData(name))
        return topic

    def _new_channel(self) -> int:
        channel = self._next_channel
        self._next_channel += 1
        return channel

    def _unwatch(self, topic: _Topic) -> None:
        del self._topics[topic.name]
        del self._wire_topics[topic.name.encode()]
        heapq.heappush(self._free_channels, topic.channel)
        self._actions.append(UnwatchData(topic.name))

    def channel_of(self, topic: str) -> int | None:
        """The channel of a watched topic, or ``None``."""
        state = self._topics.get(topic)
        return state.channel if state is not None else None

    def policy_of(self, topic: str) -> DeliveryPolicy | None:
        """The topic's policy as the router last gave it, or ``None`` before any."""
        state = self._topics.get(topic)
        return state.policy if state is not None else None

    def watched_topics(self) -> list[str]:
        """Topics with at least one local client, confirmed or not."""
        return list(self._topics)

    # ------------------------------------------------------------ data

    def deliver(self, topic: bytes, epoch: int, offset: int, payload: bytes, now: float | None = None) -> int:
        """Fan one message out to the topic's confirmed subscribers; returns to how many.

        The frame is built once and the same object goes to every subscriber's lane, which queues,
        holds or skips it under the topic's policy. A subscriber skips messages at or before the
        position its ``subscribed`` announced in the same epoch. ``now`` (seconds, from the shell)
        drives rate limits; without it the hub uses the last time it was given, and applies no
        rate limit before it was given any.
        """
        state = self._wire_topics.get(topic)
        if state is None:
            self.unexpected_data += 1
            return 0
        if now is None:
            now = self._now
        else:
            self._now = now
        if epoch != state.epoch:
            state.epoch = epoch
            state.offset = offset
        elif offset > state.offset:
            if offset > state.offset + 1 and state.reliable:
                self._owe_gap(state, state.offset + 1, offset - 1)
            state.offset = offset
        frame = self._frame(state.channel, offset, payload)
        with_output = self._with_output
        count = 0
        for session, lane, start_epoch, start_offset in state.active.values():
            if offset <= start_offset and epoch == start_epoch:
                continue
            if lane.push(offset, frame, now):
                self._attend(session, lane, state)
            with_output[session.client_id] = session
            count += 1
        self.delivered += count
        if self._too_slow:
            self._close_too_slow()
        return count

    def _frame(self, channel: int, offset: int, payload: bytes) -> Data:
        return data_frame(channel, offset, payload, self._framing)

    def _owe_gap(self, topic: _Topic, first: int, last: int) -> None:
        """Messages ``first`` to ``last`` of a ``reliable`` topic never reached this edge: each
        subscriber that should have had them refills them from the router's history."""
        self.gaps += last - first + 1
        for session, lane, start_epoch, start_offset in topic.active.values():
            if start_epoch == topic.epoch:
                self._owe(session, lane, topic, max(first, start_offset + 1), last)
            else:
                self._owe(session, lane, topic, first, last)

    def _owe(self, session: ClientSession, lane: Lane, topic: _Topic, first: int, last: int) -> None:
        if last < first or not lane.open or lane.kind != "reliable":
            return
        lane.owe(first, last)
        if not self.recovery:
            lane.give_up()
        else:
            key = (session.client_id, lane.channel)
            if key not in self._behind:
                self._behind[key] = _Behind(session, lane, topic, topic.epoch)
        self._with_output[session.client_id] = session

    def _attend(self, session: ClientSession, lane: Lane, topic: _Topic) -> None:
        """A lane asked to be looked at: it holds a frame for later, fell behind, or is too slow."""
        key = (session.client_id, lane.channel)
        if session.too_slow:
            self._too_slow.append(session)
        if lane.held is not None:
            self._waiting[key] = (session, lane)
        if lane.behind is not None:
            self._behind[key] = _Behind(session, lane, topic, topic.epoch)

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
        if not self._waiting:
            return None
        due = math.inf
        for key, (session, lane) in list(self._waiting.items()):
            if lane.open and lane.held is not None:
                lane.release(now)
            if session.too_slow:
                self._too_slow.append(session)
            if lane.open and lane.held is not None:
                due = min(due, lane.next_release() or now)
                continue
            del self._waiting[key]
            if session.has_output:
                self._with_output[session.client_id] = session
        if self._too_slow:
            self._close_too_slow()
        return None if due == math.inf else max(due, now)

    # ------------------------------------------------------------ reliable clients behind

    def behind(self) -> list[Behind]:
        """The ``reliable`` subscriptions that stopped queueing and wait to be refilled."""
        self._forget_caught_up()
        return [
            Behind(
                key[0],
                entry.topic.name,
                entry.epoch,
                behind.first,
                behind.last,
                behind.count,
                entry.asked > 0,
            )
            for key, entry in self._behind.items()
            if (behind := entry.lane.behind) is not None
        ]

    def _recovered(self, request_id: int, request: _Request, reply: wire.Recovered) -> None:
        """The router's answer to a ``recover``: queue what it brought, in order.

        The lane is then caught up, or still behind (it asks again once the client read what was
        queued), or it gave up (a reply of another epoch, or one that brings nothing).
        """
        entry = self._entry(request_id, request)
        if entry is None:
            return
        entry.asked = 0
        lane = entry.lane
        if reply.epoch != entry.epoch:
            lane.give_up()
            return
        channel = lane.channel
        frames = ((offset, self._frame(channel, offset, payload)) for offset, _, payload in reply.messages)
        queued = lane.recover(frames, reply.more)
        self.refilled += queued
        self._with_output[request.client_id] = entry.session

    def _recovery_failed(self, request_id: int, request: _Request) -> None:
        """A ``recover`` was refused (the history no longer reaches back, or the epoch changed):
        the client gets a skipped frame for what it missed, then live messages again."""
        entry = self._entry(request_id, request)
        if entry is not None:
            entry.asked = 0
            entry.lane.give_up()
            self._with_output[request.client_id] = entry.session

    def _entry(self, request_id: int, request: _Request) -> _Behind | None:
        """The lane a ``recover`` was sent for, if it is still open and waits for this reply."""
        state = self._topics.get(request.topic)
        entry = self._behind.get((request.client_id, state.channel)) if state is not None else None
        if entry is None or entry.asked != request_id or not entry.lane.open or entry.lane.behind is None:
            return None
        return entry

    def _ask_catch_ups(self) -> None:
        """A ``recover`` for each lane behind whose queue is empty and that has none out."""
        self._forget_caught_up()
        if not self.recovery:
            return
        for (client_id, _), entry in self._behind.items():
            behind = entry.lane.behind
            if behind is not None and not entry.asked and not entry.lane.count:
                client = self._clients[client_id]
                name = entry.topic.name
                entry.asked = self._request(client, _Request("recover", client_id, name))
                self._to_router(
                    wire.Recover(
                        request_id=entry.asked,
                        topic=name,
                        epoch=entry.epoch,
                        from_offset=behind.first - 1,
                        to_offset=behind.last,
                    )
                )

    def _forget_caught_up(self) -> None:
        for key, entry in list(self._behind.items()):
            if not entry.lane.open or entry.lane.behind is None:
                del self._behind[key]

    # ------------------------------------------------------------ router replies

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
                state = self._topics.get(message.topic)
                if state is not None:
                    self._set_policy(state, message.policy)

    def _reply(self, message: _Reply) -> None:
        request = self._pending.get(message.request_id)
        if request is None or not _answers(message, request):
            self.unexpected_replies += 1
            return
        del self._pending[message.request_id]
        client = self._clients[request.client_id]
        client.requests.discard(message.request_id)
        match message:
            case wire.Registered():
                self._registered(client, request, message.user)
            case wire.Refreshed():
                self._refreshed(client, request, message)
            case wire.SubscribeOk():
                self._subscribed(client, request, message)
            case wire.Unsubscribed():
                client.session.send(Unsubscribed(id=_int(request.client_request), topic=request.topic))
            case wire.Recovered():
                self._recovered(message.request_id, request, message)
            case wire.Error() if request.kind == "recover":
                self._recovery_failed(message.request_id, request)
            case wire.Error():
                self._refused(client, request, message)
        self._settle(client)

    def _registered(self, client: _Client, request: _Request, user: str) -> None:
        if request.silent:
            client.session.user = user
        else:
            client.session.registered(user)

    def _refreshed(self, client: _Client, request: _Request, reply: wire.Refreshed) -> None:
        """The router took the new token: it is the one to register with from now on. Each
        subscription it revoked ends as a lost one (an ``error`` with its ``topic``), unless the
        client already asked for that topic again."""
        session = client.session
        session.token = request.token
        session.send(Refreshed(id=_int(request.client_request), expires_at=reply.expires_at))
        for name in reply.revoked:
            member = client.subscriptions.get(name)
            if member is not None and member.request_id is None:
                self._leave(client, name)
                message = f"the refreshed token does not allow {name!r}"
                session.send_error(None, ErrorCode.FORBIDDEN, message, topic=name)

    def _subscribed(self, client: _Client, request: _Request, ok: wire.SubscribeOk) -> None:
        member = client.subscriptions.get(request.topic)
        if member is None or (request.silent and member.request_id is not None):
            return
        member.request_id = None
        topic = member.topic
        self._set_policy(topic, ok.policy)
        session = client.session
        lane = session.open_lane(topic.channel, ok.policy)
        if request.silent:
            lane.give_up()
        else:
            lane.limit_in_flight(member.window)
        topic.active[session.client_id] = (session, lane, ok.epoch, ok.offset)
        if request.silent:
            return
        reply = Subscribed(
            id=member.client_request,
            topic=topic.name,
            channel=topic.channel,
            epoch=ok.epoch,
            offset=ok.offset,
            content_type=ok.content_type,
            policy=ok.policy.kind,
            resume=ok.resume,
            resume_from=ok.resume_from,
        )
        session.send(reply)
        self._owe_from_start(session, lane, topic, ok)

    def _owe_from_start(
        self, session: ClientSession, lane: Lane, topic: _Topic, ok: wire.SubscribeOk
    ) -> None:
        """A new ``reliable`` subscriber owes the messages after its resume position that the
        history still holds, and those that passed this edge before the router's reply came."""
        if topic.epoch != ok.epoch:
            topic.epoch, topic.offset = ok.epoch, ok.offset
        first = ok.resume_from + 1 if ok.resume in _REPLAYED else ok.offset + 1
        self._owe(session, lane, topic, first, max(ok.offset, topic.offset))

    def _set_policy(self, topic: _Topic, policy: DeliveryPolicy) -> None:
        """The topic's policy, applied at once to the lanes of its subscribers."""
        if topic.policy == policy:
            return
        topic.policy = policy
        topic.reliable = policy.kind == "reliable"
        for session, lane, _, _ in list(topic.active.values()):
            if lane.set_policy(policy):
                self._attend(session, lane, topic)
            if session.has_output:
                self._with_output[session.client_id] = session
        if self._too_slow:
            self._close_too_slow()

    def _refused(self, client: _Client, request: _Request, error: wire.Error) -> None:
        session = client.session
        code = client_error_code(error.code)
        if request.kind == "register":
            client.known_to_router = False
            session.send_error(None, code, error.message)
            if session.is_open:
                session.close(CloseCode.REFUSED, f"connect refused: {code}")
        elif request.kind in ("unsubscribe", "refresh"):
            session.send_error(request.client_request, code, error.message)
        else:
            self._subscribe_refused(client, request, code, error.message)

    def _subscribe_refused(self, client: _Client, request: _Request, code: str, message: str) -> None:
        member = client.subscriptions.get(request.topic)
        if member is None or (request.silent and member.request_id is not None):
            return
        member.request_id = None
        self._leave(client, request.topic)
        if request.silent:
            client.session.send_error(None, code, message, topic=request.topic)
        else:
            client.session.send_error(member.client_request, code, message)

    def _drop(self, message: wire.DropClient) -> None:
        client = self._clients.get(message.client_id)
        if client is None or not client.session.is_open:
            self.unexpected_replies += 1
            return
        client.known_to_router = False
        code = CloseCode.GOING_AWAY if message.code == CloseCode.GOING_AWAY else CloseCode.DROPPED
        client.session.close(code, message.reason)
        self._settle(client)

    # ------------------------------------------------------------ router restart

    def resync(self) -> list[wire.EdgeMessage]:
        """After a router restart: the messages that rebuild this edge's state there, in order.

        The caller sends ``Hello`` first, then these. Requests in flight were lost with the old
        router: unsubscribes are answered now, registers and subscribes are sent again, and token
        refreshes after them (a client registers with the last token the router accepted).
        """
        lost = dict(self._pending)
        self._pending.clear()
        self._reported.clear()
        for client in self._clients.values():
            client.requests.clear()
        self._answer_lost(lost)
        messages: list[wire.EdgeMessage] = []
        for client in self._clients.values():
            messages += self._resync_client(client)
        return messages + self._refresh_again(lost.values())

    def _refresh_again(self, lost: Iterable[_Request]) -> list[wire.EdgeMessage]:
        messages: list[wire.EdgeMessage] = []
        for request in lost:
            client = self._clients.get(request.client_id)
            if request.kind == "refresh" and client is not None and client.session.state is State.READY:
                request_id = self._request(client, request)
                messages.append(
                    wire.RefreshToken(request_id=request_id, client_id=request.client_id, token=request.token)
                )
        return messages

    def _answer_lost(self, lost: dict[int, _Request]) -> None:
        """Unsubscribes are done, and the lanes that waited for a ``recover`` give up: the
        restarted router's history is of another epoch."""
        for request_id, request in lost.items():
            if request.kind == "unsubscribe":
                client = self._clients[request.client_id]
                client.session.send(Unsubscribed(id=_int(request.client_request), topic=request.topic))
                self._settle(client)
            elif request.kind == "recover":
                self._recovery_failed(request_id, request)

    def _resync_client(self, client: _Client) -> list[wire.EdgeMessage]:
        session = client.session
        if session.state not in (State.REGISTERING, State.READY):
            return []
        ready = session.state is State.READY
        request = _Request("register", session.client_id, silent=ready)
        messages: list[wire.EdgeMessage] = [
            self._register_message(self._request(client, request), session, session.token)
        ]
        for name, member in client.subscriptions.items():
            silent = member.request_id is None
            request_id = self._request(client, _Request("subscribe", session.client_id, name, silent=silent))
            if not silent:
                member.request_id = request_id
            messages.append(wire.Subscribe(request_id=request_id, client_id=session.client_id, topic=name))
        return messages

    # ------------------------------------------------------------ counters

    def report(self) -> list[wire.EdgeStatsReport]:
        """The ``edge_stats`` messages to send the router now (every heartbeat interval): the
        totals, every topic's drops, and each registered client whose figures changed since the
        last report (all of them after :meth:`resync`), split to fit control messages."""
        stats = self.stats()
        totals = EdgeTotals(
            clients=stats.clients,
            delivered=stats.delivered,
            queued_messages=sum(c.session.queued_messages for c in self._clients.values()),
            queued_bytes=sum(c.session.queued_bytes for c in self._clients.values()),
            dropped=stats.dropped,
        )
        topic_drops = {name: topic.drops() for name, topic in self._topics.items()}
        return _split_report(totals, topic_drops, self._changed_clients())

    def _changed_clients(self) -> list[ClientFigures]:
        changed = []
        for client in self._clients.values():
            if client.known_to_router:
                figures = _figures(client.session)
                if self._reported.get(figures.client_id) != figures:
                    self._reported[figures.client_id] = figures
                    changed.append(figures)
        return changed

    def stats(self) -> EdgeStats:
        dropped = Counter(self._retired_drops)
        bad = self._retired_bad
        rate_limited = self._retired_rate_limited
        for client in self._clients.values():
            dropped.update(client.session.dropped)
            bad += client.session.bad_messages
            rate_limited += client.session.rate_limited
        return EdgeStats(
            clients=len(self._clients),
            topics=len(self._topics),
            delivered=self.delivered,
            dropped=dict(dropped),
            bad_client_messages=bad,
            rate_limited_client_messages=rate_limited,
            unexpected_data=self.unexpected_data,
            unexpected_replies=self.unexpected_replies,
            recovered=self.refilled,
            gaps=self.gaps,
            refused_requests=dict(self.refused),
        )


REPORT_BUDGET: Final = 48 * 1024
"""Bytes of topic and client entries in one ``edge_stats`` message, under the 64 KiB bound."""
_NOT_DROPS = frozenset({"closed", "unsubscribed"})
"""Reasons in :attr:`ClientSession.dropped` that are not counted among a client's drops."""


def _figures(session: ClientSession) -> ClientFigures:
    dropped = sum(n for reason, n in session.dropped.items() if reason not in _NOT_DROPS)
    return ClientFigures(session.client_id, session.queued_messages, session.queued_bytes, dropped)


def _split_report(
    totals: EdgeTotals, topic_drops: dict[str, int], clients: list[ClientFigures]
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


_REPLAYED = frozenset({ErrorCode.HISTORY_EXCEEDED.value, "ok"})
"""``SubscribeOk.resume`` values after which the history holds the messages from ``resume_from + 1``."""

_Reply = wire.Registered | wire.Refreshed | wire.SubscribeOk | wire.Unsubscribed | wire.Recovered | wire.Error
_ANSWERS = {
    wire.Registered: "register",
    wire.Refreshed: "refresh",
    wire.SubscribeOk: "subscribe",
    wire.Unsubscribed: "unsubscribe",
    wire.Recovered: "recover",
}


def _answers(message: wire.RouterMessage, request: _Request) -> bool:
    """Whether ``message`` is a possible answer to ``request`` (an error answers anything)."""
    expected = _ANSWERS.get(type(message))
    return expected is None or expected == request.kind


def _int(value: int | None) -> int:
    assert value is not None, "client-visible requests carry the client's id"
    return value
