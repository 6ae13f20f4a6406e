"""The control plane's events (``router/core/events.py``): which message or core action makes which."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from router.config import ConfigError, RouterConfig, load_config
from router.core import ClientInfo, ConnectionManager, EdgeTotals, Limits, TopicRegistry, TopicSpec
from router.core.control import KICKED, ControlPlane
from router.core.edge_reports import DropIncrease, drop_increases
from router.core.errors import ErrorCode, RefusedError
from router.core.events import (
    CLIENT_CLOSED,
    ClientConnected,
    ClientDisconnected,
    ClientRefused,
    EdgeDown,
    EdgeUp,
    Event,
    ShardChanged,
    SlowClientDrops,
    Subscribed,
    SubscribeRefused,
    decode_event,
    event_frames,
)
from router.core.sessions import Identity
from router.core.shards import EXPIRED, HANDED_OVER, TAKEN, Gained, Lost
from router.event_watch import format_event
from router.server import RouterServer
from router.wire import (
    EdgeMessage,
    EdgeStatsReport,
    Hello,
    RegisterClient,
    Subscribe,
    UnregisterClient,
    encode_control,
)

T = 1_700_000_000.0
"""The Unix time of every message the control plane handles, so the time of its events."""


class Plane:
    """A control plane whose events land in a list, with the messages of one edge ``e1``."""

    def __init__(self, manager: ConnectionManager | None = None) -> None:
        registry = TopicRegistry([TopicSpec(pattern="/video/**")], allow_undeclared=False)
        self.plane = ControlPlane(
            manager or ConnectionManager(registry), 1.0, 3.0, router_id="r1", new_secret=str
        )
        self.events: list[Event] = []
        self.plane.events.add(self.events.append)

    def send(self, message: EdgeMessage, now: float = 0.0, edge: str = "e1") -> None:
        self.plane.handle(edge.encode(), encode_control(message), now, T)

    def hello(self, now: float = 0.0) -> None:
        self.send(Hello(edge_id="e1", protocol="websocket"), now)

    def take(self) -> list[Event]:
        events, self.events[:] = list(self.events), []
        return events


def connected_plane() -> Plane:
    plane = Plane()
    plane.hello()
    plane.send(RegisterClient(request_id=1, client_id="e1/c1", protocol="websocket", remote="10.0.0.9:5000"))
    plane.take()
    return plane


def test_hello_is_edge_up_and_a_second_hello_first_ends_the_old_edge() -> None:
    plane = Plane()
    plane.hello()
    assert plane.take() == [EdgeUp(time=T, edge_id="e1", protocol="websocket")]
    plane.send(RegisterClient(request_id=1, client_id="e1/c1"))
    plane.take()
    plane.hello()
    assert plane.take() == [
        EdgeDown(time=T, edge_id="e1", reason="edge restarted"),
        ClientDisconnected(time=T, client_id="e1/c1", edge_id="e1", reason="edge restarted"),
        EdgeUp(time=T, edge_id="e1", protocol="websocket"),
    ]


def test_register_is_client_connected_with_who_and_where() -> None:
    plane = Plane()
    plane.hello()
    plane.take()
    plane.send(RegisterClient(request_id=1, client_id="e1/c1", protocol="websocket", remote="10.0.0.9:5000"))
    assert plane.take() == [
        ClientConnected(
            time=T,
            client_id="e1/c1",
            edge_id="e1",
            protocol="websocket",
            user="anonymous",
            remote="10.0.0.9:5000",
        )
    ]


class NoTokens:
    """Refuses every token, in its own words."""

    def authenticate(self, client: ClientInfo, token: str | None, now: float) -> Identity:
        raise RefusedError(ErrorCode.UNAUTHORIZED, "token expired")

    def authorize(self, identity: Identity, topic: str) -> bool:
        return True


def test_a_refused_register_is_client_refused_with_the_code_and_reason() -> None:
    plane = Plane(ConnectionManager(sessions=NoTokens()))
    plane.hello()
    plane.take()
    plane.send(RegisterClient(request_id=1, client_id="e1/c1", token="old"))
    assert plane.take() == [
        ClientRefused(time=T, client_id="e1/c1", edge_id="e1", code="unauthorized", reason="token expired")
    ]


def test_a_register_past_the_limit_is_client_refused_one_from_no_edge_is_not() -> None:
    """A register on a connection that said no hello names no edge: the connection is refused
    (``unknown_edge``), and no client event could say whose it was."""
    plane = Plane(ConnectionManager(limits=Limits(max_clients=1)))
    plane.hello()
    plane.send(RegisterClient(request_id=1, client_id="e1/c1"))
    plane.take()
    plane.send(RegisterClient(request_id=2, client_id="e1/c2"))
    plane.send(RegisterClient(request_id=3, client_id="e2/c1"), edge="e2")
    assert [(e.client_id, e.edge_id, e.code) for e in plane.take() if isinstance(e, ClientRefused)] == [
        ("e1/c2", "e1", "limit_exceeded"),
    ]


def test_unregister_without_a_reason_is_closed_by_its_edge() -> None:
    plane = connected_plane()
    plane.send(UnregisterClient(client_id="e1/c1"))
    assert plane.take() == [ClientDisconnected(time=T, client_id="e1/c1", edge_id="e1", reason=CLIENT_CLOSED)]


def test_unregister_with_the_edge_s_reason() -> None:
    plane = connected_plane()
    plane.send(UnregisterClient(client_id="e1/c1", reason="too slow (4003)"))
    assert plane.take() == [
        ClientDisconnected(time=T, client_id="e1/c1", edge_id="e1", reason="too slow (4003)")
    ]


def test_subscribe_is_subscribed_or_subscribe_refused_with_the_code() -> None:
    plane = connected_plane()
    plane.send(Subscribe(request_id=2, client_id="e1/c1", topic="/video/main"))
    plane.send(Subscribe(request_id=3, client_id="e1/c1", topic="/secret"))
    assert plane.take() == [
        Subscribed(time=T, client_id="e1/c1", topic="/video/main"),
        SubscribeRefused(time=T, client_id="e1/c1", topic="/secret", code="unknown_topic"),
    ]


def test_an_edge_silent_past_the_timeout_is_edge_down_after_its_clients() -> None:
    plane = connected_plane()
    plane.plane.tick(10.0, T)
    assert plane.take() == [
        EdgeDown(time=T, edge_id="e1", reason="edge heartbeat timeout"),
        ClientDisconnected(time=T, client_id="e1/c1", edge_id="e1", reason="edge heartbeat timeout"),
    ]


class ExpiringSessions:
    def authenticate(self, info: ClientInfo, token: str | None, unix_time: float) -> Identity:
        return Identity(user="ann", expires_at=unix_time + 60)

    def authorize(self, identity: Identity, topic: str) -> bool:
        return True


def test_an_expired_session_is_client_disconnected() -> None:
    plane = Plane(ConnectionManager(TopicRegistry(), ExpiringSessions()))
    plane.hello()
    plane.send(RegisterClient(request_id=1, client_id="e1/c1"))
    plane.take()
    plane.plane.tick(0.5, T + 60.0)
    assert plane.take() == [
        ClientDisconnected(time=T + 60.0, client_id="e1/c1", edge_id="e1", reason="token expired")
    ]


def test_kick_and_drain_say_why() -> None:
    plane = connected_plane()
    plane.send(RegisterClient(request_id=2, client_id="e1/c2"))
    plane.take()
    plane.plane.kick("e1/c1", unix_time=T + 1)
    plane.plane.drain("e1", "maintenance", unix_time=T + 2)
    assert [(e.time, e.client_id, e.reason) for e in plane.take() if isinstance(e, ClientDisconnected)] == [
        (T + 1, "e1/c1", KICKED),
        (T + 2, "e1/c2", "maintenance"),
    ]


def test_slow_client_drops_are_the_growth_per_topic_between_reports() -> None:
    plane = connected_plane()
    plane.send(Subscribe(request_id=2, client_id="e1/c1", topic="/video/main"))
    plane.take()
    report = EdgeStatsReport(totals=EdgeTotals(), topic_drops={"/video/main": 5})
    plane.send(report, now=1.0)
    assert plane.take() == []
    plane.send(
        EdgeStatsReport(totals=EdgeTotals(), topic_drops={"/video/main": 12, "/video/none": 3}), now=2.5
    )
    plane.send(EdgeStatsReport(totals=EdgeTotals(), topic_drops={"/video/main": 12}), now=3.5)
    assert plane.take() == [SlowClientDrops(time=T, edge_id="e1", topic="/video/main", count=7, window=1.5)]


def test_shards_gained_and_lost_are_shard_changed_with_token_and_reason() -> None:
    plane = Plane()
    plane.plane.manager.serve_shards(4)
    gained = [Gained(0, 7), Gained(1, 3), Gained(2, 5)]
    plane.plane.shards_changed(gained, unix_time=T)
    lost = [Lost(0, 7, HANDED_OVER), Lost(1, 3, TAKEN), Lost(2, 5, EXPIRED)]
    plane.plane.shards_changed(lost, unix_time=T + 1)
    assert plane.take() == [
        ShardChanged(time=T, shard=0, token=7, reason="gained"),
        ShardChanged(time=T, shard=1, token=3, reason="gained"),
        ShardChanged(time=T, shard=2, token=5, reason="gained"),
        ShardChanged(time=T + 1, shard=0, token=7, reason="handed_over"),
        ShardChanged(time=T + 1, shard=1, token=3, reason="taken"),
        ShardChanged(time=T + 1, shard=2, token=5, reason="expired"),
    ]
    assert plane.plane.shard_changes == {"gained": 3, "handed_over": 1, "taken": 1, "expired": 1}
    name, body = event_frames(ShardChanged(time=T, shard=2, token=5, reason="expired"))
    assert name == b"shard.changed"
    assert body == b'{"event":"shard.changed","shard":2,"token":5,"reason":"expired","time":1700000000.0}'


def test_drop_increases_start_again_when_a_count_went_down() -> None:
    assert drop_increases({"/a": 10, "/b": 4}, {"/a": 3, "/b": 4}, ["/a", "/b"], 1.0) == [
        DropIncrease("/a", 3, 1.0)
    ]


def test_a_failing_listener_is_logged_and_the_others_still_hear(caplog: pytest.LogCaptureFixture) -> None:
    plane = Plane()

    def broken(event: Event) -> None:
        raise RuntimeError("boom")

    plane.plane.events._listeners.insert(0, broken)
    with caplog.at_level(logging.ERROR, "switchboard.router"):
        plane.hello()
    assert plane.take() == [EdgeUp(time=T, edge_id="e1", protocol="websocket")]
    assert "boom" in caplog.text


def test_events_go_out_as_their_name_then_json() -> None:
    event = SubscribeRefused(time=T, client_id="c", topic="/x", code="unauthorized")
    name, body = event_frames(event)
    assert name == b"client.subscribe_refused"
    assert body == (
        b'{"event":"client.subscribe_refused","client_id":"c","topic":"/x","code":"unauthorized",'
        b'"time":1700000000.0}'
    )
    assert decode_event(body) == event


def test_the_events_socket_is_off_unless_configured(tmp_path: Path) -> None:
    assert load_config().events.publish is None
    path = tmp_path / "router.toml"
    path.write_text('[events]\npublish = "tcp://127.0.0.1:7754"\n', encoding="utf-8")
    assert load_config(path).events.publish == "tcp://127.0.0.1:7754"
    assert load_config(path, {"publish": ""}).events.publish == ""
    path.write_text('[events]\npublsh = "tcp://127.0.0.1:7754"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="publsh"):
        load_config(path)


def test_switchboard_events_prints_one_line_per_event_for_people() -> None:
    event = EdgeDown(time=0.25, edge_id="ws-1", reason="edge heartbeat timeout")
    assert (
        format_event(event)
        == "1970-01-01T00:00:00.250+00:00 edge.down edge_id=ws-1 reason=edge heartbeat timeout"
    )


def test_an_embedding_program_hears_the_events_of_its_router_server() -> None:
    server = RouterServer(RouterConfig())
    heard: list[Event] = []
    server.add_event_listener(heard.append)
    server.control.handle(b"e1", encode_control(Hello(edge_id="e1", protocol="test")), 0.0)
    server.remove_event_listener(heard.append)
    server.control.handle(b"e2", encode_control(Hello(edge_id="e2", protocol="test")), 0.0)
    assert [(type(e), e.edge_id) for e in heard if isinstance(e, EdgeUp)] == [(EdgeUp, "e1")]
