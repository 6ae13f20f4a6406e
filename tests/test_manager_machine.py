"""ConnectionManager driven by a hypothesis state machine against the reference model in model.py.

Small limits make every refusal reachable in a few steps. After each step the manager's whole
observable state must equal the model's; a refused call must leave it exactly as it was.
``SWITCHBOARD_FUZZ_EXAMPLES=5000`` runs 5000 examples instead of 200; add
``--hypothesis-show-statistics`` to see how often each refusal and action happened.
"""

from __future__ import annotations

import functools
import itertools
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
    Identity,
    Limits,
    PolicyChanged,
    RefusedError,
    Route,
    TopicRegistry,
    TopicSpec,
    UnwatchTopic,
    WatchTopic,
)
from router.core.topics import pattern_matches
from tests.model import Declared, Model, TopicFate
from tests.strategies import policies, scaled_examples

LIMITS = Limits(
    max_edges=3,
    max_clients=5,
    max_subscriptions_per_client=2,
    max_subscribers_per_topic=2,
    max_topics=3,
    max_payload_bytes=32,
)
EDGE_TIMEOUT = 5.0
LATEST = DeliveryPolicy(kind="latest", priority=5)
SPECS = [
    TopicSpec(pattern="/video/**", content_type="video/h264"),
    TopicSpec(pattern="/telemetry/*", max_payload_bytes=8, policy=LATEST),
    TopicSpec(pattern="/limited", max_subscribers=1),
    TopicSpec(pattern="/chat/**", max_payload_bytes=16),
]
_VIDEO = Declared(content_type="video/h264")
_CHAT = Declared(max_payload_bytes=16)
CATALOGUE: dict[str, TopicFate] = {
    "/video/main": _VIDEO,
    "/video/main_camera": _VIDEO,
    "/video/main/sub": _VIDEO,
    "/telemetry/imu": Declared(max_payload_bytes=8, policy=LATEST),
    "/limited": Declared(max_subscribers=1),
    "/chat/room-1": _CHAT,
    "/chat/room-2": _CHAT,
    "/telemetry/imu/raw": ErrorCode.UNKNOWN_TOPIC,
    "/other": ErrorCode.UNKNOWN_TOPIC,
    "/video//main": ErrorCode.BAD_TOPIC,
    "/video/main ": ErrorCode.BAD_TOPIC,
    "/video/main\0": ErrorCode.BAD_TOPIC,
    "video/main": ErrorCode.BAD_TOPIC,
}
TOPICS = list(CATALOGUE)
DECLARED = [t for t, fate in CATALOGUE.items() if isinstance(fate, Declared)]
CROWDED_TOPIC = st.sampled_from(["/video/main", "/chat/room-1", "/limited"]) | st.sampled_from(DECLARED)
SOME_TOPIC = st.sampled_from(DECLARED) | st.sampled_from(DECLARED) | st.sampled_from(TOPICS)
GUEST_PREFIX = "/video/"
EDGE_POOL = ["e1", "e2", "e3", "e4"]
CLIENT_POOL = [f"c{i}" for i in range(1, 8)]
TOKENS = [None, None, "guest", "bad"]
PAYLOAD_SIZES = st.sampled_from([0, 1, 8, 9, 16, 17, 32, 33]) | st.integers(0, 40)
TIME_STEPS = st.sampled_from([0.5, 0.5, 1.0, 1.0, 2.5, 5.0, 5.5])


class TokenSessions:
    """``guest`` may read only under GUEST_PREFIX, ``bad`` is refused, anything else reads all."""

    def authenticate(self, client: ClientInfo, token: str | None) -> Identity:
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

    @rule(data=st.data(), topic=SOME_TOPIC)
    def subscribe(self, data: st.DataObject, topic: str) -> None:
        self._subscribe(self._pick(data, self.model.clients, CLIENT_POOL, "client"), topic)

    @precondition(lambda self: bool(self.model.watched()))
    @rule(data=st.data())
    def subscribe_to_a_watched_topic(self, data: st.DataObject) -> None:
        """Another client joins a topic someone watches: this is how topics fill up to their cap."""
        topic = data.draw(_sampled(tuple(sorted(self.model.watched()))), label="topic")
        others = set(self.model.clients) - self.model.subscribers[topic]
        self._subscribe(self._pick(data, others, CLIENT_POOL, "client"), topic)

    def _subscribe(self, client: str, topic: str) -> None:
        note(f"client {client} subscribes to {topic!r}")
        code = self.model.check_subscribe(client, topic)
        if code is not None:
            self._refused(code, lambda: self.manager.subscribe(client, topic))
            return
        self._note_eviction(topic)
        granted = self.manager.subscribe(client, topic)
        actions = self.model.apply_subscribe(client, topic)
        self._check_actions(granted.actions, actions)
        self.model.observe_epoch(topic, granted.epoch)
        assert (granted.topic, granted.epoch, granted.offset) == (topic, *self.model.positions[topic])
        assert granted.policy == self.model.policy(topic)
        assert granted.content_type == self.model.content_type(topic)

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
    @rule(data=st.data(), size=PAYLOAD_SIZES)
    def route_to_a_watched_topic(self, data: st.DataObject, size: int) -> None:
        self.route_data(data.draw(_sampled(tuple(sorted(self.model.watched()))), label="topic"), size)

    @rule(topic=SOME_TOPIC, size=PAYLOAD_SIZES)
    def route_data(self, topic: str, size: int) -> None:
        note(f"a producer sends {size} bytes on {topic!r}")
        code = self.model.check_route(topic, size)
        if code is not None:
            self._refused(code, lambda: self.manager.route_data(topic, bytes(size)), counted=True)
            self.model.refuse_route(code)
            return
        self._note_eviction(topic)
        route = self.manager.route_data(topic, bytes(size))
        offset, receivers = self.model.apply_route(topic, size)
        self.model.observe_epoch(topic, route.epoch)
        assert route == Route(topic, route.epoch, offset, receivers), f"model: offset {offset} to {receivers}"
        note(f"  -> offset {route.offset} delivered to {sorted(route.clients)}")
        event(f"routed to {len(route.clients)} clients")

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

    @invariant()
    def policies_match(self) -> None:
        for topic in DECLARED:
            assert self.manager.get_delivery_policy(topic) == self.model.policy(topic)


ManagerMachine.TestCase.settings = settings(
    max_examples=scaled_examples(200),
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestManagerMachine = ManagerMachine.TestCase


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
