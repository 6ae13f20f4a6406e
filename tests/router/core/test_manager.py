"""ConnectionManager driven by a hypothesis state machine against the reference model in model.py.

Small limits make every refusal reachable in a few steps. After each step the manager's whole
observable state must equal the model's; a refused call must leave it exactly as it was. Every
recover and resume must give exactly what the model's history holds, or the model's refusal.
Messages on a rate-capped topic arrive at times drawn as non-decreasing floats; the manager must
let through exactly what the model's token bucket does, and every decision is checked against the
bucket's promise over every window of time (``_check_rate_windows``).
``HistoryMachine`` runs the same rules from a start that puts histories to work at once.
``SWITCHBOARD_FUZZ_EXAMPLES=5000`` runs 5000 examples instead of 200; add
``--hypothesis-show-statistics`` to see how often each refusal and action happened.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, event, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from router.core import (
    Action,
    ClientDropped,
    ClientInfo,
    ConnectionManager,
    DeliveryPolicy,
    ErrorCode,
    HistoryEntry,
    Identity,
    Limits,
    PolicyChanged,
    Recovery,
    RecoveryStatus,
    RefusedError,
    Resume,
    Route,
    TopicRegistry,
    TopicSpec,
    UnwatchTopic,
    WatchTopic,
)
from router.core.history import ENTRY_OVERHEAD
from router.core.manager import RATE_LIMITED
from router.core.policy import PolicyKind
from router.core.topics import pattern_matches
from tests.model import Bucket, Declared, Model, TopicFate
from tests.strategies import policies, scaled_examples

LIMITS = Limits(
    max_edges=3,
    max_clients=5,
    max_subscriptions_per_client=2,
    max_subscribers_per_topic=2,
    max_connections_per_user=2,
    max_topics=3,
    max_payload_bytes=32,
    max_history_bytes=100,
    default_history_messages=4,
    default_history_bytes=64,
    default_history_age=6.0,
)
EDGE_TIMEOUT = 5.0
LATEST = DeliveryPolicy(kind="latest", priority=5)
EVENTS = DeliveryPolicy(kind="reliable", history_max_messages=3, history_max_bytes=30, history_max_age=4.0)
RELIABLE = DeliveryPolicy(kind="reliable")
METERED = DeliveryPolicy(ingest_max_rate=2.0)
SPECS = [
    TopicSpec(pattern="/video/**", content_type="video/h264"),
    TopicSpec(pattern="/telemetry/*", max_payload_bytes=8, policy=LATEST),
    TopicSpec(pattern="/limited", max_subscribers=1),
    TopicSpec(pattern="/chat/**", max_payload_bytes=16),
    TopicSpec(pattern="/events/*", policy=EVENTS),
    TopicSpec(pattern="/alerts", policy=RELIABLE),
    TopicSpec(pattern="/metered/*", policy=METERED),
]
_VIDEO = Declared(content_type="video/h264")
_CHAT = Declared(max_payload_bytes=16)
_EVENTS = Declared(policy=EVENTS)
CATALOGUE: dict[str, TopicFate] = {
    "/video/main": _VIDEO,
    "/video/main_camera": _VIDEO,
    "/video/main/sub": _VIDEO,
    "/telemetry/imu": Declared(max_payload_bytes=8, policy=LATEST),
    "/limited": Declared(max_subscribers=1),
    "/chat/room-1": _CHAT,
    "/chat/room-2": _CHAT,
    "/events/a": _EVENTS,
    "/events/b": _EVENTS,
    "/alerts": Declared(policy=RELIABLE),
    "/metered/a": Declared(policy=METERED),
    "/telemetry/imu/raw": ErrorCode.UNKNOWN_TOPIC,
    "/other": ErrorCode.UNKNOWN_TOPIC,
    "/video//main": ErrorCode.BAD_TOPIC,
    "/video/main ": ErrorCode.BAD_TOPIC,
    "/video/main\0": ErrorCode.BAD_TOPIC,
    "video/main": ErrorCode.BAD_TOPIC,
}
TOPICS = list(CATALOGUE)
DECLARED = [t for t, fate in CATALOGUE.items() if isinstance(fate, Declared)]
CROWDED = ["/video/main", "/chat/room-1", "/limited", "/events/a", "/alerts"]
CROWDED_TOPIC = st.sampled_from(CROWDED) | st.sampled_from(DECLARED)
SOME_TOPIC = st.sampled_from(DECLARED) | st.sampled_from(DECLARED) | st.sampled_from(TOPICS)
GUEST_PREFIX = "/video/"
EDGE_POOL = ["e1", "e2", "e3", "e4"]
CLIENT_POOL = [f"c{i}" for i in range(1, 8)]
TOKENS = [None, None, "guest", "bad"]
PAYLOAD_SIZES = st.sampled_from([0, 1, 8, 9, 16, 17, 32, 33]) | st.integers(0, 40)
TIME_STEPS = st.sampled_from([0.5, 0.5, 1.0, 1.0, 2.5, 5.0, 5.5])
HEADERS = st.sampled_from([b"", b"", b"\x81\xa1k\xa1v"])
BUDGETS = st.sampled_from([1, 40, 100, 10**6])
RELIABLE_TOPICS = ["/events/a", "/events/b", "/alerts"]
RATES = st.none() | st.sampled_from([0.5, 1.0, 2.0, 3.0]) | st.floats(min_value=0.1, max_value=20.0)
CLIENT_RATES = st.none() | st.sampled_from([1.0, 2.0, 5.0, 30.0])
"""A subscriber's own max_rate: none, or rates that tie, undercut and exceed the policies' caps."""
GAPS = st.sampled_from([0.0, 0.0, 0.1, 0.25, 0.5, 1.0]) | st.floats(min_value=0.0, max_value=1.5)
"""Time between two messages of a burst: often none, often a fraction of a token."""
RATE_SLACK = 1e-6
"""Rounding the token bucket's running sum may differ from the windows' sums by."""
TIGHT_RELIABLE_POLICIES = st.builds(
    DeliveryPolicy,
    kind=st.just("reliable"),
    history_max_messages=st.integers(0, 3),
    history_max_bytes=st.integers(0, 50),
    history_max_age=st.sampled_from([0.0, 0.5, 1.0, 3.0]),
)
"""Reliable policies whose bounds are smaller than what a history may hold, or 0 (the defaults)."""


class TokenSessions:
    """``guest`` may read only under GUEST_PREFIX, ``bad`` is refused, anything else reads all."""

    def authenticate(self, client: ClientInfo, token: str | None, now: float) -> Identity:
        if token == "bad":
            raise RefusedError(ErrorCode.UNAUTHORIZED, "bad token")
        if token == "guest":
            return Identity(user="guest", allowed_patterns=(GUEST_PREFIX + "**",))
        return Identity(user=client.client_id)

    def authorize(self, identity: Identity, topic: str) -> bool:
        return any(pattern_matches(p, topic) for p in identity.allowed_patterns)


def observe(manager: ConnectionManager) -> dict[str, Any]:
    """Everything a caller can see of the manager, in comparable form."""
    return {
        "edges": sorted(manager.edge_ids()),
        "clients": sorted((c.client_id, c.edge_id, c.protocol) for c in manager.get_active_clients()),
        "client_topics": {c: sorted(manager.get_client_topics(c)) for c in manager.client_ids()},
        "topics": {t: (sorted(manager.get_clients_for_topic(t)), manager.topic_position(t)) for t in TOPICS},
        "watched": sorted(manager.watched_topics()),
        "policies": {t: manager.get_delivery_policy(t) for t in DECLARED},
        "histories": {t: manager.history_view(t) for t in TOPICS},
        "stats": msgspec.to_builtins(manager.get_connection_stats()),
    }


def _normalized(actions: Iterable[Action]) -> Counter[tuple[object, ...]]:
    """Actions as a multiset; a ClientDropped's reason is free text, so only its ids count."""
    return Counter(
        (ClientDropped, a.client_id, a.edge_id) if isinstance(a, ClientDropped) else (type(a), *a)
        for a in actions
    )


_sampled = functools.cache(st.sampled_from)


@functools.cache
def _choice(likely: tuple[str, ...], pool: tuple[str, ...]) -> st.SearchStrategy[str]:
    if not likely:
        return _sampled(pool)
    return _sampled(likely) | _sampled(likely) | _sampled(pool)


class ManagerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.manager = ConnectionManager(
            TopicRegistry(SPECS, allow_undeclared=False),
            TokenSessions(),
            LIMITS,
            new_epoch=itertools.count(1).__next__,
        )
        self.model = Model(LIMITS, CATALOGUE, GUEST_PREFIX, EDGE_TIMEOUT)
        self.now = 0.0
        self.messages_sent = 0
        self.watched: set[str] = set()
        """Topics watched upstream, as the emitted WatchTopic/UnwatchTopic actions say."""

    # ------------------------------------------------------------ helpers

    def _pick(self, data: st.DataObject, likely: Iterable[str], pool: list[str], label: str) -> str:
        """Mostly one of ``likely`` (ids that let the call succeed), sometimes any id of the pool."""
        return data.draw(_choice(tuple(sorted(likely)), tuple(pool)), label=label)

    def _refused(self, code: ErrorCode, call: Callable[[], object], *, counted: bool = False) -> None:
        before = observe(self.manager)
        with pytest.raises(RefusedError) as refused:
            call()
        assert refused.value.code == code, f"refused with {refused.value.code}, model says {code}"
        if counted:
            drops = before["stats"]["drops"]
            drops[code.value] = drops.get(code.value, 0) + 1
        assert observe(self.manager) == before, "a refused call changed the manager"
        note(f"  -> refused: {code.value}")
        limit = f": {refused.value.detail}" if code is ErrorCode.LIMIT_EXCEEDED else ""
        event(f"refused {code.value}{limit}")

    def _note_eviction(self, topic: str) -> None:
        if topic not in self.model.subscribers and len(self.model.subscribers) >= LIMITS.max_topics:
            note(f"  (the idle topic {self.model.idle[0]!r} must make room)")
            event("idle topic evicted")

    def _check_actions(self, actions: list[Action], expected: list[Action]) -> None:
        assert _normalized(actions) == _normalized(expected), f"actions {actions}, model says {expected}"
        for action in actions:
            event(type(action).__name__)
            match action:
                case WatchTopic(topic):
                    assert topic not in self.watched, f"WatchTopic({topic!r}) while already watched"
                    self.watched.add(topic)
                case UnwatchTopic(topic):
                    assert topic in self.watched, f"UnwatchTopic({topic!r}) while not watched"
                    self.watched.remove(topic)
                case ClientDropped(_, _, reason):
                    assert reason
        if actions:
            note(f"  -> {actions}")

    # ------------------------------------------------------------ edges and time

    @initialize(
        edges=st.lists(st.sampled_from(EDGE_POOL), unique=True, min_size=1, max_size=3),
        clients=st.lists(st.sampled_from(CLIENT_POOL), unique=True, min_size=1, max_size=5),
        tokens=st.lists(st.sampled_from([None, None, "guest"]), min_size=5, max_size=5),
        subscriptions=st.lists(st.tuples(st.integers(0, 4), CROWDED_TOPIC), max_size=8),
    )
    def start(
        self,
        edges: list[str],
        clients: list[str],
        tokens: list[str | None],
        subscriptions: list[tuple[int, str]],
    ) -> None:
        """Start with some edges, clients and subscriptions, so most steps act on a busy manager."""
        for edge in edges:
            self._hello(edge)
        for index, client in enumerate(clients):
            self._register(client, edges[index % len(edges)], tokens[index])
        registered = sorted(self.model.clients)
        for index, topic in subscriptions if registered else []:
            self._subscribe(registered[index % len(registered)], topic)

    @rule(data=st.data())
    def hello(self, data: st.DataObject) -> None:
        self._hello(self._pick(data, set(EDGE_POOL) - set(self.model.edges), EDGE_POOL, "edge"))

    def _hello(self, edge: str) -> None:
        note(f"t={self.now}: edge {edge} says hello")
        code = self.model.check_hello(edge)
        if code is not None:
            self._refused(code, lambda: self.manager.edge_hello(edge, "websocket", self.now))
            return
        actions = self.manager.edge_hello(edge, "websocket", self.now)
        self._check_actions(actions, self.model.apply_hello(edge, self.now))

    @rule(data=st.data())
    def heartbeat(self, data: st.DataObject) -> None:
        edge = self._pick(data, self.model.edges, EDGE_POOL, "edge")
        note(f"t={self.now}: edge {edge} sends a heartbeat")
        code = self.model.check_heartbeat(edge)
        if code is not None:
            self._refused(code, lambda: self.manager.edge_heartbeat(edge, self.now))
            return
        self.manager.edge_heartbeat(edge, self.now)
        self.model.apply_heartbeat(edge, self.now)

    @rule(step=TIME_STEPS)
    def advance_time(self, step: float) -> None:
        self.now += step
        note(f"time passes: t={self.now}")

    @precondition(lambda self: any(h.kept for h in self.model.histories.values()))
    @rule(data=st.data(), past=st.sampled_from([0.0, 0.0, 0.5]))
    def advance_time_to_an_expiry(self, data: st.DataObject, past: float) -> None:
        """Time reaches the moment a history's oldest message turns too old: it is kept exactly
        until ``max_age`` has passed."""
        topic = data.draw(_sampled(tuple(sorted(t for t, h in self.model.histories.items() if h.kept))))
        history = self.model.histories[topic]
        recorded_at = history.kept[0][0]
        self.now = max(self.now, recorded_at + history.limits.max_age + past)
        note(f"time passes: t={self.now}; {topic!r}'s oldest message is {self.now - recorded_at} s old")

    @rule()
    def expire_edges(self) -> None:
        note(f"t={self.now}: expire edges (silent: {self.model.silent_edges(self.now)})")
        actions = self.manager.expire_edges(self.now, EDGE_TIMEOUT)
        self._check_actions(actions, self.model.apply_expire(self.now))

    @rule(data=st.data())
    def edge_lost(self, data: st.DataObject) -> None:
        edge = self._pick(data, self.model.edges, EDGE_POOL, "edge")
        note(f"edge {edge} is lost")
        actions = self.manager.edge_lost(edge, "socket closed")
        self._check_actions(actions, self.model.apply_edge_lost(edge, "socket closed"))

    # ------------------------------------------------------------ clients

    @rule(data=st.data(), token=st.sampled_from(TOKENS))
    def register_client(self, data: st.DataObject, token: str | None) -> None:
        client = self._pick(data, set(CLIENT_POOL) - set(self.model.clients), CLIENT_POOL, "client")
        self._register(client, self._pick(data, self.model.edges, EDGE_POOL, "edge"), token)

    def _register(self, client: str, edge: str, token: str | None) -> None:
        note(f"edge {edge} registers client {client} with token {token!r}")
        info = ClientInfo(client_id=client, edge_id=edge, protocol="websocket")
        code = self.model.check_register(client, edge, token)
        if code is not None:
            self._refused(code, lambda: self.manager.register_client(info, token))
            return
        identity = self.manager.register_client(info, token)
        assert identity.user == ("guest" if token == "guest" else client)
        self.model.apply_register(client, edge, token)

    @rule(data=st.data())
    def unregister_client(self, data: st.DataObject) -> None:
        client = self._pick(data, self.model.clients, CLIENT_POOL, "client")
        note(f"client {client} unregisters")
        code = self.model.check_unregister(client)
        if code is not None:
            self._refused(code, lambda: self.manager.unregister_client(client))
            return
        actions = self.manager.unregister_client(client)
        self._check_actions(actions, self.model.apply_unregister(client))

    # ------------------------------------------------------------ subscriptions

    @rule(data=st.data(), topic=SOME_TOPIC, max_rate=CLIENT_RATES)
    def subscribe(self, data: st.DataObject, topic: str, max_rate: float | None) -> None:
        self._subscribe(self._pick(data, self.model.clients, CLIENT_POOL, "client"), topic, max_rate=max_rate)

    @rule(data=st.data(), max_rate=CLIENT_RATES)
    def subscribe_again_at_another_rate(self, data: st.DataObject, max_rate: float | None) -> None:
        """A subscriber asks again with another ``max_rate``: the topic's demand follows."""
        held = sorted((t, c) for t, clients in self.model.subscribers.items() for c in clients)
        if held:
            topic, client = data.draw(st.sampled_from(held), label="subscription")
            self._subscribe(client, topic, max_rate=max_rate)

    @precondition(lambda self: bool(self.model.watched()))
    @rule(data=st.data())
    def subscribe_to_a_watched_topic(self, data: st.DataObject) -> None:
        """Another client joins a topic someone watches: this is how topics fill up to their cap."""
        topic = data.draw(_sampled(tuple(sorted(self.model.watched()))), label="topic")
        others = set(self.model.clients) - self.model.subscribers[topic]
        self._subscribe(self._pick(data, others, CLIENT_POOL, "client"), topic)

    @rule(data=st.data(), topic=st.sampled_from(RELIABLE_TOPICS) | SOME_TOPIC)
    def subscribe_to_resume(self, data: st.DataObject, topic: str) -> None:
        """A client comes back and asks to resume after the last message it has."""
        client = self._pick(data, self.model.clients, CLIENT_POOL, "client")
        self._subscribe(client, topic, self._draw_position(data, topic))

    def _subscribe(
        self, client: str, topic: str, resume: tuple[int, int] | None = None, max_rate: float | None = None
    ) -> None:
        note(
            f"client {client} subscribes to {topic!r}"
            + (f", resuming after {resume}" if resume else "")
            + (f", at most {max_rate}/s" if max_rate else "")
        )
        code = self.model.check_subscribe(client, topic)
        if code is None and resume is not None:
            code = self.model.check_resume(topic, *resume)
        if code is not None:
            self._refused(code, lambda: self.manager.subscribe(client, topic, resume, self.now, max_rate))
            return
        self._note_eviction(topic)
        expected_resume = None if resume is None else self.model.resume(topic, *resume, self.now)
        granted = self.manager.subscribe(client, topic, resume, self.now, max_rate)
        actions = self.model.apply_subscribe(client, topic, max_rate)
        self._check_actions(granted.actions, actions)
        self.model.observe_epoch(topic, granted.epoch)
        assert (granted.topic, granted.epoch, granted.offset) == (topic, *self.model.positions[topic])
        assert granted.policy == self.model.policy(topic)
        assert granted.content_type == self.model.content_type(topic)
        assert granted.resume == expected_resume, f"model: {expected_resume}"
        if granted.resume is not None:
            note(f"  -> resume: {granted.resume}")
            event(f"resume {granted.resume.status}")

    @rule(data=st.data())
    def unsubscribe(self, data: st.DataObject) -> None:
        client = self._pick(data, self.model.clients, CLIENT_POOL, "client")
        held = self.model.topics_of(client) if client in self.model.clients else set()
        topic = self._pick(data, held, TOPICS, "topic")
        note(f"client {client} unsubscribes from {topic!r}")
        code = self.model.check_unsubscribe(client, topic)
        if code is not None:
            self._refused(code, lambda: self.manager.unsubscribe(client, topic))
            return
        actions = self.manager.unsubscribe(client, topic)
        self._check_actions(actions, self.model.apply_unsubscribe(client, topic))

    # ------------------------------------------------------------ data and policies

    @precondition(lambda self: bool(self.model.watched()))
    @rule(data=st.data(), size=PAYLOAD_SIZES, header=HEADERS)
    def route_to_a_watched_topic(self, data: st.DataObject, size: int, header: bytes) -> None:
        topic = data.draw(_sampled(tuple(sorted(self.model.watched()))), label="topic")
        self.route_data(topic, size, header)

    @rule(
        topic=st.sampled_from(RELIABLE_TOPICS),
        burst=st.lists(st.tuples(PAYLOAD_SIZES, HEADERS), min_size=1, max_size=6),
    )
    def route_to_a_reliable_topic(self, topic: str, burst: list[tuple[int, bytes]]) -> None:
        """A burst on a topic that keeps history, so histories fill past their bounds."""
        for size, header in burst:
            self.route_data(topic, size, header)

    @rule(topic=SOME_TOPIC, size=PAYLOAD_SIZES, header=HEADERS)
    def route_data(self, topic: str, size: int, header: bytes) -> None:
        self.messages_sent += 1
        payload = (b"%d:" % self.messages_sent * size)[:size]
        note(f"a producer sends {payload!r} (header {header!r}) on {topic!r}")
        code = self.model.check_route(topic, size)
        if code is not None:
            refused = functools.partial(self.manager.route_data, topic, payload, header, self.now)
            self._refused(code, refused, counted=code is not ErrorCode.NOT_OWNER)
            self.model.refuse_route(code)
            return
        self._note_eviction(topic)
        route = self.manager.route_data(topic, payload, header, self.now)
        offset, receivers, keeps = self._apply_route(topic, size)
        self.model.observe_epoch(topic, route.epoch)
        if not offset:
            assert route == Route(topic, route.epoch, 0, frozenset()), "a rate-limited message was routed"
            assert not route.accepted
            note(f"  -> dropped: {RATE_LIMITED}")
            event(RATE_LIMITED)
            return
        if keeps and self.model.apply_record(topic, HistoryEntry(offset, header, payload), self.now):
            event("history evicted to keep all histories within max_history_bytes")
        expected = Route(topic, route.epoch, offset, receivers, keeps)
        assert route == expected, f"model: {expected}"
        note(f"  -> offset {route.offset} delivered to {sorted(route.clients)}")
        event(f"routed to {len(route.clients)} clients" + (", recorded" if keeps else ""))

    @rule(topic=st.sampled_from(RELIABLE_TOPICS))
    def route_without_recording(self, topic: str) -> None:
        """A message routed but never recorded: the history must stop answering for older ones."""
        note(f"a producer sends 1 byte on {topic!r}, which is not recorded")
        code = self.model.check_route(topic, 1)
        if code is not None:
            unrecorded = functools.partial(self.manager.route_wire, topic.encode(), 1, self.now)
            self._refused(code, unrecorded, counted=code is not ErrorCode.NOT_OWNER)
            self.model.refuse_route(code)
            return
        self._note_eviction(topic)
        route = self.manager.route_wire(topic.encode(), 1, self.now)
        offset, receivers, keeps = self._apply_route(topic, 1)
        self.model.observe_epoch(topic, route.epoch)
        assert route == Route(topic, route.epoch, offset, receivers, keeps)

    @rule(
        topic=st.sampled_from(["/metered/a", *RELIABLE_TOPICS]) | SOME_TOPIC, gaps=st.lists(GAPS, max_size=12)
    )
    def route_over_time(self, topic: str, gaps: list[float]) -> None:
        """Messages at non-decreasing times: bursts a rate cap must cut, and pauses that refill it."""
        for gap in gaps:
            self.now += gap
            note(f"time passes: t={self.now}")
            self.route_data(topic, 1, b"")

    @rule(topic=st.sampled_from(["/metered/a", *RELIABLE_TOPICS]) | SOME_TOPIC, rate=RATES)
    def cap_a_topic_rate(self, topic: str, rate: float | None) -> None:
        policy = self.model.policy(topic) if isinstance(CATALOGUE[topic], Declared) else DeliveryPolicy()
        self.set_delivery_policy(topic, msgspec.structs.replace(policy, ingest_max_rate=rate))

    @precondition(lambda self: any(b.token_due() is not None for b in self.model.buckets.values()))
    @rule(data=st.data(), early=st.sampled_from([0.0, 0.0, 1e-4, 1e-2]))
    def route_when_a_token_is_due(self, data: st.DataObject, early: float) -> None:
        """A message the moment the rate's next token comes, or a little before: the edge cases."""
        due = {t: b.token_due() for t, b in self.model.buckets.items()}
        topic = data.draw(_sampled(tuple(sorted(t for t, when in due.items() if when is not None))))
        when = due[topic]
        assert when is not None
        self.now = max(self.now, when - early)
        note(f"time passes: t={self.now}; {topic!r}'s next token is due at {when}")
        self.route_data(topic, 1, b"")

    def _apply_route(self, topic: str, size: int) -> tuple[int, frozenset[str], bool]:
        """The model's route, with the rate decision checked against the bucket's windows."""
        result = self.model.apply_route(topic, size, self.now)
        bucket = self.model.buckets.get(topic)
        if bucket is not None:
            _check_rate_windows(bucket, self.now, accepted=result[0] > 0)
        return result

    # ------------------------------------------------------------ history

    def _learn_epochs(self) -> None:
        """Ask the manager the epochs the model has not seen yet, so recovers can name them."""
        for topic, (epoch, _) in list(self.model.positions.items()):
            position = self.manager.topic_position(topic)
            if epoch is None and position is not None:
                self.model.observe_epoch(topic, position[0])

    def _draw_position(self, data: st.DataObject, topic: str) -> tuple[int, int]:
        """Mostly the topic's own epoch and an offset in it; sometimes another epoch or a bad offset."""
        self._learn_epochs()
        epoch, offset = self.model.positions.get(topic, (None, 0))
        history = self.model.histories.get(topic)
        ours = epoch or 1
        epoch = data.draw(st.sampled_from([ours, ours, ours, ours + 1000]), label="epoch")
        near_history = st.integers(max((history.start if history else 0) - 1, 0), offset)
        anywhere = st.integers(-1, offset + 1)
        return epoch, data.draw(near_history | near_history | anywhere, label="offset")

    @precondition(lambda self: any(self.model.subscribers[t] for t in self.model.histories))
    @rule(data=st.data(), budget=BUDGETS)
    def recover_a_watched_history(self, data: st.DataObject, budget: int) -> None:
        """What an edge does for its clients: recover, in a reliable topic they watch, from a
        position near or inside what its history holds."""
        self._learn_epochs()
        watched = sorted(t for t in self.model.histories if self.model.subscribers[t])
        topic = data.draw(_sampled(tuple(watched)), label="topic")
        holders = sorted({self.model.clients[c] for c in self.model.subscribers[topic]})
        epoch, offset = self.model.positions[topic]
        assert epoch is not None
        after = data.draw(st.integers(max(self.model.histories[topic].start - 2, 0), offset), label="after")
        upto = data.draw(st.none() | st.integers(after, offset), label="to_offset")
        costs = list(
            itertools.accumulate(
                len(e.header) + len(e.payload) + ENTRY_OVERHEAD for _, e in self.model.histories[topic].kept
            )
        )
        if costs:
            exact = data.draw(_sampled(tuple(costs)), label="a budget that fits messages exactly")
            budget = data.draw(st.sampled_from([budget, exact, exact - 1, exact + 1]), label="budget")
        self._recover(data.draw(_sampled(tuple(holders))), topic, epoch, after, upto, budget)

    @rule(data=st.data(), topic=st.sampled_from(RELIABLE_TOPICS) | SOME_TOPIC, budget=BUDGETS)
    def recover(self, data: st.DataObject, topic: str, budget: int) -> None:
        holders = {self.model.clients[c] for c in self.model.subscribers.get(topic, ())}
        edge = self._pick(data, holders, EDGE_POOL, "edge")
        epoch, after = self._draw_position(data, topic)
        offset = self.model.positions.get(topic, (None, 0))[1]
        upto = data.draw(
            st.none() | st.none() | st.integers(after, offset + 2) | st.just(after - 1), label="to_offset"
        )
        self._recover(edge, topic, epoch, after, upto, budget)

    def _recover(self, edge: str, topic: str, epoch: int, after: int, upto: int | None, budget: int) -> None:
        note(f"t={self.now}: edge {edge} recovers {topic!r} after {after} up to {upto} in epoch {epoch}")

        def call() -> Recovery:
            return self.manager.recover(
                topic, after, epoch, self.now, to_offset=upto, edge_id=edge, max_bytes=budget
            )

        code = self.model.check_recover(edge, topic, epoch, after, upto)
        if code is not None:
            self._refused(code, call)
            return
        recovery = call()
        expected = self.model.apply_recover(topic, epoch, after, upto, self.now, budget)
        assert recovery == expected, f"model: {expected}"
        offsets = [entry.offset for entry in recovery.messages]
        assert offsets == list(range(after + 1, after + 1 + len(offsets))), "not the run after from_offset"
        note(f"  -> {recovery.status}: {offsets}{' and more' if recovery.more else ''}")
        event(f"recover {recovery.status}" + (" (more)" if recovery.more else ""))

    @rule()
    def expire_history(self) -> None:
        note(f"t={self.now}: histories expire")
        self.manager.expire_history(self.now)
        self.model.apply_expire_history(self.now)

    @rule(topic=st.sampled_from(RELIABLE_TOPICS), policy=TIGHT_RELIABLE_POLICIES)
    def tighten_a_history(self, topic: str, policy: DeliveryPolicy) -> None:
        self.set_delivery_policy(topic, policy)

    @rule(topic=SOME_TOPIC, policy=policies)
    def set_delivery_policy(self, topic: str, policy: DeliveryPolicy) -> None:
        note(f"policy of {topic!r} becomes {policy}")
        code = self.model.check_set_policy(topic)
        if code is not None:
            self._refused(code, lambda: self.manager.set_delivery_policy(topic, policy))
            return
        actions = self.manager.set_delivery_policy(topic, policy)
        expected = self.model.apply_set_policy(topic, policy)
        assert actions == expected
        if actions:
            assert isinstance(actions[0], PolicyChanged)
            note(f"  -> edges told: {sorted(actions[0].edge_ids)}")

    # ------------------------------------------------------------ invariants

    @invariant()
    def demands_match(self) -> None:
        for topic in TOPICS:
            assert self.manager.get_demand(topic) == self.model.demand(topic), f"demand of {topic!r}"
        watched = {topic: self.model.demand(topic) for topic in self.model.watched()}
        assert dict(self.manager.demands()) == watched

    @invariant()
    def edges_match(self) -> None:
        assert sorted(self.manager.edge_ids()) == sorted(self.model.edges)
        for edge in EDGE_POOL:
            assert self.manager.is_edge_known(edge) == (edge in self.model.edges)
            on_edge = {c.client_id for c in self.manager.get_active_clients(edge)}
            assert on_edge == self.model.clients_of(edge), f"clients of {edge}"

    @invariant()
    def clients_match(self) -> None:
        held = {c.client_id: c.edge_id for c in self.manager.get_active_clients()}
        assert held == self.model.clients
        for client in CLIENT_POOL:
            assert self.manager.client_edge(client) == self.model.clients.get(client)
        for client in self.model.clients:
            assert self.manager.get_client_topics(client) == self.model.topics_of(client), client

    @invariant()
    def subscriptions_match(self) -> None:
        for topic in TOPICS:
            expected = self.model.subscribers.get(topic, set())
            assert self.manager.get_clients_for_topic(topic) == expected, topic
            position = self.model.positions.get(topic)
            actual = self.manager.topic_position(topic)
            assert (actual is None) == (position is None), topic
            if actual is not None and position is not None:
                assert position[0] in (None, actual[0]), topic
                assert actual[1] == position[1], topic

    @invariant()
    def watched_match(self) -> None:
        assert self.watched == self.model.watched()
        assert set(self.manager.watched_topics()) == self.watched

    @invariant()
    def stats_match(self) -> None:
        stats = self.manager.get_connection_stats()
        model = self.model
        assert (stats.edges, stats.clients, stats.topics, stats.subscriptions) == (
            len(model.edges),
            len(model.clients),
            len(model.subscribers),
            model.subscription_count(),
        )
        assert (stats.messages_in, stats.bytes_in, stats.messages_routed, stats.deliveries) == (
            model.messages_in,
            model.bytes_in,
            model.messages_routed,
            model.deliveries,
        )
        assert stats.drops == dict(model.drops)

    @invariant()
    def limits_hold(self) -> None:
        limits = self.manager.limits
        assert len(self.manager.edge_ids()) <= limits.max_edges
        assert len(list(self.manager.client_ids())) <= limits.max_clients
        assert self.manager.get_connection_stats().topics <= limits.max_topics
        for client in self.manager.client_ids():
            assert len(self.manager.get_client_topics(client)) <= limits.max_subscriptions_per_client
        for topic in DECLARED:
            assert len(self.manager.get_clients_for_topic(topic)) <= self.model.cap(topic)
        users = Counter(view.user for view in self.manager.client_views())
        assert max(users.values(), default=0) <= (limits.max_connections_per_user or math.inf)

    @invariant()
    def policies_match(self) -> None:
        for topic in DECLARED:
            assert self.manager.get_delivery_policy(topic) == self.model.policy(topic)

    @invariant()
    def histories_match(self) -> None:
        for topic in TOPICS:
            expected = self.model.histories.get(topic)
            assert self.manager.history_view(topic) == (expected and expected.view()), topic
        stats = self.manager.get_connection_stats()
        held = sum(len(history.kept) for history in self.model.histories.values())
        assert (stats.history_messages, stats.history_bytes) == (held, self.model.history_bytes())

    @invariant()
    def histories_hold_an_unbroken_bounded_run(self) -> None:
        total = 0
        for topic in DECLARED:
            view = self.manager.history_view(topic)
            limits = self.model.history_limits(topic)
            if view is None or limits is None:
                assert view is None or topic not in self.model.subscribers, topic
                continue
            offsets = [entry.offset for entry in view.entries]
            assert offsets == list(range(view.start + 1, view.last + 1)), topic
            size = sum(len(entry.header) + len(entry.payload) for entry in view.entries)
            assert len(offsets) <= limits.max_messages, topic
            assert size <= limits.max_bytes, topic
            total += size
        assert total <= LIMITS.max_history_bytes


ManagerMachine.TestCase.settings = settings(
    max_examples=scaled_examples(200),
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestManagerMachine = ManagerMachine.TestCase


class HistoryMachine(ManagerMachine):
    """The same machine, started with clients on the reliable topics and messages in their
    histories, so that most steps bound, evict, resume and recover histories.

    Edges are never lost or expired here (those rules are overridden by plain methods, which
    hypothesis does not run), so histories stay watched while time passes.
    """

    def expire_edges(self) -> None:
        raise AssertionError("not a rule of this machine")

    def edge_lost(self, data: st.DataObject) -> None:
        raise AssertionError("not a rule of this machine")

    @initialize(
        clients=st.lists(st.sampled_from(CLIENT_POOL), unique=True, min_size=1, max_size=4),
        topics=st.lists(st.sampled_from(RELIABLE_TOPICS), min_size=1, max_size=4),
        sizes=st.lists(st.integers(0, 24), max_size=12),
    )
    def start(self, clients: list[str], topics: list[str], sizes: list[int]) -> None:
        for edge in ("e1", "e2"):
            self._hello(edge)
        for index, client in enumerate(clients):
            self._register(client, ("e1", "e2")[index % 2], None)
        for index, topic in enumerate(topics):
            self._subscribe(clients[index % len(clients)], topic)
        for index, size in enumerate(sizes):
            self.route_data(topics[index % len(topics)], size, b"")


HistoryMachine.TestCase.settings = settings(
    max_examples=scaled_examples(100),
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestHistoryMachine = HistoryMachine.TestCase

CLUSTER_SHARDS = 4


class ClusterMachine(ManagerMachine):
    """The same machine in cluster mode: shards are gained and lost between the other steps, and a
    topic of a shard not served is refused as ``not_owner`` (``route``, ``subscribe``,
    ``recover``); losing a shard ends its subscriptions and forgets its topics."""

    def __init__(self) -> None:
        super().__init__()
        self.manager.serve_shards(CLUSTER_SHARDS)
        self.model.shards = CLUSTER_SHARDS
        for shard in range(CLUSTER_SHARDS - 1):
            self.manager.shard_gained(shard)
            self.model.served.add(shard)

    @rule(shard=st.integers(0, CLUSTER_SHARDS - 1))
    def gain_shard(self, shard: int) -> None:
        note(f"shard {shard} is served here from now on")
        self.manager.shard_gained(shard)
        self.model.served.add(shard)

    @rule(shards=st.sets(st.integers(0, CLUSTER_SHARDS - 1), min_size=1))
    def lose_shards(self, shards: set[int]) -> None:
        note(f"shards {sorted(shards)} are served by other routers from now on")
        actions = self.manager.shards_lost(shards)
        expected = [action for shard in sorted(shards) for action in self.model.apply_shard_lost(shard)]
        self._check_actions(actions, expected)
        event(f"shards lost with {len(actions)} topics watched")

    @invariant()
    def only_served_shards_hold_topics(self) -> None:
        served = self.manager.served_shards()
        assert served == sorted(self.model.served)
        for topic in TOPICS:
            if self.manager.topic_position(topic) is not None:
                assert self.manager.shard_of(topic) in self.model.served, topic


ClusterMachine.TestCase.settings = settings(
    max_examples=scaled_examples(100),
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestClusterMachine = ClusterMachine.TestCase


def test_cluster_mode_starts_before_the_first_topic() -> None:
    manager = _manager()
    manager.route_data("/a", b"x")
    with pytest.raises(ValueError, match="before the first topic"):
        manager.serve_shards(4)
    assert manager.served_shards() is None
    assert manager.shard_of("/a") is None


def _check_rate_windows(bucket: Bucket, now: float, accepted: bool) -> None:
    """What a token bucket promises, whatever its arithmetic: in every window of time from an
    accepted message at t to ``now``, at most ``burst + rate * (now - t)`` messages get through,
    and a message is refused only when letting it through would break that for some window."""
    earlier = bucket.accepted[:-1] if accepted else bucket.accepted
    worst = max(
        (len(earlier) - index + 1 - bucket.rate * (now - start) for index, start in enumerate(earlier)),
        default=1.0,
    )
    if accepted:
        assert worst <= bucket.burst + RATE_SLACK, f"{worst} messages over the rate in a window"
    else:
        assert worst > bucket.burst - RATE_SLACK, "refused a message the rate had room for"


# ---------------------------------------------------------------- single cases


def _manager(**limits: Any) -> ConnectionManager:
    manager = ConnectionManager(limits=Limits(**limits), new_epoch=itertools.count(7).__next__)
    manager.edge_hello("e", "websocket", 0.0)
    return manager


def test_route_refused_as_too_large_leaves_no_topic_behind() -> None:
    manager = _manager(max_topics=1, max_payload_bytes=4)
    manager.route_data("/old", b"")
    with pytest.raises(RefusedError) as refused:
        manager.route_data("/new", b"12345")
    assert refused.value.code is ErrorCode.TOO_LARGE
    assert manager.topic_position("/new") is None
    assert manager.topic_position("/old") == (7, 1)
    assert manager.get_connection_stats().topics == 1


@pytest.mark.parametrize("topic", ["/a\ud800", "/\udcff/b"])
def test_route_data_refuses_unencodable_topics_as_bad_topic(topic: str) -> None:
    manager = _manager()
    with pytest.raises(RefusedError) as refused:
        manager.route_data(topic, b"x")
    assert refused.value.code is ErrorCode.BAD_TOPIC
    assert manager.get_connection_stats().drops == {"bad_topic": 1}


def test_route_wire_accepts_the_producers_bytes_and_refuses_non_utf8() -> None:
    manager = _manager()
    assert manager.route_wire("/ünï".encode(), 1) == Route("/ünï", 7, 1, frozenset())
    assert manager.get_connection_stats().bytes_in == 1
    with pytest.raises(RefusedError) as refused:
        manager.route_wire(b"/\xff", 1)
    assert refused.value.code is ErrorCode.BAD_TOPIC


def test_declared_zero_subscribers_admits_nobody() -> None:
    registry = TopicRegistry([TopicSpec(pattern="/quiet", max_subscribers=0)])
    manager = ConnectionManager(registry)
    manager.edge_hello("e", "websocket", 0.0)
    manager.register_client(ClientInfo(client_id="c", edge_id="e"))
    with pytest.raises(RefusedError) as refused:
        manager.subscribe("c", "/quiet")
    assert refused.value.code is ErrorCode.LIMIT_EXCEEDED


def test_evicted_topic_comes_back_with_a_new_epoch_and_offset_zero() -> None:
    manager = _manager(max_topics=1)
    manager.route_data("/a", b"")
    manager.route_data("/a", b"")
    assert manager.topic_position("/a") == (7, 2)
    manager.route_data("/b", b"")
    assert manager.topic_position("/a") is None
    assert manager.route_data("/a", b"") == Route("/a", 9, 1, frozenset())


def _capped(rate: float, kind: PolicyKind = "best_effort") -> ConnectionManager:
    policy = DeliveryPolicy(kind=kind, ingest_max_rate=rate)
    registry = TopicRegistry([TopicSpec(pattern="/capped", policy=policy)])
    return ConnectionManager(registry, new_epoch=itertools.count(7).__next__)


def test_ingest_rate_lets_a_burst_through_then_one_message_per_token() -> None:
    manager = _capped(4.0)
    offsets = [manager.route_wire(b"/capped", 1, now=10.0).offset for _ in range(6)]
    assert offsets == [1, 2, 3, 4, 0, 0]
    assert manager.route_wire(b"/capped", 1, now=10.2).offset == 0
    assert manager.route_wire(b"/capped", 1, now=10.25).offset == 5
    assert manager.route_data("/capped", b"x", now=11.0).offset == 6
    stats = manager.get_connection_stats()
    assert (stats.messages_in, stats.drops) == (6, {RATE_LIMITED: 3})


def test_ingest_rate_below_one_still_lets_one_message_through() -> None:
    manager = _capped(0.5)
    assert [manager.route_wire(b"/capped", 1, now=0.0).offset for _ in range(2)] == [1, 0]
    assert manager.route_wire(b"/capped", 1, now=1.9).offset == 0
    assert manager.route_wire(b"/capped", 1, now=2.0).offset == 2


def test_a_rate_limited_message_leaves_no_hole_in_a_reliable_history() -> None:
    manager = _capped(1.0, kind="reliable")
    for now in (0.0, 0.0, 0.5, 1.0, 1.0, 2.5):
        route = manager.route_data("/capped", b"m", now=now)
        assert route.keeps_history == route.accepted
    view = manager.history_view("/capped")
    assert view is not None
    assert [entry.offset for entry in view.entries] == [1, 2, 3]
    assert manager.recover("/capped", 0, 7, now=3.0).messages == view.entries


def test_a_policy_change_reconfigures_the_ingest_rate() -> None:
    manager = _capped(1.0)
    assert manager.route_wire(b"/capped", 1, now=0.0).accepted
    assert not manager.route_wire(b"/capped", 1, now=0.0).accepted
    manager.set_delivery_policy("/capped", DeliveryPolicy(ingest_max_rate=1.0, priority=3))
    assert not manager.route_wire(b"/capped", 1, now=0.0).accepted, "the same rate keeps its bucket"
    manager.set_delivery_policy("/capped", DeliveryPolicy(ingest_max_rate=3.0))
    assert [manager.route_wire(b"/capped", 1, now=0.0).accepted for _ in range(4)] == [True] * 3 + [False]
    manager.set_delivery_policy("/capped", DeliveryPolicy())
    assert all(manager.route_wire(b"/capped", 1, now=0.0).accepted for _ in range(100))


@pytest.mark.parametrize("rate", [0.0, -1.0, math.nan, math.inf])
def test_ingest_max_rate_must_be_positive_and_finite(rate: float) -> None:
    with pytest.raises(ValueError, match="ingest_max_rate"):
        DeliveryPolicy(ingest_max_rate=rate)


def test_connections_per_user_are_capped_and_freed_by_unregister() -> None:
    manager = _manager(max_connections_per_user=1)
    manager.register_client(ClientInfo(client_id="a", edge_id="e", protocol="websocket"))
    second = ClientInfo(client_id="b", edge_id="e", protocol="websocket")
    with pytest.raises(RefusedError) as refused:
        manager.register_client(second)
    assert refused.value.code is ErrorCode.LIMIT_EXCEEDED
    manager.unregister_client("a")
    assert manager.register_client(second).user == "anonymous"


def test_deferred_records_stay_unpublished_until_recorded_and_a_dropped_one_breaks_the_history() -> None:
    policy = DeliveryPolicy(kind="reliable")
    manager = ConnectionManager(
        TopicRegistry([TopicSpec(pattern="/r", policy=policy)]), new_epoch=itertools.count(5).__next__
    )
    manager.edge_hello("e", "test", 0.0)
    manager.register_client(ClientInfo(client_id="c", edge_id="e", protocol="test"))
    for n in range(1, 4):
        assert manager.route_data("/r", b"m%d" % n).offset == n
    routed = [manager.route_wire(b"/r", 2).offset for _ in range(3)]
    assert routed == [4, 5, 6]
    for _ in routed:
        manager.defer_record("/r")
    granted = manager.subscribe("c", "/r", resume=(5, 1))
    assert granted.offset == 3, "a deferred message is not published yet"
    assert granted.resume == Resume(RecoveryStatus.OK, 1, 3)
    manager.record_deferred("/r", 4, b"", b"m4", 0.0)
    assert [entry.offset for entry in manager.recover("/r", 1, 5, 0.0).messages] == [2, 3, 4]
    manager.drop_deferred("/r", 5)
    manager.record_deferred("/r", 6, b"", b"m6", 0.0)
    assert manager.subscribe("c", "/r").offset == 6
    assert manager.recover("/r", 3, 5, 0.0).status is RecoveryStatus.HISTORY_EXCEEDED
    assert [entry.offset for entry in manager.recover("/r", 5, 5, 0.0).messages] == [6]
