"""ControlPlane driven with encoded bytes, as the router process feeds it."""

from __future__ import annotations

import math
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.core import ClientInfo, ConnectionManager, DeliveryPolicy, Limits, TopicRegistry, TopicSpec
from router.core.control import ControlPlane, Demand, Outbound, ToEdge, ToPeer, Upstream
from router.wire import (
    CONTROL_VERSION,
    MAX_CONTROL_BYTES,
    MAX_RECOVERED_BYTES,
    EdgeMessage,
    Error,
    Heartbeat,
    Hello,
    Recover,
    Recovered,
    RegisterClient,
    Registered,
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
    decode_router_message,
    encode_control,
)
from tests.strategies import client_ids, edge_ids, scaled_examples

INTERVAL = 1.0
SESSION = "s3cret"
TIMEOUT = 3.0
VIDEO = TopicSpec(pattern="/video/**", content_type="video/h264", policy=DeliveryPolicy(kind="latest"))
EVENTS_POLICY = DeliveryPolicy(kind="reliable", history_max_messages=5, history_max_age=10.0)
EVENTS = TopicSpec(pattern="/events/**", content_type="application/json", policy=EVENTS_POLICY)


def make_plane(limits: Limits | None = None) -> ControlPlane:
    manager = ConnectionManager(TopicRegistry([VIDEO, EVENTS]), limits=limits)
    return ControlPlane(
        manager,
        heartbeat_interval=INTERVAL,
        heartbeat_timeout=TIMEOUT,
        router_id="r1",
        new_secret=lambda: SESSION,
    )


def handle(plane: ControlPlane, edge: str, body: bytes, now: float = 0.0) -> list[Outbound]:
    """Feed one message; every reply must itself be a valid router message on the wire."""
    out = plane.handle(edge.encode(), body, now)
    for item in out:
        if isinstance(item, ToEdge):
            assert decode_router_message(encode_control(item.message)) == item.message
    return out


def send(plane: ControlPlane, edge: str, message: EdgeMessage, now: float = 0.0) -> list[Outbound]:
    return handle(plane, edge, encode_control(message), now)


def hello(plane: ControlPlane, edge: str, now: float = 0.0) -> None:
    assert send(plane, edge, Hello(edge_id=edge, protocol="websocket"), now)[-1:] == [
        ToEdge(edge, welcome(plane))
    ]


def register(plane: ControlPlane, edge: str, client: str, now: float = 0.0) -> None:
    out = send(plane, edge, RegisterClient(request_id=1, client_id=client), now)
    assert out == [ToEdge(edge, Registered(request_id=1, client_id=client, user="anonymous"))]


def subscribe(plane: ControlPlane, edge: str, client: str, topic: str) -> list[Outbound]:
    return send(plane, edge, Subscribe(request_id=2, client_id=client, topic=topic))


def welcome(plane: ControlPlane) -> Welcome:
    return Welcome(
        router_id=plane.router_id,
        version=CONTROL_VERSION,
        heartbeat_interval=INTERVAL,
        heartbeat_timeout=TIMEOUT,
        session=SESSION,
    )


def error_reply(out: list[Outbound]) -> Error:
    """The one reply, an error, to an edge or to a connection that speaks for none."""
    assert len(out) == 1
    assert isinstance(out[0], ToEdge | ToPeer)
    assert isinstance(out[0].message, Error)
    return out[0].message


def state(plane: ControlPlane) -> dict[str, Any]:
    manager = plane.manager
    return {
        "edges": sorted(manager.edge_ids()),
        "clients": sorted((c.client_id, c.edge_id) for c in manager.get_active_clients()),
        "topics": {c: sorted(manager.get_client_topics(c)) for c in manager.client_ids()},
        "watched": sorted(manager.watched_topics()),
    }


# ---------------------------------------------------------------- hello


def test_hello_is_answered_with_welcome() -> None:
    plane = make_plane()
    assert send(plane, "e1", Hello(edge_id="e1", protocol="webrtc")) == [ToEdge("e1", welcome(plane))]
    assert plane.manager.is_edge_known("e1")


@pytest.mark.parametrize(
    "message",
    [
        Heartbeat(),
        RegisterClient(request_id=7, client_id="c"),
        UnregisterClient(client_id="c"),
        Subscribe(request_id=7, client_id="c", topic="/video/a"),
        Unsubscribe(request_id=7, client_id="c", topic="/video/a"),
        StatsRequest(request_id=7),
    ],
    ids=lambda m: type(m).__name__,
)
def test_messages_before_hello_are_refused_as_unknown_edge(message: EdgeMessage) -> None:
    plane = make_plane()
    error = error_reply(send(plane, "e1", message))
    assert error.code == "unknown_edge"
    assert error.request_id == getattr(message, "request_id", 0)
    assert error.client_id == getattr(message, "client_id", "")
    assert not plane.manager.is_edge_known("e1")


@pytest.mark.parametrize("version", [0, CONTROL_VERSION + 1, -1])
def test_an_unsupported_version_is_refused(version: int) -> None:
    plane = make_plane()
    error = error_reply(send(plane, "e1", Hello(edge_id="e1", protocol="websocket", version=version)))
    assert error.code == "unsupported_version"
    assert not plane.manager.is_edge_known("e1")


def test_the_hello_names_the_edge_whatever_the_routing_id() -> None:
    plane = make_plane()
    assert send(plane, "peer-7", Hello(edge_id="e2", protocol="websocket")) == [ToEdge("e2", welcome(plane))]
    assert plane.claims.peer_of("e2") == b"peer-7"
    out = send(plane, "peer-7", RegisterClient(request_id=1, client_id="c1"))
    assert out == [ToEdge("e2", Registered(request_id=1, client_id="c1", user="anonymous"))]
    assert [c.edge_id for c in plane.manager.get_active_clients()] == ["e2"]


@pytest.mark.parametrize("edge_id", ["", "e" * 256])
def test_an_edge_id_of_no_bytes_or_over_255_is_refused(edge_id: str) -> None:
    plane = make_plane()
    out = send(plane, "p", Hello(edge_id=edge_id, protocol="websocket"))
    assert out == [ToPeer(b"p", error_reply(out))]
    assert error_reply(out).code == "bad_request"
    assert plane.manager.edge_ids() == []


def test_a_live_edge_keeps_its_id_against_another_connection() -> None:
    plane = make_plane()
    hello(plane, "e1")
    register(plane, "e1", "c1")
    out = send(plane, "attacker", Hello(edge_id="e1", protocol="websocket"), now=1.0)
    assert out == [ToPeer(b"attacker", error_reply(out))]
    assert error_reply(out).code == "edge_id_in_use"
    assert plane.claims.peer_of("e1") == b"e1"
    assert [c.client_id for c in plane.manager.get_active_clients("e1")] == ["c1"]
    assert plane.refusals == {("hello", "edge_id_in_use"): 1}
    assert error_reply(send(plane, "attacker", RegisterClient(request_id=3, client_id="c2"))).code == (
        "unknown_edge"
    )


def test_a_new_connection_with_the_welcome_secret_takes_the_edge_over() -> None:
    plane = make_plane()
    hello(plane, "e1")
    register(plane, "e1", "c1")
    wrong = send(plane, "e1-again", Hello(edge_id="e1", protocol="websocket", session="guess"), now=1.0)
    assert error_reply(wrong).code == "edge_id_in_use"
    out = send(plane, "e1-again", Hello(edge_id="e1", protocol="websocket", session=SESSION), now=1.0)
    assert out == [ToEdge("e1", welcome(plane))]
    assert plane.claims.peer_of("e1") == b"e1-again"
    assert plane.claims.edge_of(b"e1") is None
    assert error_reply(send(plane, "e1", Heartbeat(), now=1.5)).code == "unknown_edge"


def test_a_forgotten_edge_id_is_free_for_any_connection() -> None:
    plane = make_plane()
    hello(plane, "e1")
    plane.tick(TIMEOUT + 1.0)
    out = send(plane, "restarted", Hello(edge_id="e1", protocol="websocket"), now=TIMEOUT + 1.5)
    assert out == [ToEdge("e1", welcome(plane))]
    assert plane.claims.peer_of("e1") == b"restarted"


def test_with_curve_an_edge_id_stays_with_the_key_that_first_claimed_it() -> None:
    plane = make_plane()
    first = plane.handle(b"p1", encode_control(Hello(edge_id="e1", protocol="websocket")), 0.0, key="K1")
    assert first == [ToEdge("e1", welcome(plane))]
    plane.tick(TIMEOUT + 1.0)
    assert not plane.manager.is_edge_known("e1")
    hello_e1 = encode_control(Hello(edge_id="e1", protocol="websocket", session=SESSION))
    other = plane.handle(b"p2", hello_e1, TIMEOUT + 1.5, key="K2")
    assert error_reply(other).code == "edge_id_in_use"
    assert "another Curve key" in error_reply(other).message
    same = plane.handle(b"p3", hello_e1, TIMEOUT + 1.5, key="K1")
    assert same == [ToEdge("e1", welcome(plane))]


def test_a_second_hello_drops_what_the_edge_had() -> None:
    plane = make_plane()
    hello(plane, "e1")
    register(plane, "e1", "c1")
    subscribe(plane, "e1", "c1", "/video/a")
    out = send(plane, "e1", Hello(edge_id="e1", protocol="websocket"), now=1.0)
    assert out == [Demand("/video/a", 0.0), Upstream("/video/a", watched=False), ToEdge("e1", welcome(plane))]
    assert plane.manager.get_active_clients() == []


def test_too_many_edges_are_refused() -> None:
    plane = make_plane(Limits(max_edges=1))
    hello(plane, "e1")
    assert error_reply(send(plane, "e2", Hello(edge_id="e2", protocol="websocket"))).code == "limit_exceeded"


# ---------------------------------------------------------------- clients and subscriptions


def test_register_records_the_client_on_its_edge() -> None:
    plane = make_plane()
    hello(plane, "e1")
    message = RegisterClient(request_id=4, client_id="c1", protocol="webrtc", remote="::1")
    out = send(plane, "e1", message, now=2.5)
    assert out == [ToEdge("e1", Registered(request_id=4, client_id="c1", user="anonymous"))]
    assert plane.manager.get_active_clients() == [
        ClientInfo(client_id="c1", edge_id="e1", protocol="webrtc", remote="::1", connected_at=2.5)
    ]
    error = error_reply(send(plane, "e1", RegisterClient(request_id=5, client_id="c1")))
    assert (error.code, error.request_id, error.client_id) == ("duplicate_client", 5, "c1")


def test_subscribe_and_unsubscribe_replies_and_upstream_changes() -> None:
    plane = make_plane()
    hello(plane, "e1")
    register(plane, "e1", "c1")
    register(plane, "e1", "c2")
    plane.manager.route_data("/video/a", b"x")
    epoch, offset = plane.manager.topic_position("/video/a") or (0, 0)
    ok = SubscribeOk(
        request_id=2,
        client_id="c1",
        topic="/video/a",
        epoch=epoch,
        offset=offset,
        content_type="video/h264",
        policy=DeliveryPolicy(kind="latest"),
    )
    assert offset == 1
    assert subscribe(plane, "e1", "c1", "/video/a") == [
        Upstream("/video/a", watched=True),
        Demand("/video/a", math.inf),
        ToEdge("e1", ok),
    ]
    second = msgspec.structs.replace(ok, client_id="c2")
    assert subscribe(plane, "e1", "c2", "/video/a") == [ToEdge("e1", second)]
    assert subscribe(plane, "e1", "c2", "/video/a") == [ToEdge("e1", second)]

    def unsubscribe(client: str) -> list[Outbound]:
        return send(plane, "e1", Unsubscribe(request_id=3, client_id=client, topic="/video/a"))

    done = Unsubscribed(request_id=3, client_id="c1", topic="/video/a")
    assert unsubscribe("c1") == [ToEdge("e1", done)]
    done2 = Unsubscribed(request_id=3, client_id="c2", topic="/video/a")
    assert unsubscribe("c2") == [
        Demand("/video/a", 0.0),
        Upstream("/video/a", watched=False),
        ToEdge("e1", done2),
    ]
    error = error_reply(unsubscribe("c2"))
    assert (error.code, error.request_id, error.client_id) == ("not_subscribed", 3, "c2")


def test_refused_subscriptions_carry_the_reason() -> None:
    plane = make_plane(Limits(max_subscriptions_per_client=1))
    hello(plane, "e1")
    register(plane, "e1", "c1")
    assert error_reply(subscribe(plane, "e1", "c1", "/video//a")).code == "bad_topic"
    subscribe(plane, "e1", "c1", "/video/a")
    error = error_reply(subscribe(plane, "e1", "c1", "/video/b"))
    assert (error.code, error.request_id, error.client_id) == ("limit_exceeded", 2, "c1")
    assert error_reply(subscribe(plane, "e1", "nobody", "/video/a")).code == "unknown_client"


@pytest.mark.parametrize(
    "message",
    [
        Subscribe(request_id=9, client_id="c1", topic="/video/b"),
        Unsubscribe(request_id=9, client_id="c1", topic="/video/a"),
        UnregisterClient(client_id="c1"),
    ],
    ids=lambda m: type(m).__name__,
)
def test_an_edge_cannot_act_for_another_edges_client(message: EdgeMessage) -> None:
    plane = make_plane()
    hello(plane, "e1")
    hello(plane, "e2")
    register(plane, "e1", "c1")
    subscribe(plane, "e1", "c1", "/video/a")
    before = state(plane)
    error = error_reply(send(plane, "e2", message))
    assert (error.code, error.client_id) == ("unknown_client", "c1")
    assert state(plane) == before


def test_unregister_has_no_reply_and_unwatches_the_clients_topics() -> None:
    plane = make_plane()
    hello(plane, "e1")
    register(plane, "e1", "c1")
    register(plane, "e1", "c2")
    subscribe(plane, "e1", "c1", "/video/a")
    subscribe(plane, "e1", "c1", "/video/b")
    subscribe(plane, "e1", "c2", "/video/b")
    assert send(plane, "e1", UnregisterClient(client_id="c1")) == [
        Demand("/video/a", 0.0),
        Upstream("/video/a", watched=False),
    ]
    assert sorted(plane.manager.client_ids()) == ["c2"]


def test_stats_reply_reports_the_managers_counters() -> None:
    plane = make_plane()
    hello(plane, "e1")
    register(plane, "e1", "c1")
    subscribe(plane, "e1", "c1", "/video/a")
    plane.manager.route_data("/video/a", b"12345")
    out = send(plane, "e1", StatsRequest(request_id=11))
    expected = msgspec.to_builtins(plane.manager.get_connection_stats())
    assert out == [ToEdge("e1", Stats(request_id=11, stats=expected))]
    assert expected["deliveries"] == 1
    assert expected["bytes_in"] == 5


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\xff\xfe",
        msgspec.msgpack.encode({"type": "nope"}),
        msgspec.msgpack.encode({"type": "subscribe", "request_id": "one"}),
        msgspec.msgpack.encode([1, 2, 3]),
        b"\x82\xa4type\xaaunregister\xa9client_id\xa2\xc3\x28",
        b"\x91" * 20_000 + b"\xc0",
        encode_control(Subscribe(request_id=1, client_id="c", topic="/" + "a" * MAX_CONTROL_BYTES)),
    ],
    ids=["empty", "garbage", "unknown_type", "wrong_field_type", "array", "bad_utf8", "deep", "too_big"],
)
def test_garbage_is_answered_with_bad_request_and_counted(body: bytes) -> None:
    plane = make_plane()
    hello(plane, "e1")
    error = error_reply(handle(plane, "e1", body))
    assert (error.code, error.request_id) == ("bad_request", 0)
    assert 0 < len(error.message) <= 200
    assert plane.manager.get_connection_stats().drops == {"bad_control": 1}
    handle(plane, "e1", body)
    assert plane.manager.get_connection_stats().drops == {"bad_control": 2}


@settings(max_examples=scaled_examples(100), deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_escape_as_exceptions(body: bytes) -> None:
    plane = make_plane()
    hello(plane, "e1")
    out = handle(plane, "e1", body)
    try:
        decode_edge_message(body)
    except WireError:
        assert error_reply(out).code == "bad_request"
        assert plane.manager.get_connection_stats().drops == {"bad_control": 1}
    else:
        assert plane.manager.get_connection_stats().drops == {}


@given(client=client_ids, edge=edge_ids)
def test_any_client_and_edge_id_survives_the_trip(client: str, edge: str) -> None:
    plane = make_plane()
    hello(plane, edge)
    register(plane, edge, client)
    assert plane.manager.client_edge(client) == edge
    assert send(plane, edge, UnregisterClient(client_id=client)) == []
    assert plane.manager.client_edge(client) is None


def test_a_message_that_does_not_decode_is_counted_and_answered_to_its_connection() -> None:
    plane = make_plane()
    out = plane.handle(b"\xff\xfe", b"\x81\xa4type\xa4nope", 0.0)
    assert out == [ToPeer(b"\xff\xfe", error_reply(out))]
    assert error_reply(out).code == "bad_request"
    assert plane.manager.get_connection_stats().drops == {"bad_control": 1}


# ---------------------------------------------------------------- heartbeats and expiry


def test_tick_sends_heartbeats_to_every_edge() -> None:
    plane = make_plane()
    hello(plane, "e1")
    hello(plane, "e2")
    beat = Heartbeat(router_id=plane.router_id)
    assert plane.tick(TIMEOUT) == [ToEdge("e1", beat), ToEdge("e2", beat)]
    assert sorted(plane.manager.edge_ids()) == ["e1", "e2"]


def test_tick_expires_silent_edges_and_their_clients() -> None:
    plane = make_plane()
    hello(plane, "e1")
    hello(plane, "e2")
    register(plane, "e1", "c1")
    register(plane, "e2", "c2")
    subscribe(plane, "e1", "c1", "/video/only-e1")
    subscribe(plane, "e1", "c1", "/video/shared")
    subscribe(plane, "e2", "c2", "/video/shared")
    assert send(plane, "e2", Heartbeat(), now=2.0) == []

    out = plane.tick(TIMEOUT + 1.0)

    assert Upstream("/video/only-e1", watched=False) in out
    assert not any(isinstance(item, Upstream) and item.topic == "/video/shared" for item in out)
    assert ToEdge("e2", Heartbeat(router_id=plane.router_id)) in out
    assert not any(isinstance(item, ToEdge) and item.edge_id == "e1" for item in out)
    assert plane.manager.edge_ids() == ["e2"]
    assert [c.client_id for c in plane.manager.get_active_clients()] == ["c2"]
    assert plane.edges_lost == {"edge heartbeat timeout": 1}
    assert plane.manager.watched_topics() == ["/video/shared"]
    assert error_reply(send(plane, "e1", Heartbeat(), now=5.0)).code == "unknown_edge"


def test_any_message_counts_as_a_sign_of_life() -> None:
    plane = make_plane()
    hello(plane, "e1")
    error_reply(send(plane, "e1", Unsubscribe(request_id=1, client_id="x", topic="/video/a"), now=2.0))
    assert plane.tick(TIMEOUT + 1.0) == [ToEdge("e1", Heartbeat(router_id=plane.router_id))]
    assert plane.manager.is_edge_known("e1")


def test_an_edge_silent_for_exactly_the_timeout_is_kept() -> None:
    plane = make_plane()
    hello(plane, "e1", now=1.0)
    plane.tick(1.0 + TIMEOUT)
    assert plane.manager.is_edge_known("e1")
    plane.tick(1.0 + TIMEOUT + 0.001)
    assert not plane.manager.is_edge_known("e1")


# ---------------------------------------------------------------- resume and recover


def recovering_plane(count: int, size: int = 3, now: float = 0.0) -> tuple[ControlPlane, int]:
    """Edge e1 with client c1 on /events/a, after ``count`` messages of ``size`` bytes."""
    plane = make_plane()
    hello(plane, "e1")
    register(plane, "e1", "c1")
    subscribe(plane, "e1", "c1", "/events/a")
    for index in range(count):
        plane.manager.route_data("/events/a", payload(index + 1, size), b"\x80" if index % 2 else b"", now)
    epoch, _ = plane.manager.topic_position("/events/a") or (0, 0)
    return plane, epoch


def payload(offset: int, size: int) -> bytes:
    return (b"%d." % offset * size)[:size]


def resume(plane: ControlPlane, topic: str, epoch: int | None, offset: int | None) -> SubscribeOk | Error:
    message = Subscribe(request_id=6, client_id="c1", topic=topic, resume_epoch=epoch, resume_offset=offset)
    reply = send(plane, "e1", message)[-1]
    assert isinstance(reply, ToEdge)
    assert isinstance(reply.message, SubscribeOk | Error)
    return reply.message


def recover(plane: ControlPlane, edge: str = "e1", now: float = 0.0, **fields: Any) -> Recovered | Error:
    out = send(plane, edge, Recover(request_id=8, **{"topic": "/events/a", **fields}), now)
    assert len(out) == 1
    assert isinstance(out[0], ToEdge)
    assert isinstance(out[0].message, Recovered | Error)
    return out[0].message


def test_subscribe_with_resume_says_what_the_history_still_holds() -> None:
    plane, epoch = recovering_plane(8)
    assert plane.manager.history_view("/events/a") is not None

    def verdict(topic: str, epoch: int, offset: int) -> tuple[str, int, int]:
        ok = resume(plane, topic, epoch, offset)
        assert isinstance(ok, SubscribeOk), ok
        return ok.resume, ok.resume_from, ok.resume_to

    assert verdict("/events/a", epoch, 6) == ("ok", 6, 8)
    assert verdict("/events/a", epoch, 8) == ("ok", 8, 8)
    assert verdict("/events/a", epoch, 3) == ("ok", 3, 8)
    assert verdict("/events/a", epoch, 2) == ("history_exceeded", 3, 8)
    assert verdict("/events/a", epoch + 1, 6) == ("epoch_changed", 0, 0)
    assert verdict("/events/new", 1, 0) == ("epoch_changed", 0, 0)
    assert verdict("/video/a", epoch, 0) == ("not_reliable", 0, 0)


def test_subscribe_without_resume_says_none() -> None:
    plane, _ = recovering_plane(2)
    ok = resume(plane, "/events/a", None, None)
    assert isinstance(ok, SubscribeOk)
    assert (ok.resume, ok.resume_from, ok.resume_to) == ("none", 0, 0)


@pytest.mark.parametrize(("epoch", "offset"), [(None, 3), ("same", None), ("same", -1), ("same", 9)], ids=str)
def test_a_bad_resume_position_refuses_the_subscribe(epoch: object, offset: int | None) -> None:
    plane, current = recovering_plane(8)
    register(plane, "e1", "c2")
    before = state(plane)
    message = Subscribe(
        request_id=6,
        client_id="c2",
        topic="/events/a",
        resume_epoch=current if epoch == "same" else None,
        resume_offset=offset,
    )
    error = error_reply(send(plane, "e1", message))
    assert (error.code, error.request_id, error.client_id) == ("bad_request", 6, "c2")
    assert state(plane) == before


def test_recover_returns_the_messages_in_order_with_their_headers() -> None:
    plane, epoch = recovering_plane(8)
    reply = recover(plane, epoch=epoch, from_offset=3)
    expected = [(o, b"" if o % 2 else b"\x80", payload(o, 3)) for o in range(4, 9)]
    assert reply == Recovered(request_id=8, topic="/events/a", epoch=epoch, messages=expected, more=False)
    gap = recover(plane, epoch=epoch, from_offset=4, to_offset=6)
    assert isinstance(gap, Recovered)
    assert [m[0] for m in gap.messages] == [5, 6]
    assert not gap.more
    nothing = recover(plane, epoch=epoch, from_offset=8)
    assert isinstance(nothing, Recovered)
    assert (nothing.messages, nothing.more) == ([], False)


def test_a_large_recovery_comes_in_bounded_replies_with_more() -> None:
    size = MAX_RECOVERED_BYTES // 3
    plane, epoch = recovering_plane(5, size)
    pages: list[list[int]] = []
    after, more = 0, True
    while more:
        reply = recover(plane, epoch=epoch, from_offset=after)
        assert isinstance(reply, Recovered), reply
        assert sum(len(h) + len(p) for _, h, p in reply.messages) <= MAX_RECOVERED_BYTES
        assert [p for _, _, p in reply.messages] == [payload(o, size) for o, _, _ in reply.messages]
        pages.append([offset for offset, _, _ in reply.messages])
        after, more = pages[-1][-1], reply.more
    assert pages == [[1, 2], [3, 4], [5]]


@pytest.mark.parametrize(
    ("edge", "fields", "code"),
    [
        ("e1", {"from_offset": 2}, "history_exceeded"),
        ("e1", {"from_offset": 5, "epoch": "other"}, "epoch_changed"),
        ("e1", {"from_offset": 0, "topic": "/video/a"}, "not_reliable"),
        ("e2", {"from_offset": 5}, "not_subscribed"),
        ("e1", {"from_offset": 6, "to_offset": 5}, "bad_request"),
        ("e1", {"from_offset": 9}, "bad_request"),
        ("e1", {"from_offset": -1}, "bad_request"),
        ("e1", {"from_offset": 0, "topic": "/events//a"}, "bad_topic"),
        ("e3", {"from_offset": 5}, "unknown_edge"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_a_recover_that_cannot_be_answered_in_full_is_an_error(
    edge: str, fields: dict[str, Any], code: str
) -> None:
    plane, epoch = recovering_plane(8)
    subscribe(plane, "e1", "c1", "/video/a")
    hello(plane, "e2")
    fields["epoch"] = epoch + 1 if fields.get("epoch") == "other" else epoch
    error = error_reply(send(plane, edge, Recover(request_id=8, **{"topic": "/events/a", **fields})))
    assert (error.code, error.request_id) == (code, 8)
    if code == "history_exceeded":
        assert "after offset 3" in error.message


def test_tick_ages_the_histories() -> None:
    """Messages recorded at t=1 with a 10 s bound are kept at t=11 and gone after it."""
    plane, epoch = recovering_plane(3, now=1.0)
    send(plane, "e1", Heartbeat(), now=10.0)
    plane.tick(11.0)
    assert plane.manager.get_connection_stats().history_messages == 3
    plane.tick(11.5)
    assert plane.manager.get_connection_stats().history_messages == 0
    error = recover(plane, epoch=epoch, from_offset=0, now=11.5)
    assert isinstance(error, Error)
    assert error.code == "history_exceeded"
    nothing_missed = recover(plane, epoch=epoch, from_offset=3, now=11.5)
    assert nothing_missed == Recovered(request_id=8, topic="/events/a", epoch=epoch, messages=[])


def test_a_topic_made_reliable_at_runtime_keeps_history_until_it_is_not() -> None:
    plane = make_plane()
    hello(plane, "e1")
    register(plane, "e1", "c1")
    subscribe(plane, "e1", "c1", "/video/a")
    plane.manager.route_data("/video/a", b"before")
    plane.manager.set_delivery_policy("/video/a", DeliveryPolicy(kind="reliable"))
    assert plane.manager.route_data("/video/a", b"after").keeps_history
    epoch, _ = plane.manager.topic_position("/video/a") or (0, 0)
    reply = recover(plane, topic="/video/a", epoch=epoch, from_offset=1)
    assert isinstance(reply, Recovered)
    assert reply.messages == [(2, b"", b"after")]
    before = recover(plane, topic="/video/a", epoch=epoch, from_offset=0)
    assert isinstance(before, Error)
    assert before.code == "history_exceeded"

    plane.manager.set_delivery_policy("/video/a", DeliveryPolicy(kind="best_effort"))
    assert not plane.manager.route_data("/video/a", b"later").keeps_history
    error = recover(plane, topic="/video/a", epoch=epoch, from_offset=2)
    assert isinstance(error, Error)
    assert error.code == "not_reliable"
    assert plane.manager.get_connection_stats().history_bytes == 0


CONTROL_TAGS = ["hello", "heartbeat", "register", "unregister", "subscribe", "unsubscribe", "recover"]
_scalars = st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats() | st.text(max_size=20)
_values = st.recursive(
    _scalars | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
_fields = st.sampled_from(["request_id", "client_id", "topic", "edge_id", "version", "token", "from_offset"])


@settings(max_examples=scaled_examples(200), deadline=None)
@given(
    tag=st.sampled_from(CONTROL_TAGS) | st.text(max_size=10),
    fields=st.dictionaries(_fields, _values, max_size=4),
)
def test_msgpack_shaped_garbage_gets_a_reply_or_a_counted_drop(tag: str, fields: dict[str, Any]) -> None:
    plane = make_plane()
    hello(plane, "e1")
    try:
        body = msgspec.msgpack.encode({"type": tag, **fields})
    except (OverflowError, TypeError):
        return
    out = handle(plane, "e1", body)
    try:
        decode_edge_message(body)
    except WireError:
        assert error_reply(out).code == "bad_request"
        assert plane.manager.get_connection_stats().drops == {"bad_control": 1}
    else:
        assert plane.manager.get_connection_stats().drops == {}


# ---------------------------------------------------------------- observers


def test_an_observer_says_hello_and_asks_for_stats_but_serves_no_client() -> None:
    plane = make_plane()

    def observe(message: EdgeMessage) -> list[Outbound]:
        return plane.handle(b"tap", encode_control(message), 0.0, key="K", observer=True)

    assert observe(Hello(edge_id="tap-1", protocol="tap")) == [ToEdge("tap-1", welcome(plane))]
    assert observe(Heartbeat()) == []
    [stats] = observe(StatsRequest(request_id=1))
    assert isinstance(stats, ToEdge)
    assert isinstance(stats.message, Stats)
    for message in (
        RegisterClient(request_id=2, client_id="tap-1/c"),
        Subscribe(request_id=3, client_id="tap-1/c", topic="/video/a"),
        Recover(request_id=4, topic="/events/a", epoch=1, from_offset=0, to_offset=1),
    ):
        assert error_reply(observe(message)).code == "forbidden"
    assert plane.manager.get_active_clients() == []
    assert plane.refusals[("register", "forbidden")] == 1
