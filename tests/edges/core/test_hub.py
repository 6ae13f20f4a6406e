"""EdgeHub (edges/core/hub.py): client ops, router replies, fan-out, resync; then a state machine.

The machine plays every client and the router at once, recovery included, against the model in
tests/edges/core/hub_model.py. After every step the hub must agree with it.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any, get_args

import msgspec
import pytest
from hypothesis import HealthCheck, event, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from edges.core.client_wire import (
    FRAME_RESTARTED,
    FRAME_SKIPPED,
    CloseCode,
    Connect,
    SkippedFrame,
    SkipReason,
    encode_data_frame,
    frame_type,
    parse_data_frame,
    parse_restarted_frame,
    parse_skipped_frame,
)
from edges.core.hub import (
    REFUSAL_LOG_BURST,
    CloseClient,
    EdgeAction,
    EdgeHub,
    EdgeLimits,
    ToRouter,
    UnwatchData,
    WatchData,
)
from edges.core.output import Data, Skipped
from edges.core.session import ClientSession, State
from router import wire
from router.core.policy import DeliveryPolicy, PolicyKind
from tests.edges.core.hub_clients import RELIABLE, subscribe_ok
from tests.edges.core.hub_model import CLIENT_CODES, LIMITS, TOPICS, Client, HubModel, Request
from tests.edges.output import wire_forms
from tests.strategies import scaled_examples

BEST_EFFORT = DeliveryPolicy()


# ---------------------------------------------------------------- helpers


GONE = "connection closed"
"""The reason a hub gives the router when a transport closes without saying why."""


def to_router(actions: list[EdgeAction]) -> list[Any]:
    """The messages for the router among ``actions`` (typed loosely: tests know which they sent)."""
    return [action.message for action in actions if isinstance(action, ToRouter)]


def only_request(hub: EdgeHub) -> Any:
    [message] = to_router(hub.drain_actions())
    return message


def parsed(session: ClientSession) -> list[Any]:
    """Drain a session: JSON objects for text messages, (channel, offset, payload) for data frames,
    a :class:`~edges.core.client_wire.SkippedFrame` for skipped frames, ("restart", channel, epoch)
    for restarted frames."""
    out: list[Any] = []
    for item in wire_forms(session.data_to_send()):
        if isinstance(item, str):
            out.append(json.loads(item))
        elif frame_type(item) == FRAME_SKIPPED:
            out.append(parse_skipped_frame(item))
        elif frame_type(item) == FRAME_RESTARTED:
            out.append(("restart", *parse_restarted_frame(item)))
        else:
            frame = parse_data_frame(item)
            out.append((frame.channel, frame.offset, frame.payload))
    return out


def connect(hub: EdgeHub, client_id: str, user: str = "alice") -> ClientSession:
    session = hub.open_client(client_id, "10.0.0.1:4000")
    hub.client_text(client_id, '{"op":"connect","token":"tok"}')
    register = only_request(hub)
    hub.router_message(wire.Registered(request_id=register.request_id, client_id=client_id, user=user))
    session.data_to_send()
    return session


def ok_for(
    request: wire.Subscribe, epoch: int = 5, offset: int = 10, policy: DeliveryPolicy = RELIABLE
) -> wire.SubscribeOk:
    return subscribe_ok(request, policy, epoch, offset, content_type="text/plain")


def subscribe(
    hub: EdgeHub,
    client_id: str,
    topic: str,
    request_id: int = 1,
    epoch: int = 5,
    offset: int = 10,
    policy: DeliveryPolicy = RELIABLE,
) -> list[EdgeAction]:
    """Subscribe and confirm; returns the actions of the subscribe itself."""
    hub.client_text(client_id, json.dumps({"op": "subscribe", "id": request_id, "topic": topic}))
    actions = hub.drain_actions()
    [request] = to_router(actions)
    assert isinstance(request, wire.Subscribe)
    hub.router_message(ok_for(request, epoch, offset, policy))
    return actions


def error_for(request: Any, code: str, message: str = "refused") -> wire.Error:
    return wire.Error(request_id=request.request_id, code=code, message=message, client_id=request.client_id)


# ---------------------------------------------------------------- connect


def test_connect_registers_with_the_router() -> None:
    hub = EdgeHub(protocol="webrtc")
    session = hub.open_client("c1", "10.0.0.1:4000")
    assert session.state is State.AWAITING_CONNECT
    hub.client_text("c1", '{"op":"connect","token":"tok"}')
    register = only_request(hub)
    assert register == wire.RegisterClient(
        request_id=register.request_id, client_id="c1", protocol="webrtc", remote="10.0.0.1:4000", token="tok"
    )
    assert not session.has_output
    hub.router_message(wire.Registered(request_id=register.request_id, client_id="c1", user="alice"))
    assert hub.sessions_with_output() == [session]
    assert parsed(session) == [{"op": "connected", "client_id": "c1", "user": "alice"}]
    ready = hub.session("c1")
    assert ready is session
    assert ready.state is State.READY


def test_a_decoded_connect_registers_like_its_text() -> None:
    hub = EdgeHub(protocol="webrtc")
    session = hub.open_client("c1", "10.0.0.1:4000")
    hub.client_connect("c1", Connect(token="tok"))
    register = only_request(hub)
    assert register == wire.RegisterClient(
        request_id=register.request_id, client_id="c1", protocol="webrtc", remote="10.0.0.1:4000", token="tok"
    )
    assert session.state is State.REGISTERING
    hub.client_connect("c1", Connect(token="again"))
    assert to_router(hub.drain_actions()) == []
    assert parsed(session)[0]["code"] == "bad_request"


@pytest.mark.parametrize(
    ("router_code", "client_code"), [("unauthorized", "unauthorized"), ("duplicate_client", "internal")]
)
def test_refused_connect_closes_the_client(router_code: str, client_code: str) -> None:
    hub = EdgeHub()
    session = hub.open_client("c1")
    hub.client_text("c1", '{"op":"connect","token":"bad"}')
    hub.router_message(error_for(only_request(hub), router_code, "token expired"))
    assert hub.drain_actions() == [CloseClient("c1", CloseCode.REFUSED, f"connect refused: {client_code}")]
    assert parsed(session) == [
        {"op": "error", "id": None, "code": client_code, "message": "token expired"},
        {"op": "closing", "code": 4001, "reason": f"connect refused: {client_code}"},
    ]
    hub.client_closed("c1")
    assert hub.drain_actions() == [], "the router never had the client"


def test_a_client_that_sends_no_connect_in_time_is_closed_with_4005() -> None:
    hub = EdgeHub(EdgeLimits(connect_timeout=2.0))
    idle = hub.open_client("idle", now=10.0)
    hub.open_client("prompt", now=10.5)
    hub.client_text("prompt", '{"op":"connect","token":"tok"}', 11.0)
    hub.open_client("webrtc")
    hub.drain_actions()
    assert hub.tick(11.9) == 12.0, "wake at the first deadline"
    assert hub.drain_actions() == []
    assert hub.tick(12.0) == 12.5
    assert hub.drain_actions() == [CloseClient("idle", CloseCode.CONNECT_TIMEOUT, "no connect within 2 s")]
    assert parsed(idle) == [{"op": "closing", "code": 4005, "reason": "no connect within 2 s"}]
    assert hub.tick(13.0) == 21.0, (
        "prompt connected in time (its connect now waits for the router until the request timeout);"
        " a client opened without a time waits for none"
    )
    assert hub.drain_actions() == []
    assert [hub.session(c).state for c in ("prompt", "webrtc")] == [State.REGISTERING, State.AWAITING_CONNECT]  # type: ignore[union-attr]


def test_a_connect_no_router_answers_in_time_closes_the_client_with_4006() -> None:
    hub = EdgeHub(EdgeLimits(request_timeout=3.0))
    waiting, answered = hub.open_client("waiting", now=0.0), hub.open_client("answered", now=0.0)
    hub.client_text("waiting", '{"op":"connect","token":"tok"}', 1.0)
    hub.client_text("answered", '{"op":"connect","token":"tok"}', 1.5)
    registers = to_router(hub.drain_actions())
    hub.router_message(wire.Registered(request_id=registers[1].request_id, client_id="answered", user="u"))
    parsed(answered)
    assert hub.next_deadline() == 4.0
    assert hub.tick(3.9) == 4.0
    assert hub.drain_actions() == []
    hub.tick(4.0)
    reason = "no router answered connect within 3 s"
    assert hub.drain_actions() == [
        ToRouter(wire.UnregisterClient(client_id="waiting", reason=f"{reason} (4006)")),
        CloseClient("waiting", CloseCode.UNANSWERED, reason),
    ], "the router is told to forget the client, should the connect reach it late"
    assert parsed(waiting) == [
        {"op": "error", "id": None, "code": "unavailable", "message": reason},
        {"op": "closing", "code": 4006, "reason": reason},
    ]
    assert hub.tick(11.0) is None
    assert hub.drain_actions() == []
    assert parsed(answered) == [], "answered in time: nothing happens"
    assert hub.stats().unanswered == 1


def test_a_subscribe_no_router_answers_in_time_ends_with_unavailable_and_is_withdrawn() -> None:
    hub = EdgeHub(EdgeLimits(request_timeout=2.0))
    session = connect(hub, "c1")
    hub.client_text("c1", '{"op":"subscribe","id":7,"topic":"/slow"}', 10.0)
    hub.client_text("c1", '{"op":"subscribe","id":8,"topic":"/quick"}', 10.5)
    slow, quick = to_router(hub.drain_actions())
    hub.router_message(ok_for(quick))
    assert [m["op"] for m in parsed(session)] == ["subscribed"]
    assert hub.tick(11.9) == 12.0
    hub.tick(12.0)
    withdraw = only_request(hub)
    assert withdraw == wire.Unsubscribe(request_id=withdraw.request_id, client_id="c1", topic="/slow")
    message = "no router answered within 2 s; subscribe again"
    assert parsed(session) == [{"op": "error", "id": 7, "code": "unavailable", "message": message}]
    hub.router_message(ok_for(slow))
    hub.router_message(wire.Unsubscribed(request_id=withdraw.request_id, client_id="c1", topic="/slow"))
    assert parsed(session) == [], "a late subscribed, and the withdrawal's reply, reach no client"
    assert hub.stats().unexpected_replies == 1
    hub.client_text("c1", '{"op":"subscribe","id":9,"topic":"/slow"}', 12.5)
    again = only_request(hub)
    hub.router_message(ok_for(again))
    assert parsed(session)[0]["op"] == "subscribed", "the client may subscribe again"
    hub.tick(20.0)
    assert hub.drain_actions() == []
    assert parsed(session) == [], "a subscription answered in time stays"
    assert hub.stats().unanswered == 1


def test_duplicate_and_unknown_client_ids() -> None:
    hub = EdgeHub()
    hub.open_client("c1")
    with pytest.raises(ValueError, match="already open"):
        hub.open_client("c1")
    with pytest.raises(KeyError):
        hub.client_text("nobody", '{"op":"connect"}')
    hub.client_closed("nobody")
    assert hub.session("c1") is not None
    assert hub.session("nobody") is None


def test_ping_and_binary_through_the_hub() -> None:
    hub = EdgeHub()
    session = connect(hub, "c1")
    hub.client_text("c1", '{"op":"ping","id":7}')
    hub.client_binary("c1", b"\x00")
    assert hub.sessions_with_output() == [session]
    assert hub.sessions_with_output() == []
    out = parsed(session)
    assert out[0] == {"op": "pong", "id": 7}
    assert (out[1]["op"], out[1]["code"]) == ("error", "bad_request")
    assert hub.stats().bad_client_messages == 1
    assert hub.drain_actions() == []


# ---------------------------------------------------------------- subscribe


def test_first_subscriber_watches_before_subscribing() -> None:
    hub = EdgeHub()
    session = connect(hub, "c1")
    hub.client_text("c1", '{"op":"subscribe","id":1,"topic":"/video/main"}')
    watch, request = hub.drain_actions()
    assert watch == WatchData("/video/main")
    assert isinstance(request, ToRouter)
    message = request.message
    assert isinstance(message, wire.Subscribe)
    assert (message.client_id, message.topic) == ("c1", "/video/main")
    hub.router_message(ok_for(message, epoch=9, offset=41))
    assert parsed(session) == [
        {
            "op": "subscribed",
            "id": 1,
            "topic": "/video/main",
            "channel": 0,
            "epoch": 9,
            "offset": 41,
            "content_type": "text/plain",
            "policy": "reliable",
            "resume": "none",
            "resume_from": 0,
        }
    ]
    assert hub.policy_of("/video/main") == RELIABLE


def test_second_subscriber_shares_the_watch_and_channel() -> None:
    hub = EdgeHub()
    first, second = connect(hub, "c1"), connect(hub, "c2")
    subscribe(hub, "c1", "/a")
    actions = subscribe(hub, "c2", "/a")
    assert not any(isinstance(action, WatchData) for action in actions)
    assert parsed(first)[0]["channel"] == parsed(second)[0]["channel"] == 0


def test_no_data_before_the_subscription_is_confirmed() -> None:
    hub = EdgeHub()
    session = connect(hub, "c1")
    hub.client_text("c1", '{"op":"subscribe","id":1,"topic":"/a"}')
    [request] = to_router(hub.drain_actions())
    assert hub.deliver(b"/a", 5, 11, b"early") == 0
    assert hub.stats().unexpected_data == 0
    hub.router_message(ok_for(request, offset=11))
    assert hub.deliver(b"/a", 5, 12, b"late") == 1
    out = parsed(session)
    assert [type(item) for item in out] == [dict, tuple]
    assert out[0]["op"] == "subscribed"
    assert out[1] == (0, 12, b"late")


@pytest.mark.parametrize("topic", ["video", "/a//b", "/a/", "/sp ace", "/nul\0", "/" + "x" * 300])
def test_bad_topic_is_refused_locally(topic: str) -> None:
    hub = EdgeHub()
    session = connect(hub, "c1")
    hub.client_text("c1", json.dumps({"op": "subscribe", "id": 3, "topic": topic}))
    assert hub.drain_actions() == []
    [reply] = parsed(session)
    assert (reply["op"], reply["id"], reply["code"]) == ("error", 3, "bad_topic")


def test_duplicate_subscribe_is_a_bad_request_pending_or_not() -> None:
    hub = EdgeHub()
    session = connect(hub, "c1")
    hub.client_text("c1", '{"op":"subscribe","id":1,"topic":"/a"}')
    [request] = to_router(hub.drain_actions())
    hub.client_text("c1", '{"op":"subscribe","id":2,"topic":"/a"}')
    hub.router_message(ok_for(request))
    hub.client_text("c1", '{"op":"subscribe","id":3,"topic":"/a"}')
    assert hub.drain_actions() == []
    out = parsed(session)
    assert [(reply["op"], reply["id"], reply.get("code")) for reply in out] == [
        ("error", 2, "bad_request"),
        ("subscribed", 1, None),
        ("error", 3, "bad_request"),
    ]


def test_subscription_limit_counts_pending_ones() -> None:
    hub = EdgeHub(EdgeLimits(max_subscriptions=2))
    session = connect(hub, "c1")
    subscribe(hub, "c1", "/a")
    hub.client_text("c1", '{"op":"subscribe","id":2,"topic":"/b"}')
    hub.client_text("c1", '{"op":"subscribe","id":3,"topic":"/c"}')
    assert len(to_router(hub.drain_actions())) == 1
    reply = parsed(session)[-1]
    assert (reply["id"], reply["code"]) == (3, "limit_exceeded")


def test_local_refusals_are_counted_by_code_and_logged_bounded(caplog: pytest.LogCaptureFixture) -> None:
    hub = EdgeHub(EdgeLimits(max_subscriptions=1))
    connect(hub, "c1")
    subscribe(hub, "c1", "/a")
    caplog.set_level(logging.INFO, logger="switchboard.edge")
    hub.client_text("c1", '{"op":"subscribe","id":2,"topic":"/a"}')
    hub.client_text("c1", '{"op":"subscribe","id":3,"topic":"/b"}')
    for request_id in range(4, 4 + REFUSAL_LOG_BURST + 10):
        hub.client_text("c1", json.dumps({"op": "subscribe", "id": request_id, "topic": "no-slash"}))
    assert hub.drain_actions() == []
    assert hub.stats().refused_requests == {
        "bad_request": 1,
        "limit_exceeded": 1,
        "bad_topic": REFUSAL_LOG_BURST + 10,
    }
    lines = [record for record in caplog.records if record.message.startswith("refused subscribe")]
    expected = ["bad_request", "limit_exceeded"] + ["bad_topic"] * REFUSAL_LOG_BURST
    assert [vars(line)["reason"] for line in lines] == expected
    assert (vars(lines[0])["client_id"], vars(lines[0])["topic"]) == ("c1", "/a")


def test_refusals_by_the_router_are_not_counted_by_the_edge() -> None:
    hub = EdgeHub()
    connect(hub, "c1")
    hub.client_text("c1", '{"op":"subscribe","id":4,"topic":"/secret"}')
    [request] = to_router(hub.drain_actions())
    hub.router_message(error_for(request, "forbidden"))
    assert hub.stats().refused_requests == {}


def test_subscribe_refused_by_the_router_frees_the_topic() -> None:
    hub = EdgeHub()
    session = connect(hub, "c1")
    hub.client_text("c1", '{"op":"subscribe","id":4,"topic":"/secret"}')
    [request] = to_router(hub.drain_actions())
    hub.router_message(error_for(request, "forbidden", "not for you"))
    assert hub.drain_actions() == [UnwatchData("/secret")]
    assert parsed(session) == [{"op": "error", "id": 4, "code": "forbidden", "message": "not for you"}]
    hub.client_text("c1", '{"op":"subscribe","id":5,"topic":"/other"}')
    watch, _ = hub.drain_actions()
    assert watch == WatchData("/other")
    hub.deliver(b"/secret", 5, 11, b"x")
    assert hub.stats().unexpected_data == 1, "no longer watched"


# ---------------------------------------------------------------- unsubscribe


def test_unsubscribe_stops_data_at_once_and_unwatches_with_the_last() -> None:
    hub = EdgeHub()
    session = connect(hub, "c1")
    subscribe(hub, "c1", "/a")
    session.data_to_send()
    hub.deliver(b"/a", 5, 11, b"queued")
    hub.client_text("c1", '{"op":"unsubscribe","id":2,"topic":"/a"}')
    request, unwatch = hub.drain_actions()
    assert isinstance(request, ToRouter)
    message = request.message
    assert isinstance(message, wire.Unsubscribe)
    assert (message.client_id, message.topic) == ("c1", "/a")
    assert unwatch == UnwatchData("/a")
    assert hub.deliver(b"/a", 5, 12, b"after") == 0
    assert session.data_to_send() == []
    assert session.dropped == {"unsubscribed": 1}
    hub.router_message(wire.Unsubscribed(request_id=message.request_id, client_id="c1", topic="/a"))
    assert parsed(session) == [{"op": "unsubscribed", "id": 2, "topic": "/a"}]


def test_unsubscribe_keeps_the_watch_for_other_clients() -> None:
    hub = EdgeHub()
    connect(hub, "c1")
    other = connect(hub, "c2")
    subscribe(hub, "c1", "/a")
    subscribe(hub, "c2", "/a")
    hub.client_text("c1", '{"op":"unsubscribe","id":2,"topic":"/a"}')
    assert [type(action) for action in hub.drain_actions()] == [ToRouter]
    other.data_to_send()
    assert hub.deliver(b"/a", 5, 11, b"x") == 1
    assert parsed(other) == [(0, 11, b"x")]


def test_unsubscribe_errors() -> None:
    hub = EdgeHub()
    session = connect(hub, "c1")
    hub.client_text("c1", '{"op":"unsubscribe","id":1,"topic":"/a"}')
    hub.client_text("c1", '{"op":"subscribe","id":2,"topic":"/a"}')
    hub.drain_actions()
    hub.client_text("c1", '{"op":"unsubscribe","id":3,"topic":"/a"}')
    assert hub.drain_actions() == []
    assert [(reply["id"], reply["code"]) for reply in parsed(session)] == [
        (1, "not_subscribed"),
        (3, "bad_request"),
    ]


@pytest.mark.parametrize(
    ("router_code", "client_code"), [("unknown_client", "unavailable"), ("duplicate_client", "internal")]
)
def test_unsubscribe_refused_by_the_router_is_reported(router_code: str, client_code: str) -> None:
    """A router that does not know the client (the edge is registering its clients again) is
    told as ``unavailable``, to retry; a code clients do not know, as ``internal``."""
    hub = EdgeHub()
    session = connect(hub, "c1")
    subscribe(hub, "c1", "/a")
    session.data_to_send()
    hub.client_text("c1", '{"op":"unsubscribe","id":2,"topic":"/a"}')
    [request] = to_router(hub.drain_actions())
    hub.router_message(error_for(request, router_code))
    assert parsed(session) == [{"op": "error", "id": 2, "code": client_code, "message": "refused"}]


def test_channels_are_reused_lowest_first() -> None:
    hub = EdgeHub()
    session = connect(hub, "c1")

    def channels(*topics: str) -> list[int]:
        for topic in topics:
            subscribe(hub, "c1", topic, request_id=len(topic) + ord(topic[1]))
        return [reply["channel"] for reply in parsed(session) if reply["op"] == "subscribed"]

    assert channels("/a", "/b", "/c") == [0, 1, 2]
    hub.client_text("c1", '{"op":"unsubscribe","id":9,"topic":"/b"}')
    hub.client_text("c1", '{"op":"unsubscribe","id":10,"topic":"/a"}')
    hub.drain_actions()
    session.data_to_send()
    assert channels("/d", "/e", "/f") == [0, 1, 3]


# ---------------------------------------------------------------- fan-out


def test_one_frame_object_for_every_subscriber() -> None:
    hub = EdgeHub()
    sessions = [connect(hub, f"c{number}") for number in range(3)]
    for session in sessions[:2]:
        subscribe(hub, session.client_id, "/a")
        session.data_to_send()
    assert hub.deliver(b"/a", 5, 11, b"payload") == 2
    [frame_a] = sessions[0].data_to_send()
    [frame_b] = sessions[1].data_to_send()
    assert frame_a is frame_b
    assert wire_forms([frame_a]) == [bytes.fromhex("010000000000000000000000000b") + b"payload"]
    assert sessions[2].data_to_send() == []
    assert hub.stats().delivered == 2


def test_framing_heads_each_frame_once() -> None:
    calls: list[int] = []

    def framing(size: int) -> bytes:
        calls.append(size)
        return b"<%d>" % size

    hub = EdgeHub(framing=framing)
    first, second = connect(hub, "c1"), connect(hub, "c2")
    for session in (first, second):
        subscribe(hub, session.client_id, "/a")
        session.data_to_send()
    hub.deliver(b"/a", 5, 11, b"x")
    assert calls == [len(encode_data_frame(0, 11, b"x"))]
    [framed] = first.data_to_send()
    assert wire_forms([framed]) == [b"<15>" + encode_data_frame(0, 11, b"x")]
    assert second.data_to_send()[0] is framed


def test_data_for_an_unknown_topic_is_counted() -> None:
    hub = EdgeHub()
    connect(hub, "c1")
    subscribe(hub, "c1", "/a")
    assert hub.deliver(b"/a/b", 5, 1, b"x") == 0
    assert hub.deliver(b"/", 5, 1, b"x") == 0
    assert hub.stats().unexpected_data == 2


def test_messages_up_to_the_announced_offset_are_skipped() -> None:
    hub = EdgeHub()
    session = connect(hub, "c1")
    subscribe(hub, "c1", "/a", epoch=5, offset=10)
    session.data_to_send()
    assert hub.deliver(b"/a", 5, 10, b"old") == 0
    assert hub.deliver(b"/a", 6, 1, b"new epoch") == 1
    assert hub.deliver(b"/a", 5, 11, b"next") == 1
    assert parsed(session) == [
        ("restart", 0, 6),
        (0, 1, b"new epoch"),
        ("restart", 0, 5),
        (0, 11, b"next"),
    ]


def test_slow_client_does_not_hold_back_the_others() -> None:
    hub = EdgeHub(EdgeLimits(queue_max_messages=2))
    slow, fast = connect(hub, "slow"), connect(hub, "fast")
    for session in (slow, fast):
        subscribe(hub, session.client_id, "/a", policy=BEST_EFFORT)
        session.data_to_send()
    received = []
    for offset in range(11, 16):
        hub.deliver(b"/a", 5, offset, b"m")
        received += parsed(fast)
    assert [offset for _, offset, _ in received] == [11, 12, 13, 14, 15]
    skipped, *frames = parsed(slow)
    assert skipped == (FRAME_SKIPPED, SkipReason.QUEUE_FULL, 0, 11, 13, 3)
    assert [offset for _, offset, _ in frames] == [14, 15]
    assert hub.stats().dropped == {"queue_full": 3}


# ---------------------------------------------------------------- closing


def test_client_closed_unregisters_and_unwatches() -> None:
    hub = EdgeHub()
    session = connect(hub, "c1")
    subscribe(hub, "c1", "/a")
    hub.deliver(b"/a", 5, 11, b"x")
    hub.client_closed("c1")
    assert hub.drain_actions() == [
        UnwatchData("/a"),
        ToRouter(wire.UnregisterClient(client_id="c1", reason=GONE)),
    ]
    assert session.state is State.CLOSED
    assert hub.stats().dropped == {"closed": 1}
    assert hub.stats().clients == 0


def test_closed_before_connect_tells_the_router_nothing() -> None:
    hub = EdgeHub()
    hub.open_client("c1")
    hub.client_closed("c1")
    assert hub.drain_actions() == []


def test_closed_while_registering_unregisters_and_late_reply_is_ignored() -> None:
    hub = EdgeHub()
    hub.open_client("c1")
    hub.client_text("c1", '{"op":"connect"}')
    register = only_request(hub)
    hub.client_closed("c1", "closed by the client (1000)")
    assert to_router(hub.drain_actions()) == [
        wire.UnregisterClient(client_id="c1", reason="closed by the client (1000)")
    ]
    hub.router_message(wire.Registered(request_id=register.request_id, client_id="c1", user="alice"))
    assert hub.stats().unexpected_replies == 1
    assert hub.drain_actions() == []


def test_closed_with_a_subscribe_in_flight() -> None:
    hub = EdgeHub()
    connect(hub, "c1")
    hub.client_text("c1", '{"op":"subscribe","id":1,"topic":"/a"}')
    [request] = to_router(hub.drain_actions())
    hub.client_closed("c1")
    assert hub.drain_actions() == [
        UnwatchData("/a"),
        ToRouter(wire.UnregisterClient(client_id="c1", reason=GONE)),
    ]
    hub.router_message(ok_for(request))
    assert hub.stats().unexpected_replies == 1


def test_drop_client_from_the_router() -> None:
    hub = EdgeHub()
    session = connect(hub, "c1")
    subscribe(hub, "c1", "/a")
    session.data_to_send()
    hub.router_message(wire.DropClient(client_id="c1", reason="token expired"))
    assert hub.drain_actions() == [UnwatchData("/a"), CloseClient("c1", CloseCode.DROPPED, "token expired")]
    assert parsed(session) == [{"op": "closing", "code": 4002, "reason": "token expired"}]
    hub.client_closed("c1")
    assert hub.drain_actions() == [], "the router dropped it already"
    hub.router_message(wire.DropClient(client_id="c1", reason="again"))
    assert hub.stats().unexpected_replies == 1


def test_close_client_at_shutdown() -> None:
    hub = EdgeHub()
    session = connect(hub, "c1")
    hub.close_client("c1", reason="edge stopping")
    hub.close_client("c1", reason="twice")
    assert hub.drain_actions() == [
        ToRouter(wire.UnregisterClient(client_id="c1", reason="edge stopping (1001)")),
        CloseClient("c1", CloseCode.GOING_AWAY, "edge stopping"),
    ]
    assert parsed(session) == [{"op": "closing", "code": 1001, "reason": "edge stopping"}]
    hub.client_text("c1", '{"op":"ping","id":1}')
    assert session.data_to_send() == []


def test_unread_replies_close_the_client_through_the_hub() -> None:
    hub = EdgeHub(EdgeLimits(max_pending_replies=2))
    connect(hub, "c1")
    for request_id in range(3):
        hub.client_text("c1", f'{{"op":"ping","id":{request_id}}}')
    assert hub.drain_actions() == [
        ToRouter(wire.UnregisterClient(client_id="c1", reason="too many unread replies (1008)")),
        CloseClient("c1", CloseCode.POLICY_VIOLATION, "too many unread replies"),
    ]


# ---------------------------------------------------------------- other router messages


def test_policy_update_and_link_messages() -> None:
    hub = EdgeHub()
    connect(hub, "c1")
    subscribe(hub, "c1", "/a")
    latest = DeliveryPolicy(kind="latest")
    hub.router_message(wire.PolicyUpdate(topic="/a", policy=latest))
    hub.router_message(wire.PolicyUpdate(topic="/elsewhere", policy=latest))
    hub.router_message(wire.Heartbeat(router_id="r1"))
    hub.router_message(wire.Welcome(router_id="r1", version=1, heartbeat_interval=1.0, heartbeat_timeout=5.0))
    assert hub.policy_of("/a") == latest
    assert hub.policy_of("/elsewhere") is None
    assert hub.drain_actions() == []
    assert hub.stats().unexpected_replies == 0


def test_reply_of_the_wrong_kind_is_unexpected_and_keeps_the_request() -> None:
    hub = EdgeHub()
    session = connect(hub, "c1")
    hub.client_text("c1", '{"op":"subscribe","id":1,"topic":"/a"}')
    [request] = to_router(hub.drain_actions())
    hub.router_message(wire.Registered(request_id=request.request_id, client_id="c1", user="x"))
    hub.router_message(wire.Error(request_id=0, code="bad_request", message="bad control"))
    assert hub.stats().unexpected_replies == 2
    hub.router_message(ok_for(request))
    assert parsed(session)[0]["op"] == "subscribed"


# ---------------------------------------------------------------- resync


def test_resync_rebuilds_clients_and_subscriptions_in_order() -> None:
    hub = EdgeHub()
    ready = connect(hub, "c1")
    subscribe(hub, "c1", "/a")
    hub.client_text("c1", '{"op":"subscribe","id":2,"topic":"/b"}')
    hub.client_text("c1", '{"op":"unsubscribe","id":3,"topic":"/a"}')
    hub.open_client("c2")
    hub.client_text("c2", '{"op":"connect","token":"t2"}')
    hub.open_client("c3")
    old = to_router(hub.drain_actions())
    ready.data_to_send()
    messages = hub.resync()
    assert [message_signature(message) for message in messages] == [
        ("register", "c1"),
        ("subscribe", "c1", "/b"),
        ("register", "c2"),
    ]
    assert isinstance(messages[2], wire.RegisterClient)
    assert messages[2].token == "t2"
    assert parsed(ready) == [{"op": "unsubscribed", "id": 3, "topic": "/a"}], (
        "its request died with the router"
    )
    for message in old:
        if isinstance(message, wire.Subscribe):
            hub.router_message(ok_for(message))
    assert hub.stats().unexpected_replies == 1


def test_resync_replies_are_silent_for_what_the_client_already_has() -> None:
    hub = EdgeHub()
    session = connect(hub, "c1")
    subscribe(hub, "c1", "/a", epoch=5, offset=10)
    hub.client_text("c1", '{"op":"subscribe","id":2,"topic":"/b"}')
    hub.drain_actions()
    session.data_to_send()
    register, sub_a, sub_b = hub.resync()
    assert isinstance(register, wire.RegisterClient)
    assert isinstance(sub_a, wire.Subscribe)
    assert isinstance(sub_b, wire.Subscribe)
    hub.router_message(wire.Registered(request_id=register.request_id, client_id="c1", user="alice"))
    hub.router_message(ok_for(sub_a, epoch=77, offset=5))
    assert session.data_to_send() == []
    hub.router_message(ok_for(sub_b, epoch=78, offset=3))
    assert [reply["id"] for reply in parsed(session)] == [2], "the client still waited for this one"
    assert hub.deliver(b"/a", 77, 5, b"x") == 0, "the new router's position counts"
    assert hub.deliver(b"/a", 77, 6, b"x") == 1


def test_resync_reply_for_a_topic_left_and_rejoined_is_ignored() -> None:
    hub = EdgeHub()
    session = connect(hub, "c1")
    subscribe(hub, "c1", "/a")
    _, silent = hub.resync()
    assert isinstance(silent, wire.Subscribe)
    hub.client_text("c1", '{"op":"unsubscribe","id":2,"topic":"/a"}')
    hub.client_text("c1", '{"op":"subscribe","id":3,"topic":"/a"}')
    unsubscribe, again = to_router(hub.drain_actions())
    assert isinstance(unsubscribe, wire.Unsubscribe)
    assert isinstance(again, wire.Subscribe)
    session.data_to_send()
    hub.router_message(ok_for(silent))
    assert hub.deliver(b"/a", 5, 11, b"x") == 0, "the client waits for its new subscribe"
    hub.router_message(wire.Unsubscribed(request_id=unsubscribe.request_id, client_id="c1", topic="/a"))
    hub.router_message(ok_for(again))
    assert [reply["op"] for reply in parsed(session)] == ["unsubscribed", "subscribed"]
    assert hub.deliver(b"/a", 5, 12, b"x") == 1


def test_resync_refusals_reach_the_client() -> None:
    hub = EdgeHub()
    session = connect(hub, "c1")
    subscribe(hub, "c1", "/a")
    subscribe(hub, "c1", "/b", request_id=2)
    session.data_to_send()
    _, sub_a, _ = hub.resync()
    hub.router_message(error_for(sub_a, "forbidden", "revoked"))
    assert hub.drain_actions() == [UnwatchData("/a")]
    assert parsed(session) == [
        {"op": "error", "id": None, "code": "forbidden", "message": "revoked", "topic": "/a"}
    ]
    register, _ = hub.resync()
    hub.router_message(error_for(register, "unauthorized", "expired"))
    assert hub.drain_actions() == [
        UnwatchData("/b"),
        CloseClient("c1", CloseCode.REFUSED, "connect refused: unauthorized"),
    ]


def test_stats_keep_closed_clients() -> None:
    hub = EdgeHub(EdgeLimits(queue_max_messages=1))
    connect(hub, "c1")
    subscribe(hub, "c1", "/a", policy=BEST_EFFORT)
    hub.client_binary("c1", b"?")
    hub.deliver(b"/a", 5, 11, b"x")
    hub.deliver(b"/a", 5, 12, b"y")
    hub.client_closed("c1")
    stats = hub.stats()
    assert stats.dropped == {"queue_full": 1, "closed": 1}
    assert (stats.delivered, stats.bad_client_messages, stats.clients, stats.topics) == (2, 1, 0, 0)


# ---------------------------------------------------------------- a client's own max_rate


def capped_subscribe(hub: EdgeHub, client_id: str, max_rate: float | None) -> wire.Subscribe:
    """Send a subscribe to /a with ``max_rate``; returns the router's subscribe."""
    request: dict[str, Any] = {"op": "subscribe", "id": 1, "topic": "/a"}
    if max_rate is not None:
        request["max_rate"] = max_rate
    hub.client_text(client_id, json.dumps(request))
    message = only_request(hub)
    assert isinstance(message, wire.Subscribe)
    return message


def delivered_offsets(session: ClientSession) -> tuple[list[int], list[tuple[int, int, int]]]:
    """The data frames' offsets, and the (first, last, count) of the skipped frames, all rate limited."""
    offsets: list[int] = []
    skips: list[tuple[int, int, int]] = []
    for item in parsed(session):
        if isinstance(item, SkippedFrame):
            assert item.reasons == SkipReason.RATE_LIMITED
            skips.append((item.first, item.last, item.skipped))
        elif isinstance(item, tuple):
            offsets.append(item[1])
    return offsets, skips


def cap_and_resume(message: wire.EdgeMessage) -> tuple[object, ...]:
    """A router subscribe's topic, ``max_rate`` and resume position."""
    assert isinstance(message, wire.Subscribe)
    return message.topic, message.max_rate, message.resume_epoch, message.resume_offset


def test_a_clients_max_rate_goes_to_the_router_and_caps_only_its_own_lane() -> None:
    hub = EdgeHub()
    capped, free = connect(hub, "c1"), connect(hub, "c2")
    request = capped_subscribe(hub, "c1", 2.5)
    assert cap_and_resume(request) == ("/a", 2.5, None, None)
    hub.router_message(ok_for(request, policy=BEST_EFFORT))
    other = capped_subscribe(hub, "c2", None)
    assert other.max_rate is None
    hub.router_message(ok_for(other, policy=BEST_EFFORT))
    capped.data_to_send()
    free.data_to_send()
    for offset in range(11, 31):
        hub.deliver(b"/a", 5, offset, b"x", now=0.0)
    hub.deliver(b"/a", 5, 31, b"x", now=1.0)
    assert delivered_offsets(capped) == ([11, 12, 31], [(13, 30, 18)]), "a burst of 2, then 2.5 a second"
    assert delivered_offsets(free) == (list(range(11, 32)), [])
    assert hub.stats().dropped == {"rate_limited": 18}


def test_a_policy_change_keeps_the_clients_max_rate() -> None:
    hub = EdgeHub()
    session = connect(hub, "c1")
    hub.router_message(ok_for(capped_subscribe(hub, "c1", 2.0), policy=DeliveryPolicy(max_rate=1.0)))
    lane = session.lane(0)
    assert lane is not None
    assert lane.rate == 1.0
    for policy, rate in [
        (DeliveryPolicy(kind="latest", max_rate=9.0), 2.0),
        (RELIABLE, None),
        (BEST_EFFORT, 2.0),
    ]:
        hub.router_message(wire.PolicyUpdate(topic="/a", policy=policy))
        assert lane.rate == rate
    parsed(session)
    for offset in range(11, 16):
        hub.deliver(b"/a", 5, offset, b"x", now=0.0)
    hub.deliver(b"/a", 5, 16, b"x", now=0.5)
    assert delivered_offsets(session) == ([11, 12, 16], [(13, 15, 3)])


@pytest.mark.parametrize(
    "max_rate", ["0", "-1", "-0.5", "NaN", "Infinity", "1e400", '"5"', "true", "{}", "1e-400"]
)
def test_a_bad_max_rate_is_a_bad_request(max_rate: str) -> None:
    hub = EdgeHub()
    session = connect(hub, "c1")
    hub.client_text("c1", '{"op":"subscribe","id":4,"topic":"/a","max_rate":' + max_rate + "}")
    assert hub.drain_actions() == []
    [reply] = parsed(session)
    assert (reply["op"], reply["code"]) == ("error", "bad_request")
    if max_rate not in ("NaN", "Infinity"):
        assert reply["id"] == 4
        assert "max_rate" in reply["message"]
    assert hub.stats().topics == 0


def test_subscribing_again_with_another_max_rate_is_refused_and_keeps_the_first() -> None:
    hub = EdgeHub()
    session = connect(hub, "c1")
    hub.router_message(ok_for(capped_subscribe(hub, "c1", 2.0), policy=BEST_EFFORT))
    hub.client_text("c1", '{"op":"subscribe","id":2,"topic":"/a","max_rate":50}')
    assert hub.drain_actions() == []
    [_, refused] = parsed(session)
    assert (refused["id"], refused["code"]) == (2, "bad_request")
    assert "unsubscribe first" in refused["message"]
    lane = session.lane(0)
    assert lane is not None
    assert lane.rate == 2.0


def test_resync_subscribes_again_with_each_clients_max_rate() -> None:
    """After a router restart the edge subscribes each client again with its own cap: a confirmed
    subscription from the new router's position, one still waiting from the client's resume."""
    hub = EdgeHub()
    session = connect(hub, "c1")
    hub.router_message(ok_for(capped_subscribe(hub, "c1", 2.0), policy=BEST_EFFORT))
    resume = {"epoch": 5, "offset": 3}
    hub.client_text(
        "c1", json.dumps({"op": "subscribe", "id": 2, "topic": "/b", "max_rate": 7, "resume": resume})
    )
    assert cap_and_resume(only_request(hub)) == ("/b", 7.0, 5, 3)
    session.data_to_send()
    _, again_a, again_b = hub.resync()
    assert cap_and_resume(again_a) == ("/a", 2.0, None, None)
    assert cap_and_resume(again_b) == ("/b", 7.0, 5, 3)
    assert isinstance(again_a, wire.Subscribe)
    hub.router_message(ok_for(again_a, epoch=77, offset=5, policy=BEST_EFFORT))
    lane = session.lane(0)
    assert lane is not None
    assert lane.rate == 2.0, "the cap outlives the router"


# ---------------------------------------------------------------- the state machine

REFUSALS: dict[type, list[str]] = {
    wire.RegisterClient: ["unauthorized", "duplicate_client"],
    wire.Subscribe: ["forbidden", "unknown_topic"],
    wire.Unsubscribe: ["not_subscribed"],
}
SESSION_STATES = {
    "new": State.AWAITING_CONNECT,
    "registering": State.REGISTERING,
    "ready": State.READY,
    "closing": State.CLOSING,
}
ANSWERS_IN_A_ROW = 50
"""More than all the requests four clients with two subscriptions each can have out, refills included."""
VALID_OPS = {"connect", "subscribe", "unsubscribe", "ping"}
CLIENT_OPS = ["connect", "connect", "subscribe", "subscribe", "subscribe", "unsubscribe", "ping"]


def looks_valid(text: str) -> bool:
    """Whether ``text`` might be a valid client message (judged without the code under test)."""
    try:
        value = json.loads(text)
    except ValueError:
        return False
    if not isinstance(value, dict) or value.get("op") not in VALID_OPS:
        return False
    return value["op"] == "connect" or isinstance(value.get("id"), int)


garbage_texts = (
    st.text(max_size=140)
    | st.binary(max_size=20).map(lambda raw: raw.decode("latin-1"))
    | st.fixed_dictionaries({"op": st.sampled_from(sorted(VALID_OPS)), "id": st.text(max_size=3)}).map(
        json.dumps
    )
).filter(lambda text: not looks_valid(text))


def signature(action: EdgeAction) -> tuple[object, ...]:
    match action:
        case WatchData(topic):
            return ("watch", topic)
        case UnwatchData(topic):
            return ("unwatch", topic)
        case CloseClient(client_id, code, _):
            return ("close", client_id, code)
        case ToRouter(message):
            return message_signature(message)
    raise AssertionError(action)


def message_signature(message: wire.EdgeMessage) -> tuple[object, ...]:
    match message:
        case wire.RegisterClient():
            return ("register", message.client_id)
        case wire.Subscribe() | wire.Unsubscribe():
            return (message.__struct_config__.tag, message.client_id, message.topic)
        case wire.UnregisterClient():
            return ("unregister", message.client_id)
        case wire.Recover():
            return ("recover", message.topic)
    raise AssertionError(message)


@dataclass
class Reader:
    """What one client learned from what it read."""

    last_seen: dict[str, int] = field(default_factory=dict)
    """The serial of the last frame received, per topic."""
    received: int = 0
    channels: dict[int, str] = field(default_factory=dict)
    """What ``subscribed`` said: channel -> topic."""
    flagged: bool = False
    """The hub listed the session among those with output since the client last read."""


class EdgeMachine(RuleBasedStateMachine):
    """Every client and the router at once, against :class:`~tests.edges.core.hub_model.HubModel`.

    The router answers requests in order, and ``recover`` requests from its history (all of it,
    a part with ``more``, or a refusal, as after a restart, whose new epoch has no history yet),
    so ``reliable`` clients that fall behind are refilled. Every message handed to a client must
    end received, dropped (counted), queued or pending.
    """

    recovery = True

    def __init__(self) -> None:
        super().__init__()
        self.hub = EdgeHub(LIMITS, recovery=self.recovery)
        self.model = HubModel()
        self.sessions: dict[str, ClientSession] = {}
        self.readers: dict[str, Reader] = {}
        self.inbox: deque[wire.EdgeMessage] = deque()
        self.payloads: dict[int, tuple[str, int, bytes]] = {}
        self.frames: dict[int, Data] = {}
        """The first frame each message reached a client in: the one fan-out shares."""
        self.refilled: set[int] = set()
        """Serials the router sent again from its history."""
        self.numbers = iter(range(1, 10**9))

    # ------------------------------------------------------------ plumbing

    def check_actions(self) -> None:
        actions = self.hub.drain_actions()
        note(f"actions: {[signature(action) for action in actions]}")
        model = self.model
        for action in actions:
            match action:
                case WatchData(topic):
                    assert topic not in model.watched
                    model.watched.add(topic)
                case UnwatchData(topic):
                    model.watched.remove(topic)
                case ToRouter(message):
                    if isinstance(message, wire.Subscribe):
                        assert message.topic in model.watched, "WatchData comes before Subscribe"
                    self.router_gets(message)
        wanted = [signature(action) for action in actions if signature(action)[0] != "recover"]
        assert sorted(wanted, key=repr) == sorted(model.expected, key=repr)
        model.expected = []
        for session in self.hub.sessions_with_output():
            self.readers[session.client_id].flagged = True

    def router_gets(self, message: wire.EdgeMessage) -> None:
        """Record a request the router will answer, as the hub should see it."""
        clients = self.model.clients
        match message:
            case wire.RegisterClient():
                silent = clients[message.client_id].state == "ready"
                self.model.sent(message.request_id, Request("register", message.client_id, silent=silent))
            case wire.Subscribe():
                sub = clients[message.client_id].subs[message.topic]
                request = Request(
                    "subscribe", message.client_id, message.topic, sub=sub, silent=sub.position is not None
                )
                self.model.sent(message.request_id, request)
            case wire.Unsubscribe():
                request = Request("unsubscribe", message.client_id, message.topic, self.unsubscribe_request)
                self.model.sent(message.request_id, request)
            case wire.Recover():
                assert self.recovery, "a hub without recovery never asks the history"
                last = message.to_offset if message.to_offset is not None else message.from_offset
                self.model.recover_sent(
                    message.request_id, message.topic, message.epoch, message.from_offset + 1, last
                )
                note(f"the hub asks {message.topic}@{message.epoch} {message.from_offset + 1}..{last}")
            case _:
                return
        self.inbox.append(message)

    unsubscribe_request = 0

    def pick(self, data: st.DataObject) -> Client:
        client_id = data.draw(st.sampled_from(sorted(self.model.clients)), label="client")
        return self.model.clients[client_id]

    # ------------------------------------------------------------ clients

    @initialize(warm=st.booleans(), burst=st.integers(0, 4))
    def two_clients(self, warm: bool, burst: int) -> None:
        """Two clients; when ``warm``, both connected and subscribed to /a (``reliable``), which
        then sends ``burst`` messages, more than their queues take from 3: runs start deep, and
        often behind."""
        self.open_client()
        self.open_client()
        if warm:
            for op, topic in [("connect", ""), ("subscribe", "/a")]:
                for client in list(self.model.clients.values()):
                    self.send_op(client, op, topic)
                self.router_answers_all()
            for _ in range(burst):
                self.data_arrives("/a", size=0, repeat=False)

    @precondition(lambda self: len(self.model.clients) < 4)
    @rule()
    def open_client(self) -> None:
        client_id = f"c{next(self.numbers)}"
        self.sessions[client_id] = self.hub.open_client(client_id, "test")
        self.readers[client_id] = Reader()
        self.model.open_client(client_id)
        note(f"open {client_id}")

    @precondition(lambda self: self.model.clients)
    @rule(
        data=st.data(),
        op=st.sampled_from(CLIENT_OPS),
        topic=st.sampled_from([*TOPICS, "bad"]),
        answered=st.booleans(),
    )
    def client_op(self, data: st.DataObject, op: str, topic: str, answered: bool) -> None:
        """One client request; when ``answered``, the router then accepts all it was asked."""
        client = self.pick(data)
        if op == "unsubscribe" and client.subs and data.draw(st.booleans(), label="a topic it holds"):
            topic = data.draw(st.sampled_from(sorted(client.subs)), label="held topic")
        self.send_op(client, op, topic)
        if answered:
            self.router_answers_all()

    def send_op(self, client: Client, op: str, topic: str) -> None:
        request_id = next(self.numbers)
        message: dict[str, object] = {"op": op}
        if op != "connect":
            message["id"] = request_id
        if op in ("subscribe", "unsubscribe"):
            message["topic"] = topic
        note(f"{client.client_id} sends {message}")
        self.unsubscribe_request = request_id
        self.model.client_op(client, op, request_id, topic)
        self.hub.client_text(client.client_id, json.dumps(message))
        self.check_actions()

    @precondition(lambda self: self.model.clients)
    @rule(data=st.data(), garbage=garbage_texts | st.binary(max_size=8))
    def client_sends_garbage(self, data: st.DataObject, garbage: str | bytes) -> None:
        client = self.pick(data)
        note(f"{client.client_id} sends garbage {garbage!r}")
        self.model.garbage(client)
        if isinstance(garbage, bytes):
            self.hub.client_binary(client.client_id, garbage)
        else:
            self.hub.client_text(client.client_id, garbage)
        self.check_actions()

    @precondition(lambda self: self.model.clients)
    @rule(
        data=st.data(),
        kind=st.sampled_from(["client_closes", "edge_shuts", "router_drops", "router_restarts"]),
    )
    def disruption(self, data: st.DataObject, kind: str) -> None:
        """The rare events, in one rule so that they do not crowd out the common ones."""
        if kind == "router_restarts":
            self.router_restarts()
            return
        client = self.pick(data)
        {
            "client_closes": self.client_closes,
            "edge_shuts": self.edge_shuts,
            "router_drops": self.router_drops,
        }[kind](client)

    def client_closes(self, client: Client) -> None:
        client_id = client.client_id
        note(f"{client_id} closed")
        self.model.client_closes(client)
        self.hub.client_closed(client_id)
        self.check_actions()
        session, reader = self.sessions.pop(client_id), self.readers.pop(client_id)
        assert session.state is State.CLOSED
        assert len(client.pushed) == reader.received + session.dropped.total()

    def edge_shuts(self, client: Client) -> None:
        note(f"the edge closes {client.client_id}")
        self.model.edge_shuts(client)
        self.hub.close_client(client.client_id, CloseCode.GOING_AWAY, "bye")
        self.check_actions()

    # ------------------------------------------------------------ the router

    @precondition(lambda self: self.inbox)
    @rule(
        accept=st.sampled_from([True, True, True, False]),
        refusal=st.integers(0, 1),
        kind=st.sampled_from(get_args(PolicyKind)),
        cut=st.integers(0, 3),
    )
    def router_answers(
        self, accept: bool, refusal: int = 0, kind: PolicyKind = "reliable", cut: int = 0
    ) -> None:
        """The router answers the oldest request: a ``recover`` with all it asked for, or the
        first ``cut`` messages and ``more``, or a refusal."""
        request = self.inbox.popleft()
        if isinstance(request, wire.Recover):
            answer = self.recovered(request, accept, cut)
            self.model.recovery_answered(request.request_id, refused=isinstance(answer, wire.Error))
        else:
            answer = self.answer(request, accept, refusal, kind)
            if isinstance(answer, wire.Error):
                self.model.refusal(answer.request_id, CLIENT_CODES[answer.code])
            elif isinstance(answer, wire.SubscribeOk):
                self.model.success(answer.request_id, answer.epoch, answer.offset, answer.policy.kind)
            else:
                self.model.success(answer.request_id)
        note(f"router answers {answer}")
        self.hub.router_message(answer)
        self.check_actions()

    def router_answers_all(self) -> None:
        """The router accepts every request, and those the hub sends in turn: a hub that keeps
        asking (a catch-up that never ends) fails here instead of looping."""
        for _ in range(ANSWERS_IN_A_ROW):
            if not self.inbox:
                return
            self.router_answers(accept=True)
        raise AssertionError(f"still asking after {ANSWERS_IN_A_ROW} answers in a row: {self.inbox}")

    def answer(self, request: Any, accept: bool, refusal: int, kind: PolicyKind) -> Any:
        if not accept:
            codes = REFUSALS[type(request)]
            code = codes[refusal % len(codes)]
            return wire.Error(
                request_id=request.request_id, code=code, message="no", client_id=request.client_id
            )
        match request:
            case wire.RegisterClient():
                return wire.Registered(request_id=request.request_id, client_id=request.client_id, user="u")
            case wire.Subscribe():
                epoch, offset = self.model.positions[request.topic]
                return msgspec.structs.replace(
                    ok_for(request, epoch, offset), policy=DeliveryPolicy(kind=kind)
                )
        return wire.Unsubscribed(
            request_id=request.request_id, client_id=request.client_id, topic=request.topic
        )

    def recovered(self, request: wire.Recover, accept: bool, cut: int) -> wire.Recovered | wire.Error:
        history = self.model.history.get((request.topic, request.epoch))
        if not accept or history is None:
            event("recover refused")
            return wire.Error(request_id=request.request_id, code="history_exceeded", message="gone")
        last = request.to_offset if request.to_offset is not None else max(history)
        offsets = [offset for offset in range(request.from_offset + 1, last + 1) if offset in history]
        more = 0 < cut < len(offsets)
        if more:
            offsets = offsets[:cut]
        event(f"recovered {'a part' if more else 'all'}")
        for offset in offsets:
            self.refilled.add(int.from_bytes(history[offset][:4], "big"))
        messages = [(offset, b"", history[offset]) for offset in offsets]
        return wire.Recovered(
            request_id=request.request_id,
            topic=request.topic,
            epoch=request.epoch,
            messages=messages,
            more=more,
        )

    @rule(
        topic=st.sampled_from(TOPICS),
        kind=st.sampled_from(get_args(PolicyKind)),
        priority=st.integers(-1, 1),
        queue_max_messages=st.integers(1, 4),
    )
    def router_changes_policy(
        self, topic: str, kind: PolicyKind, priority: int, queue_max_messages: int
    ) -> None:
        """A ``policy`` message: the subscribers' lanes change at once, and nothing is lost silently
        (the invariants count every message)."""
        policy = DeliveryPolicy(kind=kind, priority=priority, queue_max_messages=queue_max_messages)
        note(f"router sets {topic} to {policy}")
        self.model.policy_changed(topic, kind)
        self.hub.router_message(wire.PolicyUpdate(topic=topic, policy=policy))
        if self.model.held(topic):
            assert self.hub.policy_of(topic) == policy
        self.check_actions()

    def router_drops(self, client: Client) -> None:
        note(f"the router drops {client.client_id}")
        self.model.router_drops(client)
        self.hub.router_message(wire.DropClient(client_id=client.client_id, reason="dropped"))
        self.check_actions()

    def router_restarts(self) -> None:
        note("router restarts")
        self.inbox.clear()
        wanted = self.model.router_restarts()
        messages = self.hub.resync()
        assert [message_signature(message) for message in messages] == wanted
        for message in messages:
            self.router_gets(message)
        self.check_actions()

    # ------------------------------------------------------------ data

    @rule(topic=st.sampled_from([*TOPICS, "/other"]), size=st.integers(0, 40), repeat=st.booleans())
    def data_arrives(self, topic: str, size: int, repeat: bool) -> None:
        """A message, or one at the offset of the last (a router never repeats one of a
        ``reliable`` topic, whose history must be unambiguous)."""
        repeat = repeat and self.model.kinds.get(topic) != "reliable"
        serial = next(self.numbers)
        payload = serial.to_bytes(4, "big") + b"." * size
        epoch, offset, recipients = self.model.publish(topic, serial, payload, repeat)
        self.payloads[serial] = (topic, offset, payload)
        count = self.hub.deliver(topic.encode(), epoch, offset, payload)
        note(f"deliver {topic}@{epoch}:{offset} (serial {serial}) to {count}")
        assert count == len(recipients)
        for session in self.hub.sessions_with_output():
            self.readers[session.client_id].flagged = True
        self.check_actions()

    @precondition(lambda self: self.model.clients)
    @rule(data=st.data(), answered=st.booleans())
    def client_reads(self, data: st.DataObject, answered: bool) -> None:
        """A client reads all it has; when ``answered``, the router then accepts all it was asked,
        the ``recover`` requests the read let the hub send included."""
        self.read(self.pick(data))
        if answered:
            self.router_answers_all()

    def read(self, client: Client) -> None:
        session, reader = self.sessions[client.client_id], self.readers[client.client_id]
        items = session.data_to_send()
        out = wire_forms(items)
        note(f"{client.client_id} reads {len(out)} messages")
        texts = [item for item in out if isinstance(item, str)]
        frames = [item for item in out if isinstance(item, bytes)]
        assert out == [*texts, *frames], "control replies go ahead of data"
        self.check_replies(client, reader, [json.loads(text) for text in texts])
        shared = [item for item in items if isinstance(item, Data | Skipped)]
        for index, frame in enumerate(frames):
            if frame_type(frame) == FRAME_SKIPPED:
                self.check_skipped(client, reader, frame, frames[index + 1 :])
            elif frame_type(frame) == FRAME_RESTARTED:
                self.check_restarted(client, reader, frame, frames[index + 1 :])
            else:
                self.check_frame(client, reader, frame, shared[index])
        reader.flagged = False
        self.check_actions()

    def check_skipped(self, client: Client, reader: Reader, frame: bytes, after: list[bytes]) -> None:
        """A skipped frame names a channel the client holds and comes just before a data frame of
        that channel. (Offsets are not compared here: this router repeats offsets and restarts
        epochs; tests/edges/core/test_delivery.py checks the ranges.)"""
        skipped = parse_skipped_frame(frame)
        assert reader.channels[skipped.channel] in client.subs
        assert skipped.skipped > 0
        assert skipped.first <= skipped.last
        assert after, "a skipped frame is followed by a data frame"
        following = parse_data_frame(after[0])
        assert (following.kind, following.channel) == (1, skipped.channel)
        if self.recovery and SkipReason.BEHIND in skipped.reasons:
            sub = client.subs[reader.channels[skipped.channel]]
            assert sub.may_skip, "a reliable client skipped what the router's history could refill"
        for reason in skipped.reasons:
            event(f"skipped frame: {reason.name}")

    def check_restarted(self, client: Client, reader: Reader, frame: bytes, after: list[bytes]) -> None:
        """A restarted frame names a channel the client holds, and comes just before that
        channel's next data frame (or the skipped frame before it)."""
        channel, epoch = parse_restarted_frame(frame)
        assert reader.channels[channel] in client.subs
        assert epoch > 0
        following = [item for item in after if frame_type(item) != FRAME_SKIPPED][:1]
        assert following, "a restarted frame is followed by a data frame"
        assert parse_data_frame(following[0]).channel == channel
        event("restarted frame")

    def check_replies(self, client: Client, reader: Reader, got: list[dict[str, Any]]) -> None:
        assert len(got) == len(client.replies), (got, client.replies)
        for actual, wanted in zip(got, client.replies, strict=True):
            for key, value in wanted.items():
                assert actual[key] in value if isinstance(value, set) else actual[key] == value, (
                    actual,
                    wanted,
                )
            topic: str | None = actual.get("topic")
            if actual["op"] == "subscribed":
                assert topic is not None
                reader.channels = {ch: t for ch, t in reader.channels.items() if t != topic}
                reader.channels[actual["channel"]] = topic
            elif actual["op"] in ("unsubscribed", "error") and topic is not None:
                reader.channels = {ch: t for ch, t in reader.channels.items() if t != topic}
        client.replies = []

    def check_frame(self, client: Client, reader: Reader, frame: bytes, item: Data | Skipped) -> None:
        kind, flags, channel, offset, payload = parse_data_frame(frame)
        assert (kind, flags) == (1, 0)
        serial = int.from_bytes(payload[:4], "big")
        topic = reader.channels[channel]
        assert (topic, offset, payload) == self.payloads[serial]
        sub = client.subs.get(topic)
        assert sub is not None, "no data after the client left the topic"
        assert sub.position is not None, "no data before subscribed"
        assert serial > sub.since, "only data of the current subscription"
        assert isinstance(item, Data)
        shared = self.frames.setdefault(serial, item)
        assert shared.frame() == frame
        if shared is not item:
            assert serial in self.refilled, "one frame object for every client, refills aside"
            event("a refilled frame")
        assert serial in client.pushed, "only messages handed to this client"
        assert serial > reader.last_seen.get(topic, 0), "order kept within a topic"
        reader.last_seen[topic] = serial
        reader.received += 1

    # ------------------------------------------------------------ invariants

    @invariant()
    def hub_agrees_with_the_model(self) -> None:
        model = self.model
        held = {topic for client in model.clients.values() for topic in client.subs}
        assert held == model.watched
        stats = self.hub.stats()
        assert (stats.delivered, stats.bad_client_messages) == (model.delivered, model.bad)
        assert stats.unexpected_data == model.unexpected_data
        slack = model.unexpected_replies + model.unexpected_slack
        assert model.unexpected_replies <= stats.unexpected_replies <= slack

    @invariant()
    def confirmed_topics_have_distinct_channels(self) -> None:
        for client in self.model.clients.values():
            reader = self.readers[client.client_id]
            confirmed = [
                t
                for t, sub in client.subs.items()
                if sub.position is not None and t in reader.channels.values()
            ]
            assert len(set(confirmed)) == len(confirmed)

    @invariant()
    def every_message_is_accounted_for(self) -> None:
        for client in self.model.clients.values():
            session, reader = self.sessions[client.client_id], self.readers[client.client_id]
            assert session.state is SESSION_STATES[client.state]
            assert session.queued_messages <= LIMITS.queue_max_messages
            assert session.queued_bytes <= LIMITS.queue_max_bytes
            owed = session.queued_messages + session.pending_messages
            assert len(client.pushed) == reader.received + session.dropped.total() + owed
            assert reader.flagged or not session.has_output, "a session with output was announced"
            for reason in session.dropped:
                event(f"dropped: {reason}")


class EdgeMachineWithoutRecovery(EdgeMachine):
    """The same, with a hub that never asks the router's history: a ``reliable`` client that fell
    behind gets a skipped frame once its queue is drained."""

    recovery = False


MACHINE_SETTINGS = settings(
    max_examples=scaled_examples(300),
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
EdgeMachine.TestCase.settings = MACHINE_SETTINGS
EdgeMachineWithoutRecovery.TestCase.settings = MACHINE_SETTINGS
TestEdgeMachine = EdgeMachine.TestCase
TestEdgeMachineWithoutRecovery = EdgeMachineWithoutRecovery.TestCase
