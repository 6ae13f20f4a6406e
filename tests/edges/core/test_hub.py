"""EdgeHub (edges/core/hub.py): client ops, router replies, fan-out, resync; then a state machine.

The machine plays every client and the router at once. Its model is deliberately flat: per client,
a lifecycle state, a dict of subscriptions and the list of messages pushed to it; per topic, the
router's position. After every step the hub must agree with it.
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
    FRAME_SKIPPED,
    CloseCode,
    Connect,
    SkipReason,
    encode_data_frame,
    frame_type,
    parse_data_frame,
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
from tests.edges.output import wire_forms
from tests.strategies import scaled_examples

RELIABLE = DeliveryPolicy(kind="reliable")
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
    a :class:`~edges.core.client_wire.SkippedFrame` for skipped frames."""
    out: list[Any] = []
    for item in wire_forms(session.data_to_send()):
        if isinstance(item, str):
            out.append(json.loads(item))
        elif frame_type(item) == FRAME_SKIPPED:
            out.append(parse_skipped_frame(item))
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
    return wire.SubscribeOk(
        request_id=request.request_id,
        client_id=request.client_id,
        topic=request.topic,
        epoch=epoch,
        offset=offset,
        content_type="text/plain",
        policy=policy,
    )


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


def test_unsubscribe_refused_by_the_router_is_reported() -> None:
    hub = EdgeHub()
    session = connect(hub, "c1")
    subscribe(hub, "c1", "/a")
    session.data_to_send()
    hub.client_text("c1", '{"op":"unsubscribe","id":2,"topic":"/a"}')
    [request] = to_router(hub.drain_actions())
    hub.router_message(error_for(request, "unknown_client"))
    assert parsed(session) == [{"op": "error", "id": 2, "code": "internal", "message": "refused"}]


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
    assert [offset for _, offset, _ in parsed(session)] == [1, 11]


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


# ---------------------------------------------------------------- the state machine

MACHINE_LIMITS = EdgeLimits(
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


@dataclass
class Sub:
    client_request: int
    position: tuple[int, int] | None = None
    """(epoch, offset) announced in ``subscribed``; None while the client waits for it."""
    since: int = 0
    """The last serial delivered before the subscription was confirmed."""


@dataclass
class Client:
    session: ClientSession
    state: str = "new"
    known: bool = False
    subs: dict[str, Sub] = field(default_factory=dict)
    replies: list[dict[str, Any]] = field(default_factory=list)
    """Control messages expected in the next drain, as fields to match (a set: any of)."""
    pushed: list[int] = field(default_factory=list)
    """Serials of the messages handed to this client, in order."""
    last_seen: dict[str, int] = field(default_factory=dict)
    """The serial of the last frame received, per topic."""
    received: int = 0
    channels: dict[int, str] = field(default_factory=dict)
    """What the client learned from ``subscribed``: channel -> topic."""
    flagged: bool = False


@dataclass
class Request:
    kind: str
    client_id: str
    topic: str = ""
    client_request: int | None = None
    silent: bool = False


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
    raise AssertionError(message)


class EdgeMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.hub = EdgeHub(MACHINE_LIMITS, recovery=False)
        self.clients: dict[str, Client] = {}
        self.requests: dict[int, Request] = {}
        self.inbox: deque[wire.EdgeMessage] = deque()
        self.positions = {topic: (1, 0) for topic in [*TOPICS, "/other"]}
        self.payloads: dict[int, tuple[str, int, bytes]] = {}
        self.frames: dict[int, object] = {}
        self.shared_seen: set[int] = set()
        self.last_serial = 0
        self.watched: set[str] = set()
        self.expected: list[tuple[object, ...]] = []
        self.unsubscribe_request = 0
        self.numbers = iter(range(1, 10**9))
        self.delivered = self.bad = self.unexpected_data = self.unexpected_replies = 0

    # ------------------------------------------------------------ model helpers

    def expect(self, *action: object) -> None:
        self.expected.append(action)

    def reply(self, client: Client, **fields: Any) -> None:
        client.replies.append(fields)
        if len(client.replies) > MACHINE_LIMITS.max_pending_replies and client.state != "closing":
            event("closed for unread replies")
            self.edge_closes(client, CloseCode.POLICY_VIOLATION)

    def edge_closes(self, client: Client, code: int) -> None:
        client.state = "closing"
        client.replies.append({"op": "closing", "code": code})
        self.forget(client)
        self.expect("close", client.session.client_id, code)

    def forget(self, client: Client) -> None:
        for topic in list(client.subs):
            self.leave(client, topic)
        client_id = client.session.client_id
        self.requests = {rid: r for rid, r in self.requests.items() if r.client_id != client_id}
        if client.known:
            client.known = False
            self.expect("unregister", client_id)

    def held(self, topic: str) -> bool:
        return any(topic in client.subs for client in self.clients.values())

    def join(self, client: Client, topic: str, client_request: int) -> None:
        if not self.held(topic):
            self.expect("watch", topic)
        client.subs[topic] = Sub(client_request)
        self.expect("subscribe", client.session.client_id, topic)

    def leave(self, client: Client, topic: str) -> None:
        del client.subs[topic]
        if not self.held(topic):
            self.expect("unwatch", topic)

    def router_gets(self, message: wire.EdgeMessage) -> None:
        """Record a request the router will answer, as the hub should see it."""
        match message:
            case wire.RegisterClient():
                silent = self.clients[message.client_id].state == "ready"
                self.requests[message.request_id] = Request("register", message.client_id, silent=silent)
            case wire.Subscribe():
                sub = self.clients[message.client_id].subs[message.topic]
                silent = sub.position is not None
                self.requests[message.request_id] = Request(
                    "subscribe", message.client_id, message.topic, silent=silent
                )
            case wire.Unsubscribe():
                request = Request("unsubscribe", message.client_id, message.topic, self.unsubscribe_request)
                self.requests[message.request_id] = request
            case _:
                return
        self.inbox.append(message)

    def check_actions(self) -> None:
        actions = self.hub.drain_actions()
        note(f"actions: {[signature(action) for action in actions]}")
        for action in actions:
            match action:
                case WatchData(topic):
                    assert topic not in self.watched
                    self.watched.add(topic)
                case UnwatchData(topic):
                    self.watched.remove(topic)
                case ToRouter(message):
                    if isinstance(message, wire.Subscribe):
                        assert message.topic in self.watched, "WatchData comes before Subscribe"
                    self.router_gets(message)
        assert sorted(map(signature, actions), key=repr) == sorted(self.expected, key=repr)
        self.expected = []
        for session in self.hub.sessions_with_output():
            self.clients[session.client_id].flagged = True

    def pick(self, data: st.DataObject) -> Client:
        return self.clients[data.draw(st.sampled_from(sorted(self.clients)), label="client")]

    # ------------------------------------------------------------ clients

    @initialize(warm=st.booleans())
    def two_clients(self, warm: bool) -> None:
        """Two clients; when ``warm``, both connected and subscribed to /a, so runs start deep."""
        self.open_client()
        self.open_client()
        if warm:
            for op, topic in [("connect", ""), ("subscribe", "/a")]:
                for client in list(self.clients.values()):
                    self.send_op(client, op, topic)
                while self.inbox:
                    self.router_answers(accept=True)

    @precondition(lambda self: len(self.clients) < 4)
    @rule()
    def open_client(self) -> None:
        client_id = f"c{next(self.numbers)}"
        self.clients[client_id] = Client(self.hub.open_client(client_id, "test"))
        note(f"open {client_id}")

    @precondition(lambda self: self.clients)
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
        while answered and self.inbox:
            self.router_answers(accept=True)

    def send_op(self, client: Client, op: str, topic: str) -> None:
        request_id = next(self.numbers)
        message: dict[str, object] = {"op": op}
        if op != "connect":
            message["id"] = request_id
        if op in ("subscribe", "unsubscribe"):
            message["topic"] = topic
        note(f"{client.session.client_id} sends {message}")
        self.model_op(client, op, request_id, topic)
        self.hub.client_text(client.session.client_id, json.dumps(message))
        self.check_actions()

    def model_op(self, client: Client, op: str, request_id: int, topic: str) -> None:
        if client.state == "closing":
            return
        if (op == "connect") != (client.state == "new") or (op != "connect" and client.state != "ready"):
            self.bad += 1
            self.reply(client, op="error", id=None if op == "connect" else request_id, code="bad_request")
        elif op == "connect":
            client.state, client.known = "registering", True
            self.expect("register", client.session.client_id)
        elif op == "ping":
            self.reply(client, op="pong", id=request_id)
        elif op == "subscribe":
            self.model_subscribe(client, request_id, topic)
        else:
            self.model_unsubscribe(client, request_id, topic)

    def model_subscribe(self, client: Client, request_id: int, topic: str) -> None:
        if topic == "bad":
            self.reply(client, op="error", id=request_id, code="bad_topic")
        elif topic in client.subs:
            self.reply(client, op="error", id=request_id, code="bad_request")
        elif len(client.subs) >= MACHINE_LIMITS.max_subscriptions:
            self.reply(client, op="error", id=request_id, code="limit_exceeded")
        else:
            self.join(client, topic, request_id)

    def model_unsubscribe(self, client: Client, request_id: int, topic: str) -> None:
        sub = client.subs.get(topic)
        if sub is None:
            self.reply(client, op="error", id=request_id, code="not_subscribed")
        elif sub.position is None:
            self.reply(client, op="error", id=request_id, code="bad_request")
        else:
            self.unsubscribe_request = request_id
            self.expect("unsubscribe", client.session.client_id, topic)
            self.leave(client, topic)

    @precondition(lambda self: self.clients)
    @rule(data=st.data(), garbage=garbage_texts | st.binary(max_size=8))
    def client_sends_garbage(self, data: st.DataObject, garbage: str | bytes) -> None:
        client = self.pick(data)
        if client.state != "closing":
            self.bad += 1
            self.reply(client, op="error", code={"bad_request", "too_large"})
        if isinstance(garbage, bytes):
            self.hub.client_binary(client.session.client_id, garbage)
        else:
            self.hub.client_text(client.session.client_id, garbage)
        self.check_actions()

    @precondition(lambda self: self.clients)
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
        client_id = client.session.client_id
        note(f"{client_id} closed")
        if client.state != "closing":
            self.forget(client)
        del self.clients[client_id]
        self.hub.client_closed(client_id)
        self.check_actions()
        assert client.session.state is State.CLOSED
        assert len(client.pushed) == client.received + client.session.dropped.total()

    def edge_shuts(self, client: Client) -> None:
        if client.state != "closing":
            self.edge_closes(client, CloseCode.GOING_AWAY)
        self.hub.close_client(client.session.client_id, CloseCode.GOING_AWAY, "bye")
        self.check_actions()

    # ------------------------------------------------------------ the router

    @precondition(lambda self: self.inbox)
    @rule(
        accept=st.sampled_from([True, True, True, False]),
        refusal=st.integers(0, 1),
        kind=st.sampled_from(get_args(PolicyKind)),
    )
    def router_answers(self, accept: bool, refusal: int = 0, kind: PolicyKind = "reliable") -> None:
        request = self.inbox.popleft()
        answer = self.answer(request, accept, refusal, kind)
        note(f"router answers {answer}")
        record = self.requests.pop(answer.request_id, None)
        if record is None:
            self.unexpected_replies += 1
        elif isinstance(answer, wire.Error):
            self.model_refusal(record, CLIENT_CODES[answer.code])
        else:
            self.model_success(record, answer)
        self.hub.router_message(answer)
        self.check_actions()

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
                epoch, offset = self.positions[request.topic]
                return msgspec.structs.replace(
                    ok_for(request, epoch, offset), policy=DeliveryPolicy(kind=kind)
                )
        return wire.Unsubscribed(
            request_id=request.request_id, client_id=request.client_id, topic=request.topic
        )

    def model_success(self, record: Request, answer: Any) -> None:
        client = self.clients[record.client_id]
        if record.kind == "register":
            if not record.silent:
                client.state = "ready"
                self.reply(client, op="connected", client_id=record.client_id, user="u")
        elif record.kind == "unsubscribe":
            self.reply(client, op="unsubscribed", id=record.client_request, topic=record.topic)
        else:
            sub = client.subs.get(record.topic)
            if sub is None or (record.silent and sub.position is None):
                return
            if sub.position is None:
                sub.since = self.last_serial
            sub.position = (answer.epoch, answer.offset)
            if not record.silent:
                fields = {"epoch": answer.epoch, "offset": answer.offset, "policy": answer.policy.kind}
                self.reply(client, op="subscribed", id=sub.client_request, topic=record.topic, **fields)

    def model_refusal(self, record: Request, code: str) -> None:
        client = self.clients[record.client_id]
        if record.kind == "register":
            event(f"register refused (silent={record.silent})")
            client.known = False
            self.reply(client, op="error", id=None, code=code)
            if client.state != "closing":
                self.edge_closes(client, CloseCode.REFUSED)
        elif record.kind == "unsubscribe":
            self.reply(client, op="error", id=record.client_request, code=code)
        else:
            sub = client.subs.get(record.topic)
            if sub is None or (record.silent and sub.position is None):
                return
            self.leave(client, record.topic)
            if record.silent:
                event("a subscription was lost after a router restart")
                self.reply(client, op="error", id=None, code=code, topic=record.topic)
            else:
                self.reply(client, op="error", id=sub.client_request, code=code)

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
        self.hub.router_message(wire.PolicyUpdate(topic=topic, policy=policy))
        if self.held(topic):
            assert self.hub.policy_of(topic) == policy
        self.check_actions()

    def router_drops(self, client: Client) -> None:
        if client.state == "closing":
            self.unexpected_replies += 1
        else:
            client.known = False
            self.edge_closes(client, CloseCode.DROPPED)
        self.hub.router_message(wire.DropClient(client_id=client.session.client_id, reason="dropped"))
        self.check_actions()

    def router_restarts(self) -> None:
        note("router restarts")
        self.inbox.clear()
        self.positions = {topic: (epoch + 1, 0) for topic, (epoch, _) in self.positions.items()}
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
        messages = self.hub.resync()
        assert [message_signature(message) for message in messages] == wanted
        for message in messages:
            self.router_gets(message)
        self.check_actions()

    # ------------------------------------------------------------ data

    @rule(topic=st.sampled_from([*TOPICS, "/other"]), size=st.integers(0, 40), repeat=st.booleans())
    def data_arrives(self, topic: str, size: int, repeat: bool) -> None:
        epoch, offset = self.positions[topic]
        if not repeat or offset == 0:
            offset += 1
            self.positions[topic] = (epoch, offset)
        serial = self.last_serial = next(self.numbers)
        payload = serial.to_bytes(4, "big") + b"." * size
        self.payloads[serial] = (topic, offset, payload)
        recipients = [
            client for client in self.clients.values() if self.receives(client, topic, epoch, offset)
        ]
        count = self.hub.deliver(topic.encode(), epoch, offset, payload)
        note(f"deliver {topic}@{epoch}:{offset} (serial {serial}) to {count}")
        assert count == len(recipients)
        if sum(self.receives(c, topic, epoch, offset + 1) for c in self.clients.values()) > count:
            event("a subscriber skipped a message it was not owed")
        self.delivered += count
        if not self.held(topic):
            self.unexpected_data += 1
        for client in recipients:
            client.pushed.append(serial)
        for session in self.hub.sessions_with_output():
            self.clients[session.client_id].flagged = True

    @staticmethod
    def receives(client: Client, topic: str, epoch: int, offset: int) -> bool:
        sub = client.subs.get(topic)
        if client.state != "ready" or sub is None or sub.position is None:
            return False
        return epoch != sub.position[0] or offset > sub.position[1]

    @precondition(lambda self: self.clients)
    @rule(data=st.data())
    def client_reads(self, data: st.DataObject) -> None:
        client = self.pick(data)
        items = client.session.data_to_send()
        out = wire_forms(items)
        texts = [item for item in out if isinstance(item, str)]
        frames = [item for item in out if isinstance(item, bytes)]
        assert out == [*texts, *frames], "control replies go ahead of data"
        self.check_replies(client, [json.loads(text) for text in texts])
        shared = [item for item in items if isinstance(item, Data | Skipped)]
        for index, frame in enumerate(frames):
            if frame_type(frame) == FRAME_SKIPPED:
                self.check_skipped(client, frame, frames[index + 1 :])
            else:
                self.check_frame(client, frame, shared[index])
        client.flagged = False

    def check_skipped(self, client: Client, frame: bytes, after: list[bytes]) -> None:
        """A skipped frame names a channel the client holds and comes just before a data frame of
        that channel. (Offsets are not compared here: this router repeats offsets and restarts
        epochs; tests/edges/core/test_delivery.py checks the ranges.)"""
        skipped = parse_skipped_frame(frame)
        assert client.channels[skipped.channel] in client.subs
        assert skipped.skipped > 0
        assert skipped.first <= skipped.last
        assert after, "a skipped frame is followed by a data frame"
        following = parse_data_frame(after[0])
        assert (following.kind, following.channel) == (1, skipped.channel)
        for reason in skipped.reasons:
            event(f"skipped frame: {reason.name}")

    def check_replies(self, client: Client, got: list[dict[str, Any]]) -> None:
        assert len(got) == len(client.replies), (got, client.replies)
        last_subscribed = {
            reply.get("topic"): index for index, reply in enumerate(got) if reply["op"] == "subscribed"
        }
        for index, (actual, wanted) in enumerate(zip(got, client.replies, strict=True)):
            for key, value in wanted.items():
                assert actual[key] in value if isinstance(value, set) else actual[key] == value, (
                    actual,
                    wanted,
                )
            topic: str | None = actual.get("topic")
            if actual["op"] == "subscribed":
                assert topic is not None
                sub = client.subs.get(topic)
                if last_subscribed[topic] == index and sub is not None and sub.position is not None:
                    pass
                client.channels = {ch: t for ch, t in client.channels.items() if t != topic}
                client.channels[actual["channel"]] = topic
            elif actual["op"] in ("unsubscribed", "error") and topic is not None:
                client.channels = {ch: t for ch, t in client.channels.items() if t != topic}
        client.replies = []

    def check_frame(self, client: Client, frame: bytes, item: object) -> None:
        kind, flags, channel, offset, payload = parse_data_frame(frame)
        assert (kind, flags) == (1, 0)
        serial = int.from_bytes(payload[:4], "big")
        topic = client.channels[channel]
        assert (topic, offset, payload) == self.payloads[serial]
        sub = client.subs.get(topic)
        assert sub is not None, "no data after the client left the topic"
        assert sub.position is not None, "no data before subscribed"
        assert serial > sub.since, "only data of the current subscription"
        if self.frames.setdefault(serial, item) is not item:
            raise AssertionError("one frame object for every client")
        if serial in self.shared_seen:
            event("a frame reached a second client")
        self.shared_seen.add(serial)
        assert serial in client.pushed, "only messages handed to this client"
        assert serial > client.last_seen.get(topic, 0), "order kept within a topic"
        client.last_seen[topic] = serial
        client.received += 1

    # ------------------------------------------------------------ invariants

    @invariant()
    def hub_agrees_with_the_model(self) -> None:
        held = {topic for client in self.clients.values() for topic in client.subs}
        assert held == self.watched
        stats = self.hub.stats()
        assert (stats.delivered, stats.bad_client_messages) == (self.delivered, self.bad)
        assert (stats.unexpected_data, stats.unexpected_replies) == (
            self.unexpected_data,
            self.unexpected_replies,
        )

    @invariant()
    def every_client_is_accounted_for(self) -> None:
        for client in self.clients.values():
            session = client.session
            assert session.state is SESSION_STATES[client.state]
            assert session.queued_messages <= MACHINE_LIMITS.queue_max_messages
            assert session.queued_bytes <= MACHINE_LIMITS.queue_max_bytes
            owed = session.queued_messages + session.pending_messages
            assert len(client.pushed) == client.received + session.dropped.total() + owed
            assert client.flagged or not session.has_output, "a session with output was announced"
            for reason in session.dropped:
                event(f"dropped: {reason}")


EdgeMachine.TestCase.settings = settings(
    max_examples=scaled_examples(300),
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestEdgeMachine = EdgeMachine.TestCase
