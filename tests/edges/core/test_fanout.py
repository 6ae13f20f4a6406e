"""Fan-out through the hub (edges/core/fanout.py): each topic's policy in every subscriber's lane, one
frame object shared by all, rate limits released by ``tick``, slow clients closed."""

from __future__ import annotations

import json

from edges.core.client_wire import (
    CloseCode,
    SkipReason,
    encode_data_frame,
    encode_skipped_frame,
)
from edges.core.hub import CloseClient, UnwatchData
from router import wire
from router.core.policy import DeliveryPolicy
from tests.edges.core.hub_clients import frames_of, hub_client, view
from tests.edges.output import wire_forms

CONFLATED, RATE_LIMITED, QUEUE_FULL, BEHIND = (
    SkipReason.CONFLATED,
    SkipReason.RATE_LIMITED,
    SkipReason.QUEUE_FULL,
    SkipReason.BEHIND,
)


def test_hub_applies_the_topic_policy_and_shares_frames() -> None:
    hub, (first, second) = hub_client(DeliveryPolicy(kind="latest"), count=2)
    for offset in (1, 2, 3):
        assert hub.deliver(b"/t", 5, offset, b"x") == 2
    out_first, out_second = first.data_to_send(), second.data_to_send()
    assert view(out_first) == [("skip", CONFLATED, 0, 1, 2, 2), ("data", 0, 3)]
    assert out_first[1] is out_second[1], "one frame object for every client"
    assert hub.stats().dropped == {"conflated": 4}


def test_hub_policy_update_reaches_existing_lanes() -> None:
    hub, (session,) = hub_client(DeliveryPolicy())
    hub.router_message(wire.PolicyUpdate(topic="/t", policy=DeliveryPolicy(kind="latest")))
    for offset in (1, 2):
        hub.deliver(b"/t", 5, offset, b"x")
    assert frames_of(session) == [("skip", CONFLATED, 0, 1, 1, 1), ("data", 0, 2)]


def test_hub_closes_a_too_slow_client_with_4003() -> None:
    hub, (slow, other) = hub_client(DeliveryPolicy(queue_max_messages=1, slow_client="disconnect"), count=2)
    hub.deliver(b"/t", 5, 1, b"x")
    other.data_to_send()
    assert hub.deliver(b"/t", 5, 2, b"x") == 2
    actions = hub.drain_actions()
    assert actions[-1] == CloseClient("c0", CloseCode.TOO_SLOW, "too slow")
    closing = {"op": "closing", "code": 4003, "reason": "too slow"}
    assert json.loads(wire_forms(slow.data_to_send())[-1]) == closing
    assert frames_of(other) == [("data", 0, 2)], "the others go on"
    assert hub.stats().dropped == {"too_slow": 1, "closed": 1}


def test_hub_tick_releases_rate_limited_latest_frames() -> None:
    hub, (session,) = hub_client(DeliveryPolicy(kind="latest", max_rate=1.0))
    assert hub.tick(0.0) is None, "nothing held: nothing to do"
    hub.deliver(b"/t", 5, 1, b"x", now=10.0)
    assert frames_of(session) == [("data", 0, 1)]
    hub.deliver(b"/t", 5, 2, b"x", now=10.25)
    hub.deliver(b"/t", 5, 3, b"x")
    hub.sessions_with_output()
    assert frames_of(session) == [], "held for a token"
    assert hub.tick(10.5) == 11.0
    assert hub.sessions_with_output() == []
    assert hub.tick(11.0) is None
    assert hub.sessions_with_output() == [session]
    assert frames_of(session) == [("skip", CONFLATED, 0, 2, 2, 1), ("data", 0, 3)]


def test_hub_without_a_clock_applies_no_rate_limit() -> None:
    hub, (session,) = hub_client(DeliveryPolicy(max_rate=1.0))
    for offset in (1, 2, 3):
        hub.deliver(b"/t", 5, offset, b"x")
    assert len(frames_of(session)) == 3


def test_hub_frames_skipped_frames_like_data_frames() -> None:
    def framing(size: int) -> bytes:
        return b"<%d>" % size

    hub, (session,) = hub_client(DeliveryPolicy(kind="latest"), framing=framing)
    hub.deliver(b"/t", 5, 1, b"a")
    hub.deliver(b"/t", 5, 2, b"b")
    skipped, data = wire_forms(session.data_to_send())
    assert skipped == b"<26>" + encode_skipped_frame(0, CONFLATED, 1, 1, 1)
    assert data == b"<15>" + encode_data_frame(0, 2, b"b")


def test_hub_unsubscribe_forgets_held_and_behind_lanes() -> None:
    hub, (session,) = hub_client(DeliveryPolicy(kind="latest", max_rate=1.0))
    hub.deliver(b"/t", 5, 1, b"x", now=0.0)
    session.data_to_send()
    hub.deliver(b"/t", 5, 2, b"x", now=0.0)
    assert hub.tick(0.5) == 1.0
    hub.client_text("c0", '{"op":"unsubscribe","id":2,"topic":"/t"}')
    actions = hub.drain_actions()
    assert UnwatchData("/t") in actions
    assert hub.tick(5.0) is None
    assert session.dropped == {"unsubscribed": 1}
