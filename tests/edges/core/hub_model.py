"""A deliberately simple model of what an EdgeHub must do, for the state machine in test_hub.py.

Plain dicts, lists and dataclasses: per client, a lifecycle state, its subscriptions (the position
each ``subscribed`` announced), the control replies it must read next and the messages handed to
it; per topic, the router's position and its history; the requests the router still has to answer.
Each method applies one event and records what the hub must do: the actions (as signatures, in
:attr:`HubModel.expected`) and the client's replies. It knows nothing of lanes or queues: whether a
data frame arrives, is dropped, or is refilled from history is the hub's business, which the
machine checks by accounting for every message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edges.core.client_wire import CloseCode
from edges.core.session import EdgeLimits

LIMITS = EdgeLimits(
    max_message_bytes=128,
    max_subscriptions=2,
    queue_max_messages=3,
    queue_max_bytes=48,
    max_pending_replies=6,
)
TOPICS = ["/a", "/b", "/c"]
CLIENT_CODES = {
    "unauthorized": "unauthorized",
    "duplicate_client": "internal",
    "forbidden": "forbidden",
    "unknown_topic": "unknown_topic",
    "not_subscribed": "not_subscribed",
}


@dataclass(eq=False)
class Sub:
    client_request: int
    position: tuple[int, int] | None = None
    """(epoch, offset) announced in ``subscribed``; None while the client waits for it."""
    since: int = 0
    """The last serial delivered before the subscription was confirmed."""
    may_skip: bool = False
    """Whether the hub may turn what it owes into a skipped frame (``behind``): a ``recover`` for
    it was refused, the router restarted, or the topic stopped being ``reliable`` for a while."""


@dataclass
class Client:
    client_id: str
    state: str = "new"
    known: bool = False
    subs: dict[str, Sub] = field(default_factory=dict)
    replies: list[dict[str, Any]] = field(default_factory=list)
    """Control messages expected in the next drain, as fields to match (a set: any of)."""
    pushed: list[int] = field(default_factory=list)
    """Serials of the messages handed to this client, in order."""


@dataclass
class Request:
    kind: str
    client_id: str
    topic: str = ""
    client_request: int | None = None
    sub: Sub | None = None
    """The subscription a subscribe is for; a reply concerns it only while the client holds it."""
    silent: bool = False


@dataclass
class Recovery:
    """A ``recover`` the router has to answer, and the clients it may be for (it names none)."""

    topic: str
    epoch: int
    first: int
    last: int
    candidates: frozenset[str]
    subs: tuple[Sub, ...]
    """The candidates' subscriptions when it was sent (a later one to the topic is not concerned)."""


class HubModel:
    def __init__(self) -> None:
        self.clients: dict[str, Client] = {}
        self.requests: dict[int, Request] = {}
        self.recoveries: dict[int, Recovery] = {}
        self.positions = {topic: (1, 0) for topic in [*TOPICS, "/other"]}
        self.history: dict[tuple[str, int], dict[int, bytes]] = {}
        """What the router's history holds, by topic and epoch: offset -> payload."""
        self.kinds: dict[str, str] = {}
        """The policy kind the hub applies to each topic its clients hold."""
        self.watched: set[str] = set()
        self.expected: list[tuple[object, ...]] = []
        self.delivered = self.bad = self.unexpected_data = self.unexpected_replies = 0
        self.unexpected_slack = 0
        """Recover replies that may or may not be unexpected (some of their candidates left)."""

    # ------------------------------------------------------------ helpers

    def expect(self, *action: object) -> None:
        self.expected.append(action)

    def held(self, topic: str) -> bool:
        return any(topic in client.subs for client in self.clients.values())

    def reply(self, client: Client, **fields: Any) -> None:
        client.replies.append(fields)
        if len(client.replies) > LIMITS.max_pending_replies and client.state != "closing":
            self.edge_closes(client, CloseCode.POLICY_VIOLATION)

    def edge_closes(self, client: Client, code: int) -> None:
        client.state = "closing"
        client.replies.append({"op": "closing", "code": code})
        self.forget(client)
        self.expect("close", client.client_id, code)

    def forget(self, client: Client) -> None:
        for topic in list(client.subs):
            self.leave(client, topic)
        self.requests = {rid: r for rid, r in self.requests.items() if r.client_id != client.client_id}
        if client.known:
            client.known = False
            self.expect("unregister", client.client_id)

    def join(self, client: Client, topic: str, client_request: int) -> None:
        if not self.held(topic):
            self.expect("watch", topic)
        client.subs[topic] = Sub(client_request)
        self.expect("subscribe", client.client_id, topic)

    def leave(self, client: Client, topic: str) -> None:
        del client.subs[topic]
        if not self.held(topic):
            self.kinds.pop(topic, None)
            self.expect("unwatch", topic)

    def receives(self, client: Client, topic: str, epoch: int, offset: int) -> bool:
        sub = client.subs.get(topic)
        if client.state != "ready" or sub is None or sub.position is None:
            return False
        return epoch != sub.position[0] or offset > sub.position[1]

    # ------------------------------------------------------------ clients

    def open_client(self, client_id: str) -> Client:
        client = self.clients[client_id] = Client(client_id)
        return client

    def client_op(self, client: Client, op: str, request_id: int, topic: str) -> None:
        if client.state == "closing":
            return
        if (op == "connect") != (client.state == "new") or (op != "connect" and client.state != "ready"):
            self.bad += 1
            self.reply(client, op="error", id=None if op == "connect" else request_id, code="bad_request")
        elif op == "connect":
            client.state, client.known = "registering", True
            self.expect("register", client.client_id)
        elif op == "ping":
            self.reply(client, op="pong", id=request_id)
        elif op == "subscribe":
            self._subscribe(client, request_id, topic)
        else:
            self._unsubscribe(client, request_id, topic)

    def _subscribe(self, client: Client, request_id: int, topic: str) -> None:
        if topic == "bad":
            self.reply(client, op="error", id=request_id, code="bad_topic")
        elif topic in client.subs:
            self.reply(client, op="error", id=request_id, code="bad_request")
        elif len(client.subs) >= LIMITS.max_subscriptions:
            self.reply(client, op="error", id=request_id, code="limit_exceeded")
        else:
            self.join(client, topic, request_id)

    def _unsubscribe(self, client: Client, request_id: int, topic: str) -> None:
        sub = client.subs.get(topic)
        if sub is None:
            self.reply(client, op="error", id=request_id, code="not_subscribed")
        elif sub.position is None:
            self.reply(client, op="error", id=request_id, code="bad_request")
        else:
            self.expect("unsubscribe", client.client_id, topic)
            self.leave(client, topic)

    def garbage(self, client: Client) -> None:
        if client.state != "closing":
            self.bad += 1
            self.reply(client, op="error", code={"bad_request", "too_large"})

    def client_closes(self, client: Client) -> None:
        if client.state != "closing":
            self.forget(client)
        del self.clients[client.client_id]

    def edge_shuts(self, client: Client) -> None:
        if client.state != "closing":
            self.edge_closes(client, CloseCode.GOING_AWAY)

    # ------------------------------------------------------------ the router

    def sent(self, request_id: int, request: Request) -> None:
        """The hub sent the router a request that has a reply."""
        self.requests[request_id] = request

    def recover_sent(self, request_id: int, topic: str, epoch: int, first: int, last: int) -> None:
        """The hub asked the router's history for ``first`` to ``last``: a client holding a
        confirmed ``reliable`` subscription to ``topic`` fell behind."""
        holders = {
            client.client_id: sub
            for client in self.clients.values()
            if client.state == "ready"
            and (sub := client.subs.get(topic)) is not None
            and sub.position is not None
        }
        assert holders, f"a recover for {topic!r}, which no ready client holds"
        assert self.kinds.get(topic) == "reliable", "only reliable topics are refilled"
        assert first <= last, (first, last)
        recovery = Recovery(topic, epoch, first, last, frozenset(holders), tuple(holders.values()))
        self.recoveries[request_id] = recovery

    def recovery_answered(self, request_id: int, refused: bool) -> None:
        """The router answered a ``recover``: unexpected if every client it may be for is gone."""
        recovery = self.recoveries.pop(request_id)
        if refused:
            for sub in recovery.subs:
                sub.may_skip = True
        gone = [
            client_id
            for client_id in recovery.candidates
            if client_id not in self.clients or self.clients[client_id].state == "closing"
        ]
        if len(gone) == len(recovery.candidates):
            self.unexpected_replies += 1
        elif gone:
            self.unexpected_slack += 1

    def _take(self, request_id: int) -> Request | None:
        """The request ``request_id`` answers, no longer pending; ``None`` (counted) if none is."""
        record = self.requests.pop(request_id, None)
        if record is None:
            self.unexpected_replies += 1
        return record

    def success(self, request_id: int, epoch: int = 0, offset: int = 0, kind: str = "") -> None:
        record = self._take(request_id)
        if record is None:
            return
        client = self.clients[record.client_id]
        if record.kind == "register":
            if not record.silent:
                client.state = "ready"
                self.reply(client, op="connected", client_id=record.client_id, user="u")
        elif record.kind == "unsubscribe":
            self.reply(client, op="unsubscribed", id=record.client_request, topic=record.topic)
        else:
            sub = client.subs.get(record.topic)
            if sub is None or sub is not record.sub:
                return
            self.set_kind(record.topic, kind)
            if sub.position is None:
                sub.since = self.last_serial
            sub.position = (epoch, offset)
            if not record.silent:
                fields = {"epoch": epoch, "offset": offset, "policy": kind}
                self.reply(client, op="subscribed", id=sub.client_request, topic=record.topic, **fields)

    def refusal(self, request_id: int, code: str) -> None:
        record = self._take(request_id)
        if record is None:
            return
        client = self.clients[record.client_id]
        if record.kind == "register":
            client.known = False
            self.reply(client, op="error", id=None, code=code)
            if client.state != "closing":
                self.edge_closes(client, CloseCode.REFUSED)
        elif record.kind == "unsubscribe":
            self.reply(client, op="error", id=record.client_request, code=code)
        else:
            sub = client.subs.get(record.topic)
            if sub is None or sub is not record.sub:
                return
            self.leave(client, record.topic)
            if record.silent:
                self.reply(client, op="error", id=None, code=code, topic=record.topic)
            else:
                self.reply(client, op="error", id=sub.client_request, code=code)

    def policy_changed(self, topic: str, kind: str) -> None:
        if self.held(topic):
            self.set_kind(topic, kind)

    def set_kind(self, topic: str, kind: str) -> None:
        """The hub applies ``kind`` to every subscription to ``topic``: one that is not ``reliable``
        ends the catch-ups of the topic."""
        self.kinds[topic] = kind
        if kind != "reliable":
            for client in self.clients.values():
                if topic in client.subs:
                    client.subs[topic].may_skip = True

    def router_drops(self, client: Client) -> None:
        if client.state == "closing":
            self.unexpected_replies += 1
        else:
            client.known = False
            self.edge_closes(client, CloseCode.DROPPED)

    def router_restarts(self) -> list[tuple[object, ...]]:
        """The router lost its requests, its positions (a new epoch) and its history. Returns
        the requests the hub must send again, in order."""
        self.positions = {topic: (epoch + 1, 0) for topic, (epoch, _) in self.positions.items()}
        self.history.clear()
        self.recoveries.clear()
        for client in self.clients.values():
            for sub in client.subs.values():
                sub.may_skip = True
        lost, self.requests = self.requests, {}
        for record in lost.values():
            if record.kind == "unsubscribe":
                client = self.clients[record.client_id]
                self.reply(client, op="unsubscribed", id=record.client_request, topic=record.topic)
        wanted: list[tuple[object, ...]] = []
        for client_id, client in self.clients.items():
            if client.state in ("registering", "ready"):
                wanted.append(("register", client_id))
            if client.state == "ready":
                wanted += [("subscribe", client_id, topic) for topic in client.subs]
        return wanted

    # ------------------------------------------------------------ data

    last_serial = 0

    def publish(self, topic: str, serial: int, payload: bytes, repeat: bool) -> tuple[int, int, list[Client]]:
        """The router publishes on ``topic`` (again at the same offset when ``repeat``); returns
        the position and the clients the hub must hand the message to."""
        epoch, offset = self.positions[topic]
        if not repeat or offset == 0:
            offset += 1
            self.positions[topic] = (epoch, offset)
        self.last_serial = serial
        self.history.setdefault((topic, epoch), {})[offset] = payload
        recipients = [
            client for client in self.clients.values() if self.receives(client, topic, epoch, offset)
        ]
        self.delivered += len(recipients)
        if not self.held(topic):
            self.unexpected_data += 1
        for client in recipients:
            client.pushed.append(serial)
        return epoch, offset, recipients
