"""Delivery policies in a client's queue (edges/core/delivery.py) and through the hub (edges/core/hub.py).

First examples, one behaviour each; then properties: fair sharing, the token bucket; then a state
machine that drives one client's :class:`DeliveryQueue` with random policies, pushes, ticks, drains,
policy changes and refills, and checks it against a client's view: what came out, and how each gap
is explained.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, get_args

import pytest
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from edges.core.client_wire import (
    FRAME_SKIPPED,
    SKIPPED_FRAME,
    CloseCode,
    SkipReason,
    encode_data_frame,
    encode_skipped_frame,
    frame_type,
    parse_data_frame,
    parse_skipped_frame,
)
from edges.core.delivery import QUANTUM, DeliveryQueue, Lane, Skip
from edges.core.drops import DropReason
from edges.core.hub import CloseClient, EdgeHub, ToRouter, UnwatchData
from edges.core.output import ClientOutput, Data, Framing, Reply, Skipped, data_frame
from edges.core.session import ClientSession, EdgeLimits
from router import wire
from router.core.errors import RecoveryStatus
from router.core.policy import DeliveryPolicy, PolicyKind, SlowClientAction
from tests.edges.output import wire_forms
from tests.strategies import scaled_examples

CONFLATED, RATE_LIMITED, QUEUE_FULL, BEHIND = (
    SkipReason.CONFLATED,
    SkipReason.RATE_LIMITED,
    SkipReason.QUEUE_FULL,
    SkipReason.BEHIND,
)


# ---------------------------------------------------------------- helpers


def frame(channel: int, offset: int, size: int = 0) -> Data:
    return data_frame(channel, offset, b"p" * size)


def view(out: list[ClientOutput]) -> list[tuple[object, ...]]:
    """What a client reads: ("data", channel, offset) and ("skip", reasons, channel, first, last, count)."""
    seen: list[tuple[object, ...]] = []
    for item in wire_forms(out):
        assert isinstance(item, bytes)
        if frame_type(item) == FRAME_SKIPPED:
            skipped = parse_skipped_frame(item)
            seen.append(
                ("skip", skipped.reasons, skipped.channel, skipped.first, skipped.last, skipped.skipped)
            )
        else:
            data = parse_data_frame(item)
            seen.append(("data", data.channel, data.offset))
    return seen


def drained(queue: DeliveryQueue, limit: int | None = None) -> list[tuple[object, ...]]:
    out: list[ClientOutput] = []
    queue.drain(out, limit)
    return view(out)


def one_lane(policy: DeliveryPolicy, max_messages: int = 100, max_bytes: int = 10_000) -> Lane:
    return DeliveryQueue(max_messages, max_bytes).open(1, policy)


def push_all(lane: Lane, offsets: range, size: int = 0, now: float | None = None) -> None:
    for offset in offsets:
        lane.push(offset, frame(lane.channel, offset, size), now)


# ---------------------------------------------------------------- the skipped frame


def test_skipped_frame_bytes() -> None:
    skipped = encode_skipped_frame(3, SkipReason.CONFLATED | SkipReason.RATE_LIMITED, 41, 57, 12)
    assert SKIPPED_FRAME.size == 26
    assert skipped.hex(" ") == (
        "02 03 00 00 00 03 00 00 00 00 00 00 00 29 00 00 00 00 00 00 00 39 00 00 00 0c"
    )
    assert parse_skipped_frame(skipped) == (FRAME_SKIPPED, CONFLATED | RATE_LIMITED, 3, 41, 57, 12)


def test_skipped_frame_count_saturates_and_bad_frames_are_refused() -> None:
    assert parse_skipped_frame(encode_skipped_frame(0, QUEUE_FULL, 1, 2**40, 2**40)).skipped == 2**32 - 1
    with pytest.raises(ValueError, match="26 bytes"):
        parse_skipped_frame(frame(0, 1).frame())
    with pytest.raises(ValueError, match="empty"):
        frame_type(b"")


# ---------------------------------------------------------------- best_effort


def test_drop_oldest_explains_the_gap_before_the_next_frame() -> None:
    lane = one_lane(DeliveryPolicy(queue_max_messages=2))
    push_all(lane, range(1, 6))
    assert drained(lane.queue) == [("skip", QUEUE_FULL, 1, 1, 3, 3), ("data", 1, 4), ("data", 1, 5)]
    assert lane.queue.dropped == {"queue_full": 3}


@pytest.mark.parametrize(("topic_bound", "client_bound"), [(2, 100), (1024, 2)])
def test_drop_newest_keeps_the_queue_and_skips_the_new(topic_bound: int, client_bound: int) -> None:
    policy = DeliveryPolicy(queue_max_messages=topic_bound, slow_client="drop_newest")
    lane = one_lane(policy, max_messages=client_bound)
    push_all(lane, range(1, 6))
    assert drained(lane.queue) == [("data", 1, 1), ("data", 1, 2)]
    push_all(lane, range(6, 7))
    assert drained(lane.queue) == [("skip", QUEUE_FULL, 1, 3, 5, 3), ("data", 1, 6)]


def test_topic_bound_and_client_bound_both_hold() -> None:
    queue = DeliveryQueue(3, 10_000)
    small = queue.open(1, DeliveryPolicy(queue_max_messages=1))
    big = queue.open(2, DeliveryPolicy())
    push_all(small, range(1, 4))
    push_all(big, range(1, 5))
    assert (small.count, big.count, queue.count) == (1, 2, 3)
    assert drained(queue) == [
        ("skip", QUEUE_FULL, 1, 1, 2, 2),
        ("data", 1, 3),
        ("skip", QUEUE_FULL, 2, 1, 2, 2),
        ("data", 2, 3),
        ("data", 2, 4),
    ]


def test_full_client_bound_takes_room_from_lower_priority_best_effort_first() -> None:
    queue = DeliveryQueue(3, 10_000)
    bulk = queue.open(1, DeliveryPolicy(priority=-1))
    state = queue.open(2, DeliveryPolicy(priority=5, kind="reliable"))
    push_all(bulk, range(1, 4))
    push_all(state, range(1, 3))
    assert (bulk.count, state.count) == (1, 2)
    assert drained(queue) == [
        ("data", 2, 1),
        ("data", 2, 2),
        ("skip", QUEUE_FULL, 1, 1, 2, 2),
        ("data", 1, 3),
    ]


def test_nothing_is_dropped_for_a_frame_that_would_not_fit_anyway() -> None:
    queue = DeliveryQueue(3, 10_000)
    bulk = queue.open(1, DeliveryPolicy(priority=-1))
    alerts = queue.open(2, DeliveryPolicy(priority=5, kind="reliable", slow_client="drop_newest"))
    push_all(bulk, range(1, 2))
    push_all(alerts, range(1, 4))
    assert (bulk.count, alerts.count) == (0, 3), "the alert took the bulk frame's room"
    push_all(bulk, range(2, 3))
    alerts.push(4, frame(2, 4))
    assert alerts.behind is not None
    assert (bulk.count, alerts.count) == (0, 3), "bulk 2 was not queued; nothing else was dropped"


def test_shrunk_byte_bound_skips_a_held_frame_too_large_now() -> None:
    lane = one_lane(DeliveryPolicy(kind="latest", max_rate=1.0))
    lane.push(1, frame(1, 1, size=20), 0.0)
    assert drained(lane.queue) == [("data", 1, 1)]
    lane.push(2, frame(1, 2, size=20), 0.0)
    assert lane.held is not None
    lane.set_policy(DeliveryPolicy(kind="latest", queue_max_bytes=20))
    assert lane.held is None
    lane.push(3, frame(1, 3), 1.0)
    assert drained(lane.queue) == [("skip", QUEUE_FULL, 1, 2, 2, 1), ("data", 1, 3)]


def test_a_topic_makes_room_from_its_own_frames_before_an_equal_priority_one() -> None:
    queue = DeliveryQueue(3, 10_000)
    big = queue.open(1, DeliveryPolicy())
    small = queue.open(2, DeliveryPolicy(queue_max_messages=2))
    push_all(big, range(1, 3), size=50)
    push_all(small, range(1, 3))
    assert (big.count, small.count) == (2, 1)
    assert drained(queue) == [
        ("data", 1, 1),
        ("data", 1, 2),
        ("skip", QUEUE_FULL, 2, 1, 1, 1),
        ("data", 2, 2),
    ]


def test_an_equal_priority_topic_does_not_take_room_from_another() -> None:
    queue = DeliveryQueue(2, 10_000)
    first = queue.open(1, DeliveryPolicy())
    second = queue.open(2, DeliveryPolicy(slow_client="drop_newest"))
    push_all(first, range(1, 3))
    push_all(second, range(1, 2))
    assert (first.count, second.count) == (2, 0)
    assert queue.dropped == {"queue_full": 1}


def test_a_dropped_frame_joins_the_skip_after_it() -> None:
    lane = one_lane(DeliveryPolicy(queue_max_messages=2, queue_max_bytes=30))
    lane.push(1, frame(1, 1))
    lane.push(2, frame(1, 2, size=17))
    push_all(lane, range(3, 5))
    assert drained(lane.queue) == [("skip", QUEUE_FULL, 1, 1, 2, 2), ("data", 1, 3), ("data", 1, 4)]


def test_oversize_frame_is_skipped_alone() -> None:
    lane = one_lane(DeliveryPolicy(queue_max_bytes=30))
    lane.push(1, frame(1, 1))
    lane.push(2, frame(1, 2, size=17))
    lane.push(3, frame(1, 3))
    assert drained(lane.queue) == [("data", 1, 1), ("skip", QUEUE_FULL, 1, 2, 2, 1), ("data", 1, 3)]
    assert lane.queue.dropped == {"oversize": 1}


def test_disconnect_marks_the_client_too_slow() -> None:
    lane = one_lane(DeliveryPolicy(queue_max_messages=2, slow_client="disconnect"))
    assert not lane.push(1, frame(1, 1))
    assert not lane.push(2, frame(1, 2))
    assert not lane.queue.too_slow
    assert lane.push(3, frame(1, 3))
    assert lane.queue.too_slow
    assert lane.queue.dropped == {"too_slow": 1}


# ---------------------------------------------------------------- latest


def test_latest_keeps_only_the_newest() -> None:
    lane = one_lane(DeliveryPolicy(kind="latest", queue_max_messages=50))
    push_all(lane, range(1, 5))
    assert lane.count == 1
    assert drained(lane.queue) == [("skip", CONFLATED, 1, 1, 3, 3), ("data", 1, 4)]
    push_all(lane, range(5, 6))
    assert drained(lane.queue) == [("data", 1, 5)]
    assert lane.queue.dropped == {"conflated": 3}


def test_latest_with_max_rate_holds_the_newest_until_a_token_comes() -> None:
    lane = one_lane(DeliveryPolicy(kind="latest", max_rate=2.0))
    for offset, now in enumerate([0.0, 0.125, 0.25, 0.3125, 0.375], start=1):
        held = lane.push(offset, frame(1, offset), now)
        assert held == (offset >= 3), "a burst of 2, then 2 tokens a second"
        assert drained(lane.queue) == ([("data", 1, offset)] if offset <= 2 else [])
    assert lane.held is not None
    assert lane.held[0] == 5
    assert lane.next_release() == 0.5
    assert lane.release(0.4375), "still held"
    assert not lane.release(0.5)
    assert lane.held is None
    assert drained(lane.queue) == [("skip", CONFLATED, 1, 3, 4, 2), ("data", 1, 5)]


def test_a_newer_message_supersedes_the_held_one_even_when_skipped() -> None:
    lane = one_lane(DeliveryPolicy(kind="latest", max_rate=1.0, queue_max_bytes=30))
    lane.push(1, frame(1, 1), 0.0)
    assert drained(lane.queue) == [("data", 1, 1)]
    lane.push(2, frame(1, 2), 0.0)
    lane.push(3, frame(1, 3, size=20), 0.0)
    assert lane.held is None, "3 is newer than 2, and too large to send"
    lane.push(4, frame(1, 4), 1.0)
    assert drained(lane.queue) == [("skip", CONFLATED | QUEUE_FULL, 1, 2, 3, 2), ("data", 1, 4)]


# ---------------------------------------------------------------- max_rate on best_effort


def test_best_effort_rate_limit_skips_the_excess() -> None:
    """4 msg/s and a burst of 4, offered 8 msg/s: the bucket empties, then every other one goes."""
    lane = one_lane(DeliveryPolicy(max_rate=4.0))
    for offset in range(1, 21):
        lane.push(offset, frame(1, offset), now=offset * 0.125)
    out = drained(lane.queue)
    assert [item[2] for item in out if item[0] == "data"] == [1, 2, 3, 4, 5, 6, 7, 9, 11, 13, 15, 17, 19]
    assert out[7:10] == [
        ("skip", RATE_LIMITED, 1, 8, 8, 1),
        ("data", 1, 9),
        ("skip", RATE_LIMITED, 1, 10, 10, 1),
    ]
    assert lane.queue.dropped == {"rate_limited": 7}, "20 waits for the next frame to be explained"


def test_no_time_means_no_rate_limit() -> None:
    lane = one_lane(DeliveryPolicy(max_rate=1.0))
    push_all(lane, range(1, 6), now=None)
    assert lane.count == 5


# ---------------------------------------------------------------- reliable


def test_reliable_never_drops_and_falls_behind() -> None:
    queue = DeliveryQueue(100, 10_000)
    lane = queue.open(1, DeliveryPolicy(kind="reliable", queue_max_messages=2))
    assert not lane.push(1, frame(1, 1))
    assert not lane.push(2, frame(1, 2))
    assert lane.push(3, frame(1, 3)), "fell behind: the caller must look"
    assert not lane.push(4, frame(1, 4))
    assert lane.behind is not None
    assert (lane.behind.first, lane.behind.last, lane.behind.count) == (3, 4, 2)
    assert (lane.count, lane.pending, queue.dropped) == (2, 2, Counter())


def test_reliable_without_recovery_gives_up_once_drained() -> None:
    queue = DeliveryQueue(100, 10_000, recoverable=False)
    lane = queue.open(1, DeliveryPolicy(kind="reliable", queue_max_messages=2))
    push_all(lane, range(1, 6))
    assert drained(queue) == [("data", 1, 1), ("data", 1, 2)]
    assert lane.behind is None
    push_all(lane, range(6, 7))
    assert drained(queue) == [("skip", BEHIND, 1, 3, 5, 3), ("data", 1, 6)]
    assert queue.dropped == {"behind": 3}


def test_reliable_recovery_refills_in_order() -> None:
    queue = DeliveryQueue(100, 10_000, recoverable=True)
    lane = queue.open(1, DeliveryPolicy(kind="reliable", queue_max_messages=2))
    push_all(lane, range(1, 8))
    assert drained(queue) == [("data", 1, 1), ("data", 1, 2)]
    assert lane.behind is not None, "it waits for a refill"
    history = [(offset, frame(1, offset)) for offset in range(1, 9)]
    assert lane.recover(history) == 2, "room for two"
    assert lane.behind is not None
    assert lane.behind.first == 5
    assert drained(queue) == [("data", 1, 3), ("data", 1, 4)]
    assert lane.recover(history) == 2
    assert drained(queue) == [("data", 1, 5), ("data", 1, 6)]
    assert lane.recover(history[6:]) == 1, "8 is not owed yet: it comes live"
    assert lane.behind is None
    push_all(lane, range(8, 9))
    assert drained(queue) == [("data", 1, 7), ("data", 1, 8)]
    assert (queue.dropped, queue.recovered) == (Counter(), 5)


@pytest.mark.parametrize(
    ("reply", "more", "behind_after"),
    [
        ([], False, False),
        ([], True, True),
        ([4], False, False),
        ([3], False, True),
        ([3], True, True),
    ],
)
def test_recovery_replies_that_end_early(reply: list[int], more: bool, behind_after: bool) -> None:
    """A reply that brings nothing, or does not start at the first owed offset, ends the refill."""
    queue = DeliveryQueue(100, 10_000, recoverable=True)
    lane = queue.open(1, DeliveryPolicy(kind="reliable", queue_max_messages=2))
    push_all(lane, range(1, 7))
    drained(queue)
    lane.recover([(offset, frame(1, offset)) for offset in reply], more)
    assert (lane.behind is not None) == behind_after


def test_give_up_turns_what_is_owed_into_a_skip() -> None:
    queue = DeliveryQueue(100, 10_000, recoverable=True)
    lane = queue.open(1, DeliveryPolicy(kind="reliable", queue_max_messages=1))
    push_all(lane, range(1, 5))
    assert drained(queue) == [("data", 1, 1)]
    assert lane.behind is not None, "a refill may come"
    lane.give_up()
    push_all(lane, range(5, 6))
    assert drained(queue) == [("skip", BEHIND, 1, 2, 4, 3), ("data", 1, 5)]


def test_reliable_with_disconnect_closes_instead_of_falling_behind() -> None:
    lane = one_lane(DeliveryPolicy(kind="reliable", queue_max_messages=1, slow_client="disconnect"))
    push_all(lane, range(1, 3))
    assert lane.queue.too_slow
    assert lane.behind is None


def test_reliable_ignores_max_rate() -> None:
    lane = one_lane(DeliveryPolicy(kind="reliable", max_rate=1.0))
    push_all(lane, range(1, 6), now=0.0)
    assert lane.count == 5


# ---------------------------------------------------------------- drain order


def test_higher_priority_first_and_order_kept_within_a_topic() -> None:
    queue = DeliveryQueue(100, 10_000)
    low = queue.open(1, DeliveryPolicy(priority=-1))
    high = queue.open(2, DeliveryPolicy(priority=3))
    low.push(1, frame(1, 1))
    high.push(7, frame(2, 7))
    low.push(2, frame(1, 2))
    high.push(8, frame(2, 8))
    assert drained(queue) == [("data", 2, 7), ("data", 2, 8), ("data", 1, 1), ("data", 1, 2)]


def test_equal_priorities_share_by_quantum() -> None:
    queue = DeliveryQueue(1000, 10**7, quantum=100)
    video = queue.open(1, DeliveryPolicy())
    state = queue.open(2, DeliveryPolicy())
    push_all(video, range(1, 5), size=86)
    push_all(state, range(1, 5), size=36)
    assert [item[1] for item in drained(queue)] == [1, 2, 2, 1, 2, 2, 1, 1]


def test_a_limited_drain_resumes_the_round_where_it_stopped() -> None:
    queue = DeliveryQueue(1000, 10**7, quantum=100)
    lanes = [queue.open(channel, DeliveryPolicy()) for channel in (1, 2)]
    for lane in lanes:
        push_all(lane, range(1, 11), size=36)
    order = []
    for _ in range(20):
        [(_, channel, _)] = drained(queue, limit=50)
        order.append(channel)
    assert order == [1, 1, 2, 2] * 5
    assert drained(queue, limit=0) == []


def test_session_writes_control_replies_first_and_limits_data() -> None:
    session = ClientSession("c1")
    lane = session.open_lane(1, DeliveryPolicy())
    push_all(lane, range(1, 4), size=86)
    session.send_error(None, "bad_request", "no")
    out = session.data_to_send(max_bytes=150)
    assert [type(item) for item in out] == [Reply, Data, Data]
    assert session.queued_messages == 1
    assert view(session.data_to_send()) == [("data", 1, 3)]


# ---------------------------------------------------------------- policy changes


def test_policy_change_applies_at_once() -> None:
    queue = DeliveryQueue(100, 10_000)
    lane = queue.open(1, DeliveryPolicy())
    other = queue.open(2, DeliveryPolicy(priority=1))
    push_all(lane, range(1, 5))
    push_all(other, range(1, 2))
    lane.set_policy(DeliveryPolicy(kind="latest", priority=2))
    assert lane.count == 1
    assert drained(queue) == [("skip", CONFLATED, 1, 1, 3, 3), ("data", 1, 4), ("data", 2, 1)]


def test_smaller_bounds_keep_reliable_frames() -> None:
    lane = one_lane(DeliveryPolicy(kind="reliable"))
    push_all(lane, range(1, 5))
    lane.set_policy(DeliveryPolicy(kind="reliable", queue_max_messages=2))
    assert lane.count == 4
    lane.set_policy(DeliveryPolicy(queue_max_messages=2))
    assert drained(lane.queue) == [("skip", QUEUE_FULL, 1, 1, 2, 2), ("data", 1, 3), ("data", 1, 4)]


def test_lifting_the_rate_limit_releases_the_held_frame() -> None:
    lane = one_lane(DeliveryPolicy(kind="latest", max_rate=1.0))
    push_all(lane, range(1, 3), now=0.0)
    drained(lane.queue)
    push_all(lane, range(3, 4), now=0.0)
    assert lane.held is not None
    lane.set_policy(DeliveryPolicy(kind="latest"))
    assert drained(lane.queue) == [("data", 1, 3)]


# ---------------------------------------------------------------- through the hub


# ---------------------------------------------------------------- a window of frames in flight


def test_latest_with_a_window_sends_the_newest_once_the_client_acknowledges() -> None:
    lane = one_lane(DeliveryPolicy(kind="latest"))
    lane.limit_in_flight(1)
    push_all(lane, range(1, 2))
    assert drained(lane.queue) == [("data", 1, 1)]
    push_all(lane, range(2, 5))
    assert drained(lane.queue) == [], "one frame in flight already"
    assert not lane.ack(0), "an older acknowledgement frees nothing"
    assert lane.ack(1)
    assert drained(lane.queue) == [("skip", CONFLATED, 1, 2, 3, 2), ("data", 1, 4)]
    assert not lane.ack(4), "nothing is queued"
    push_all(lane, range(5, 6))
    assert drained(lane.queue) == [("data", 1, 5)]


def test_a_window_counts_frames_until_each_is_acknowledged() -> None:
    lane = one_lane(DeliveryPolicy())
    lane.limit_in_flight(2)
    push_all(lane, range(1, 6))
    assert drained(lane.queue) == [("data", 1, 1), ("data", 1, 2)]
    assert lane.ack(1)
    assert drained(lane.queue) == [("data", 1, 3)]
    assert lane.ack(3)
    assert drained(lane.queue) == [("data", 1, 4), ("data", 1, 5)]
    assert lane.ready == 0


def test_a_lane_waiting_for_acknowledgements_does_not_hold_up_its_peers() -> None:
    queue = DeliveryQueue(100, 100_000)
    waiting, other = queue.open(1), queue.open(2)
    waiting.limit_in_flight(1)
    for offset in range(1, 4):
        waiting.push(offset, frame(1, offset, 10))
        other.push(offset, frame(2, offset, 10))
    assert drained(queue) == [("data", 1, 1)] + [("data", 2, offset) for offset in (1, 2, 3)]
    assert drained(queue) == []
    waiting.ack(1)
    assert drained(queue) == [("data", 1, 2)]


def router_request(hub: EdgeHub) -> Any:
    """The one message the hub has for the router (typed loosely: each test knows which)."""
    [message] = [action.message for action in hub.drain_actions() if isinstance(action, ToRouter)]
    return message


def hub_client(
    policy: DeliveryPolicy,
    *,
    limits: EdgeLimits | None = None,
    recovery: bool = False,
    count: int = 1,
    framing: Framing | None = None,
) -> tuple[EdgeHub, list[ClientSession]]:
    """A hub whose clients c0, c1... are subscribed to /t (channel 0) at epoch 5, offset 0."""
    hub = EdgeHub(limits, recovery=recovery, framing=framing)
    sessions = []
    for number in range(count):
        client_id = f"c{number}"
        sessions.append(hub.open_client(client_id))
        hub.client_text(client_id, '{"op":"connect"}')
        register = router_request(hub)
        hub.router_message(wire.Registered(request_id=register.request_id, client_id=client_id, user="u"))
        hub.client_text(client_id, json.dumps({"op": "subscribe", "id": 1, "topic": "/t"}))
        request = router_request(hub)
        ok = wire.SubscribeOk(
            request_id=request.request_id,
            client_id=client_id,
            topic="/t",
            epoch=5,
            offset=0,
            content_type="x",
            policy=policy,
        )
        hub.router_message(ok)
        sessions[-1].data_to_send()
    hub.sessions_with_output()
    return hub, sessions


def frames_of(session: ClientSession) -> list[tuple[object, ...]]:
    return view([item for item in session.data_to_send() if isinstance(item, Data | Skipped)])


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


def recover_request(hub: EdgeHub) -> wire.Recover:
    """The one ``recover`` the hub asks the router for now."""
    [action] = hub.drain_actions()
    assert isinstance(action, ToRouter), action
    assert isinstance(action.message, wire.Recover), action
    return action.message


def answer(hub: EdgeHub, request: wire.Recover, history: dict[int, bytes], *, epoch: int = 5) -> None:
    """The router's reply: ``history`` from ``from_offset + 1`` to ``to_offset``."""
    last = request.to_offset if request.to_offset is not None else max(history)
    messages = [(offset, b"", history[offset]) for offset in range(request.from_offset + 1, last + 1)]
    hub.router_message(
        wire.Recovered(request_id=request.request_id, topic=request.topic, epoch=epoch, messages=messages)
    )


def refuse(hub: EdgeHub, request: wire.Recover, code: str = RecoveryStatus.HISTORY_EXCEEDED) -> None:
    hub.router_message(wire.Error(request_id=request.request_id, code=code, message="no"))


def test_hub_catch_up_round_trip() -> None:
    hub, (session,) = hub_client(DeliveryPolicy(kind="reliable", queue_max_messages=2), recovery=True)
    for offset in range(1, 6):
        hub.deliver(b"/t", 5, offset, b"m%d" % offset)
    assert session.pending_messages == 3, "offsets 3 to 5 are owed"
    assert hub.drain_actions() == [], "no catch-up while the queue is still full"
    assert hub.catching_up
    assert frames_of(session) == [("data", 0, 1), ("data", 0, 2)]
    request = recover_request(hub)
    assert (request.topic, request.epoch, request.from_offset, request.to_offset) == ("/t", 5, 2, 5)
    assert hub.drain_actions() == [], "one at a time"
    hub.deliver(b"/t", 5, 6, b"m6")
    hub.sessions_with_output()
    history = {offset: b"m%d" % offset for offset in range(1, 7)}
    answer(hub, request, history)
    assert hub.sessions_with_output() == [session]
    assert frames_of(session) == [("data", 0, 3), ("data", 0, 4)]
    request = recover_request(hub)
    assert (request.from_offset, request.to_offset) == (4, 6)
    answer(hub, request, history)
    assert not hub.catching_up
    assert frames_of(session) == [("data", 0, 5), ("data", 0, 6)]
    hub.deliver(b"/t", 5, 7, b"m7")
    assert frames_of(session) == [("data", 0, 7)]
    assert hub.stats().recovered == 4
    assert hub.stats().dropped == {}


def test_hub_recovery_failed_tells_the_client() -> None:
    hub, (session,) = hub_client(DeliveryPolicy(kind="reliable", queue_max_messages=1), recovery=True)
    for offset in range(1, 4):
        hub.deliver(b"/t", 5, offset, b"x")
    session.data_to_send()
    request = recover_request(hub)
    refuse(hub, request)
    hub.deliver(b"/t", 5, 4, b"x")
    assert frames_of(session) == [("skip", BEHIND, 0, 2, 3, 2), ("data", 0, 4)]
    answer(hub, request, {2: b"x", 3: b"x"})
    assert hub.stats().unexpected_replies == 1, "a second answer to one request"
    assert frames_of(session) == []


def test_hub_asks_again_for_a_lane_that_falls_behind_again() -> None:
    hub, (session,) = hub_client(DeliveryPolicy(kind="reliable", queue_max_messages=1), recovery=True)
    for offset in range(1, 3):
        hub.deliver(b"/t", 5, offset, b"x")
    session.data_to_send()
    first = recover_request(hub)
    assert (first.from_offset, first.to_offset) == (1, 2)
    refuse(hub, first)
    for offset in range(3, 5):
        hub.deliver(b"/t", 5, offset, b"x")
    session.data_to_send()
    second = recover_request(hub)
    assert (second.from_offset, second.to_offset) == (3, 4)
    assert second.request_id != first.request_id


def subscribe_also(hub: EdgeHub, client_id: str, topic: str, policy: DeliveryPolicy) -> None:
    """Subscribe a client of :func:`hub_client` to one more topic, at epoch 5, offset 0."""
    hub.client_text(client_id, json.dumps({"op": "subscribe", "id": 2, "topic": topic}))
    request = router_request(hub)
    fields: dict[str, Any] = {"epoch": 5, "offset": 0, "content_type": "x", "policy": policy}
    hub.router_message(
        wire.SubscribeOk(request_id=request.request_id, client_id=client_id, topic=topic, **fields)
    )


def test_hub_waits_for_room_before_asking_again() -> None:
    """A lane behind with nothing queued, in a client queue that other topics filled: the refill
    finds no room, and the hub asks again only once the client read, not at every drain."""
    limits = EdgeLimits(queue_max_messages=2)
    hub, (session,) = hub_client(RELIABLE, limits=limits, recovery=True)
    subscribe_also(hub, "c0", "/u", RELIABLE)
    session.data_to_send()
    for offset in (1, 2):
        hub.deliver(b"/t", 5, offset, b"t")
    hub.deliver(b"/u", 5, 1, b"u")
    request = recover_request(hub)
    assert (request.topic, request.from_offset, request.to_offset) == ("/u", 0, 1)
    answer(hub, request, {1: b"u"})
    assert hub.stats().recovered == 0, "no room"
    assert hub.drain_actions() == [], "the client's queue is still full"
    assert frames_of(session) == [("data", 0, 1), ("data", 0, 2)]
    request = recover_request(hub)
    assert (request.topic, request.from_offset, request.to_offset) == ("/u", 0, 1)
    answer(hub, request, {1: b"u"})
    assert frames_of(session) == [("data", 1, 1)]
    assert not hub.catching_up


def test_hub_recovery_of_another_epoch_gives_up() -> None:
    hub, (session,) = hub_client(DeliveryPolicy(kind="reliable", queue_max_messages=1), recovery=True)
    for offset in range(1, 4):
        hub.deliver(b"/t", 5, offset, b"x")
    session.data_to_send()
    answer(hub, recover_request(hub), {2: b"x", 3: b"x"}, epoch=6)
    assert not hub.catching_up
    hub.deliver(b"/t", 5, 4, b"x")
    assert frames_of(session) == [("skip", BEHIND, 0, 2, 3, 2), ("data", 0, 4)]


def test_hub_without_recovery_never_asks() -> None:
    hub, (session,) = hub_client(DeliveryPolicy(kind="reliable", queue_max_messages=1))
    for offset in range(1, 4):
        hub.deliver(b"/t", 5, offset, b"x")
    session.data_to_send()
    assert hub.drain_actions() == []
    assert session.pending_messages == 0
    hub.deliver(b"/t", 5, 4, b"x")
    assert frames_of(session) == [("skip", BEHIND, 0, 2, 3, 2), ("data", 0, 4)]


RELIABLE = DeliveryPolicy(kind="reliable")
LATEST = DeliveryPolicy(kind="latest")


def resume_subscribe(
    hub: EdgeHub, client_id: str, position: tuple[int, int] | None, window: int | None = None, **reply: Any
) -> tuple[ClientSession, wire.Subscribe, dict[str, Any]]:
    """Connect ``client_id`` and subscribe it to /t from ``position``; the router answers with
    ``reply`` (epoch 5 and the reliable policy unless given). Returns the session, the router's
    subscribe and the client's ``subscribed``."""
    session = hub.open_client(client_id)
    hub.client_text(client_id, '{"op":"connect"}')
    register = router_request(hub)
    hub.router_message(wire.Registered(request_id=register.request_id, client_id=client_id, user="u"))
    request: dict[str, Any] = {"op": "subscribe", "id": 1, "topic": "/t"}
    if position is not None:
        request["resume"] = {"epoch": position[0], "offset": position[1]}
    if window is not None:
        request["window"] = window
    hub.client_text(client_id, json.dumps(request))
    subscribe = router_request(hub)
    fields: dict[str, Any] = {"epoch": 5, "content_type": "x", "policy": RELIABLE} | reply
    hub.router_message(
        wire.SubscribeOk(request_id=subscribe.request_id, client_id=client_id, topic="/t", **fields)
    )
    replies = [json.loads(item.text) for item in session.data_to_send() if isinstance(item, Reply)]
    return session, subscribe, replies[-1]


def test_hub_resume_replays_what_the_client_missed_then_live_messages() -> None:
    hub = EdgeHub()
    history = {offset: b"m%d" % offset for offset in range(1, 9)}
    ok: dict[str, Any] = {"offset": 7, "resume": "ok", "resume_from": 3, "resume_to": 7}
    session, subscribe, subscribed = resume_subscribe(hub, "c0", (5, 3), **ok)
    assert (subscribe.resume_epoch, subscribe.resume_offset) == (5, 3)
    assert (subscribed["resume"], subscribed["resume_from"]) == ("ok", 3)
    request = recover_request(hub)
    assert (request.epoch, request.from_offset, request.to_offset) == (5, 3, 7)
    hub.deliver(b"/t", 5, 7, b"m7")
    hub.deliver(b"/t", 5, 8, b"m8")
    assert frames_of(session) == [], "live messages wait for the replay"
    answer(hub, request, history)
    assert frames_of(session) == [("data", 0, offset) for offset in range(4, 8)]
    request = recover_request(hub)
    assert (request.from_offset, request.to_offset) == (7, 8)
    answer(hub, request, history)
    hub.deliver(b"/t", 5, 9, b"m9")
    assert frames_of(session) == [("data", 0, 8), ("data", 0, 9)]
    assert hub.stats().dropped == {}


def test_hub_resume_beyond_the_history_replays_what_is_left() -> None:
    hub = EdgeHub()
    ok: dict[str, Any] = {"offset": 7, "resume": "history_exceeded", "resume_from": 5, "resume_to": 7}
    session, _, subscribed = resume_subscribe(hub, "c0", (5, 1), **ok)
    assert (subscribed["resume"], subscribed["resume_from"]) == ("history_exceeded", 5)
    request = recover_request(hub)
    assert (request.from_offset, request.to_offset) == (5, 7)
    answer(hub, request, {6: b"6", 7: b"7"})
    assert frames_of(session) == [("data", 0, 6), ("data", 0, 7)]


@pytest.mark.parametrize("resume", ["epoch_changed", "not_reliable", "none"])
def test_hub_resume_refused_starts_at_the_topic_position(resume: str) -> None:
    hub = EdgeHub()
    policy = RELIABLE if resume != "not_reliable" else DeliveryPolicy()
    session, _, subscribed = resume_subscribe(hub, "c0", (4, 3), offset=7, resume=resume, policy=policy)
    assert subscribed["resume"] == resume
    assert hub.drain_actions() == []
    hub.deliver(b"/t", 5, 8, b"m8")
    assert frames_of(session) == [("data", 0, 8)]


def test_hub_refills_offsets_that_never_reached_the_edge() -> None:
    hub, (session,) = hub_client(RELIABLE, recovery=True)
    for offset in (1, 2, 5):
        hub.deliver(b"/t", 5, offset, b"m%d" % offset)
    assert frames_of(session) == [("data", 0, 1), ("data", 0, 2)]
    request = recover_request(hub)
    assert (request.from_offset, request.to_offset) == (2, 5)
    answer(hub, request, {offset: b"m%d" % offset for offset in range(1, 6)})
    assert frames_of(session) == [("data", 0, offset) for offset in (3, 4, 5)]
    assert hub.stats().gaps == 2


def test_hub_leaves_gaps_of_other_policies_to_the_client() -> None:
    hub, (session,) = hub_client(DeliveryPolicy(), recovery=True)
    for offset in (1, 2, 5):
        hub.deliver(b"/t", 5, offset, b"x")
    assert frames_of(session) == [("data", 0, offset) for offset in (1, 2, 5)]
    assert hub.drain_actions() == []
    assert hub.stats().gaps == 0


def test_hub_refills_what_passed_before_the_router_confirmed_a_subscriber() -> None:
    """Data and replies travel on different sockets: messages after the router's reply position
    may reach the edge before the reply does."""
    hub, (first,) = hub_client(RELIABLE, recovery=True)
    for offset in (1, 2, 3):
        hub.deliver(b"/t", 5, offset, b"m%d" % offset)
    late, _, subscribed = resume_subscribe(hub, "c1", None, offset=1)
    assert subscribed["offset"] == 1
    request = recover_request(hub)
    assert (request.from_offset, request.to_offset) == (1, 3)
    answer(hub, request, {offset: b"m%d" % offset for offset in (1, 2, 3)})
    hub.deliver(b"/t", 5, 4, b"m4")
    assert frames_of(late) == [("data", 0, offset) for offset in (2, 3, 4)]
    assert frames_of(first) == [("data", 0, offset) for offset in (1, 2, 3, 4)]


def test_hub_router_restart_ends_a_catch_up() -> None:
    """The new router's history starts afresh: what the client missed is skipped, said once."""
    policy = DeliveryPolicy(kind="reliable", queue_max_messages=1)
    hub, (session,) = hub_client(policy, recovery=True)
    for offset in range(1, 4):
        hub.deliver(b"/t", 5, offset, b"x")
    session.data_to_send()
    assert len(hub.drain_actions()) == 1
    register, subscribe = hub.resync()
    assert isinstance(register, wire.RegisterClient)
    assert isinstance(subscribe, wire.Subscribe)
    hub.router_message(wire.Registered(request_id=register.request_id, client_id="c0", user="u"))
    ok = wire.SubscribeOk(
        request_id=subscribe.request_id,
        client_id="c0",
        topic="/t",
        epoch=9,
        offset=0,
        content_type="x",
        policy=policy,
    )
    hub.router_message(ok)
    assert not hub.catching_up
    hub.deliver(b"/t", 9, 1, b"x")
    assert frames_of(session) == [("skip", BEHIND, 0, 2, 3, 2), ("data", 0, 1)]
    assert hub.drain_actions() == []


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


# ---------------------------------------------------------------- fair share (property)


@settings(max_examples=scaled_examples(150), deadline=None)
@given(
    sizes=st.lists(st.lists(st.integers(0, 300), min_size=1, max_size=6), min_size=2, max_size=4),
    quantum=st.sampled_from([64, 256, QUANTUM]),
    limit=st.integers(1, 2000),
)
def test_equal_priorities_get_their_fair_share(sizes: list[list[int]], quantum: int, limit: int) -> None:
    """Backlogged lanes of one priority, drained ``limit`` bytes at a time: while all stay
    backlogged, each lane's bytes stay within one quantum plus one frame of an equal share."""
    queue = DeliveryQueue(10**6, 10**9, quantum=quantum)
    lanes = [queue.open(channel, DeliveryPolicy()) for channel in range(len(sizes))]
    for lane, pattern in zip(lanes, sizes, strict=True):
        for offset in range(1, 200):
            lane.push(offset, frame(lane.channel, offset, pattern[offset % len(pattern)]))
    largest = max(len(frame(0, 0, size)) for pattern in sizes for size in pattern)
    sent = [0] * len(lanes)
    while all(lane.count for lane in lanes):
        out: list[ClientOutput] = []
        queue.drain(out, limit)
        for item in out:
            assert isinstance(item, Data)
            sent[item.channel] += len(item)
        if not all(lane.count for lane in lanes):
            break
        share = sum(sent) / len(lanes)
        for got in sent:
            assert abs(got - share) <= quantum + largest, (sent, share)


# ---------------------------------------------------------------- token bucket (property)


@settings(max_examples=scaled_examples(200), deadline=None)
@given(
    kind=st.sampled_from(["best_effort", "latest"]),
    rate=st.sampled_from([0.5, 1.0, 3.0, 10.0]),
    steps=st.lists(st.tuples(st.booleans(), st.floats(0.0, 0.7)), min_size=1, max_size=80),
)
def test_token_bucket_bounds_every_window(
    kind: PolicyKind, rate: float, steps: list[tuple[bool, float]]
) -> None:
    """Drained after every step, a lane lets through at most ``rate * T + burst`` frames in any
    window of T seconds (the burst is ``max(1, rate)``)."""
    lane = one_lane(DeliveryPolicy(kind=kind, max_rate=rate))
    now = 0.0
    offset = 0
    times: list[float] = []
    for is_push, wait in steps:
        now += wait
        if is_push:
            offset += 1
            lane.push(offset, frame(1, offset), now)
        else:
            lane.release(now)
        times += [now] * sum(item[0] == "data" for item in drained(lane.queue))
    burst = max(1.0, rate)
    for start in range(len(times)):
        for end in range(start, len(times)):
            assert end - start + 1 <= rate * (times[end] - times[start]) + burst + 1e-9


# ---------------------------------------------------------------- the state machine

MAX_MESSAGES, MAX_BYTES = 5, 160
CHANNELS = [1, 2, 3]

machine_policies = st.builds(
    DeliveryPolicy,
    kind=st.sampled_from([*get_args(PolicyKind), "reliable"]),
    priority=st.integers(0, 2),
    max_rate=st.sampled_from([None, None, 0.5, 2.0]),
    queue_max_messages=st.integers(1, 4) | st.just(1024),
    queue_max_bytes=st.integers(20, 120) | st.just(8 * 1024 * 1024),
    slow_client=st.sampled_from(["drop_oldest", *get_args(SlowClientAction)]),
)
"""Every kind and action, reliable and drop_oldest a little more often; bounds under the client's
or (as by default) over them."""


@dataclass
class Channel:
    """What the machine knows of one lane: everything pushed, and what the client read."""

    frames: dict[int, Data] = field(default_factory=dict)
    """Offset -> frame, for every message pushed (the router's history, for refills)."""
    delivered: list[int] = field(default_factory=list)
    skips: list[tuple[int, int, int, int]] = field(default_factory=list)
    """(reasons, first, last, count) of every skipped frame read."""
    paid_since: float = 0.0
    """When the lane's token bucket was last full (policy set), for the rate bound."""
    delivered_since: int = 0
    """Frames read since then, less those queued before."""
    grace: int = 0
    """A reliable lane's count when its bound shrank: it may stay over the new bound until drained."""


class QueueMachine(RuleBasedStateMachine):
    """One client's queue and a client reading it. The model is what the client saw; the checks
    are what any client may rely on."""

    def __init__(self) -> None:
        super().__init__()
        self.queue = DeliveryQueue(0, 0)
        self.channels: dict[int, Channel] = {}
        self.now = 0.0

    @initialize(
        policies=st.lists(machine_policies, min_size=len(CHANNELS), max_size=len(CHANNELS)),
        recoverable=st.sampled_from([True, True, False]),
        quantum=st.sampled_from([16, 64, 1000]),
    )
    def setup(self, policies: list[DeliveryPolicy], recoverable: bool, quantum: int) -> None:
        self.queue = DeliveryQueue(MAX_MESSAGES, MAX_BYTES, recoverable=recoverable, quantum=quantum)
        for channel, policy in zip(CHANNELS, policies, strict=True):
            self.queue.open(channel, policy)
            self.channels[channel] = Channel()
        note(f"recoverable={recoverable} quantum={quantum} policies={policies}")

    def closes_if_too_slow(self) -> bool:
        """A ``disconnect`` lane found no room: the client is closed, what it held counted as
        ``closed``, and a new client with the same policies takes its place."""
        if not self.queue.too_slow:
            return False
        event("too slow")
        self.queue.clear(DropReason.CLOSED)
        pushed = sum(len(model.frames) for model in self.channels.values())
        read = sum(len(model.delivered) for model in self.channels.values())
        assert pushed == read + self.queue.dropped.total()
        policies = [self.lane(channel).policy for channel in CHANNELS]
        self.setup(policies, self.queue.recoverable, self.queue.quantum)
        return True

    def lane(self, channel: int) -> Lane:
        lane = self.queue.lane(channel)
        assert lane is not None
        return lane

    def snapshot(self) -> dict[int, list[Data]]:
        """The frames queued in each lane, by identity."""
        return {
            channel: [item[1] for item in (self.lane(channel).items or ()) if not isinstance(item, Skip)]
            for channel in CHANNELS
        }

    # ------------------------------------------------------------ rules

    @rule(
        channel=st.sampled_from(CHANNELS), size=st.integers(0, 60), wait=st.sampled_from([0.0, 0.0, 0.1, 0.6])
    )
    def push(self, channel: int, size: int, wait: float) -> None:
        self.now += wait
        lane = self.lane(channel)
        model = self.channels[channel]
        offset = len(model.frames) + 1
        data = frame(channel, offset, size)
        model.frames[offset] = data
        before = self.snapshot()
        fits = lane.count < lane.max_messages and lane.bytes + len(data) <= lane.max_bytes
        others = self.queue.count - lane.count, self.queue.bytes - lane.bytes
        fits_alone = others[0] < MAX_MESSAGES and others[1] + len(data) <= min(MAX_BYTES, lane.max_bytes)
        note(f"t={self.now:.1f} push {channel}@{offset} ({len(data)} bytes) to {lane!r}")
        lane.push(offset, data, self.now)
        self.check_push(lane, data, before, fits, fits_alone)

    def check_push(
        self, lane: Lane, data: Data, before: dict[int, list[Data]], fits: bool, fits_alone: bool
    ) -> None:
        """What a push may change: room is taken only from lower priorities; reliable frames stay;
        drop_newest keeps a full lane as it was; drop_oldest keeps the new frame if dropping the
        lane's own frames makes room."""
        after = self.snapshot()
        queued = bool(after[lane.channel]) and after[lane.channel][-1] is data
        for channel, frames in before.items():
            kept = [item for item in frames if any(item is other for other in after[channel])]
            if len(kept) < len(frames) and channel != lane.channel:
                other = self.lane(channel)
                assert other.kind == "best_effort", "room is taken only from best_effort"
                assert other.priority < lane.priority, "room is taken only from lower priorities"
                event("room taken from a lower priority")
        if self.queue.too_slow:
            assert lane.slow_client == "disconnect"
            self.closes_if_too_slow()
            return
        if lane.kind == "reliable":
            assert before[lane.channel] == [item for item in after[lane.channel] if item is not data]
        if lane.kind == "latest":
            assert lane.count <= 1
            assert lane.held is None or lane.count == 0
        if not queued and lane.kind != "latest":
            for channel, frames in before.items():
                assert all(any(item is other for other in after[channel]) for item in frames), (
                    "no needless drop"
                )
        if lane.slow_client != "drop_oldest" and lane.kind != "latest":
            assert all(any(item is other for other in after[lane.channel]) for item in before[lane.channel])
        if lane.kind == "best_effort" and lane.slow_client == "drop_newest" and not fits:
            assert not queued
        if lane.kind == "best_effort" and lane.rate is None and lane.slow_client == "drop_oldest":
            assert queued or not fits_alone, "drop_oldest keeps the newest when it can"

    @rule(wait=st.sampled_from([0.1, 0.5, 2.0]))
    def tick(self, wait: float) -> None:
        self.now += wait
        note(f"t={self.now:.1f} tick")
        for lane in self.queue.lanes():
            lane.release(self.now)
        self.closes_if_too_slow()

    @rule(data=st.data(), limit=st.none() | st.integers(0, 120))
    def drain(self, data: st.DataObject, limit: int | None) -> None:
        out: list[ClientOutput] = []
        self.queue.drain(out, limit)
        priorities = {channel: self.lane(channel).priority for channel in CHANNELS}
        note(f"drain (limit {limit}): {view(out)}")
        previous = None
        emitted = last_size = 0
        for index, item in enumerate(out):
            if isinstance(item, Skipped):
                self.read_skip(parse_skipped_frame(item.frame), out[index + 1 :])
                continue
            assert isinstance(item, Data)
            seen = parse_data_frame(item.frame())
            assert previous is None or priorities[seen.channel] <= previous, "higher priority first"
            previous = priorities[seen.channel]
            self.read_data(seen.channel, seen.offset, item)
            emitted += len(item)
            last_size = len(item)
        if limit is not None and previous is not None:
            assert emitted - last_size < limit, "a limited drain stops after the frame that crosses it"
            waiting = [lane.priority for lane in self.queue.lanes() if lane.count]
            assert all(priority <= previous for priority in waiting), "nothing higher left behind"
        if limit is None:
            assert self.queue.count == 0
        for channel in CHANNELS:
            if not self.lane(channel).count:
                self.channels[channel].grace = 0
        self.answer_catch_ups(data)

    def read_data(self, channel: int, offset: int, item: Data) -> None:
        model = self.channels[channel]
        assert model.frames[offset] is item, "the pushed frame object itself"
        assert not model.delivered or offset > model.delivered[-1], "order kept within a topic"
        model.delivered.append(offset)
        model.delivered_since += 1

    def read_skip(self, skipped: Any, after: list[ClientOutput]) -> None:
        model = self.channels[skipped.channel]
        following = after[0] if after else None
        assert isinstance(following, Data), "a data frame follows"
        data = parse_data_frame(following.frame())
        assert (data.kind, data.channel) == (1, skipped.channel)
        assert data.offset > skipped.last
        model.skips.append((skipped.reasons, skipped.first, skipped.last, skipped.skipped))
        kind = self.lane(skipped.channel).kind
        for reason in skipped.reasons:
            event(f"{kind}: skipped {reason.name}")

    @rule(channel=st.sampled_from(CHANNELS), policy=machine_policies)
    def change_policy(self, channel: int, policy: DeliveryPolicy) -> None:
        lane = self.lane(channel)
        note(f"policy of {channel}: {policy}")
        before = self.snapshot()
        lane.set_policy(policy)
        if lane.kind == "reliable":
            after = self.snapshot()[channel]
            assert all(any(item is other for other in after) for item in before[channel])
            self.channels[channel].grace = max(self.channels[channel].grace, lane.count)
        self.channels[channel].paid_since = self.now
        self.channels[channel].delivered_since = -lane.count
        self.closes_if_too_slow()

    def waiting_for_refill(self) -> list[int]:
        """Lanes behind with nothing queued: those a hub would send a recover for."""
        return [
            channel
            for channel in CHANNELS
            if self.lane(channel).behind is not None and not self.lane(channel).count
        ]

    def answer_catch_ups(self, data: st.DataObject) -> None:
        """What a hub with recovery does after a drain: each lane behind with nothing queued asks
        the router, which answers from its history (a few messages, maybe cut short, maybe starting
        late) or cannot."""
        for channel in self.waiting_for_refill() if self.queue.recoverable else []:
            lane = self.lane(channel)
            assert lane.behind is not None
            if data.draw(st.sampled_from([False, False, False, True]), label=f"refill of {channel} fails"):
                note(f"refill of {channel} fails")
                lane.give_up()
                continue
            count = data.draw(st.integers(0, 4), label="messages")
            start = lane.behind.first + data.draw(st.sampled_from([0, 0, 0, 1]), label="starts late by")
            more = data.draw(st.booleans(), label="more")
            frames = self.channels[channel].frames
            reply = [(offset, frames[offset]) for offset in range(start, start + count) if offset in frames]
            note(f"refill {channel} with {[offset for offset, _ in reply]} more={more}")
            event(f"refill queued {lane.recover(reply, more)}")

    # ------------------------------------------------------------ invariants

    @invariant()
    def bounds_hold(self) -> None:
        assert self.queue.count <= MAX_MESSAGES
        assert self.queue.bytes <= MAX_BYTES
        assert self.queue.count == sum(lane.count for lane in self.queue.lanes())
        for channel in CHANNELS:
            lane = self.lane(channel)
            grace = self.channels[channel].grace
            assert lane.count <= max(lane.max_messages, grace)
            assert lane.bytes <= lane.max_bytes or grace
            assert lane.bytes == sum(len(item) for item in self.snapshot()[channel])

    @invariant()
    def every_gap_is_explained(self) -> None:
        """Up to the last frame read, every offset was read or is in exactly one skipped frame,
        whose count is exactly its offsets; and ``latest`` lanes never lose the newest."""
        for channel, model in self.channels.items():
            if not model.delivered:
                continue
            covered = Counter(model.delivered)
            for _, first, last, count in model.skips:
                assert count == last - first + 1
                covered.update(range(first, last + 1))
            assert covered == Counter(range(1, model.delivered[-1] + 1))
            if self.lane(channel).kind == "latest":
                newest = len(model.frames)
                assert not any(
                    first <= newest <= last for reasons, first, last, _ in model.skips if reasons & CONFLATED
                )

    @invariant()
    def nothing_is_lost_silently(self) -> None:
        """Each message pushed is read, queued, pending, or counted once as dropped."""
        pushed = sum(len(model.frames) for model in self.channels.values())
        read = sum(len(model.delivered) for model in self.channels.values())
        assert pushed == read + self.queue.dropped.total() + self.queue.count + self.queue.pending
        in_queue = sum(
            item.count for lane in self.queue.lanes() for item in (lane.items or ()) if isinstance(item, Skip)
        )
        read_skips = sum(count for model in self.channels.values() for *_, count in model.skips)
        assert self.queue.dropped.total() == read_skips + in_queue

    @invariant()
    def rate_limits_hold(self) -> None:
        for channel, model in self.channels.items():
            lane = self.lane(channel)
            if lane.bucket is not None:
                allowed = lane.bucket.rate * (self.now - model.paid_since) + lane.bucket.burst
                assert model.delivered_since <= allowed + 1e-9


QueueMachine.TestCase.settings = settings(
    max_examples=scaled_examples(300),
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestQueueMachine = QueueMachine.TestCase


def test_hub_client_window_and_acknowledgements() -> None:
    hub = EdgeHub()
    session, _, subscribed = resume_subscribe(hub, "c0", None, window=1, offset=0, policy=LATEST)
    channel = subscribed["channel"]
    hub.deliver(b"/t", 5, 1, b"frame")
    assert frames_of(session) == [("data", channel, 1)]
    hub.deliver(b"/t", 5, 2, b"frame")
    hub.deliver(b"/t", 5, 3, b"frame")
    assert frames_of(session) == [], "waiting for the acknowledgement"
    hub.sessions_with_output()
    hub.client_text("c0", json.dumps({"op": "ack", "channel": channel, "offset": 1}))
    assert hub.sessions_with_output() == [session]
    assert frames_of(session) == [("skip", CONFLATED, channel, 2, 2, 1), ("data", channel, 3)]
    hub.client_text("c0", json.dumps({"op": "ack", "channel": 99, "offset": 1}))
    assert session.data_to_send() == [], "an acknowledgement of another channel changes nothing"


@pytest.mark.parametrize(
    "message",
    [
        {"op": "subscribe", "id": 1, "topic": "/t", "window": 0},
        {"op": "subscribe", "id": 1, "topic": "/t", "window": 1025},
        {"op": "ack", "channel": 0},
        {"op": "ack", "channel": -1, "offset": 1},
    ],
)
def test_bad_windows_and_acknowledgements_are_refused(message: dict[str, Any]) -> None:
    hub = EdgeHub()
    session = hub.open_client("c0")
    hub.client_text("c0", '{"op":"connect"}')
    register = router_request(hub)
    hub.router_message(wire.Registered(request_id=register.request_id, client_id="c0", user="u"))
    session.data_to_send()
    hub.client_text("c0", json.dumps(message))
    [reply] = [json.loads(item.text) for item in session.data_to_send() if isinstance(item, Reply)]
    assert (reply["op"], reply["code"]) == ("error", "bad_request")
    assert hub.drain_actions() == []
