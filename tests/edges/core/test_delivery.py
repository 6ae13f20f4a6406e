"""Delivery policies in a client's queue (edges/core/delivery.py); the hub's side of them is in
test_fanout.py and test_catch_up.py.

First examples, one behaviour each; then properties: fair sharing, the token bucket; then a state
machine that drives one client's :class:`DeliveryQueue` with random policies, pushes, ticks, drains,
policy changes and refills, and checks it against a client's view: what came out, and how each gap
is explained.
"""

from __future__ import annotations

import gc
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, cast, get_args

import pytest
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from edges.core.client_wire import (
    FRAME_SKIPPED,
    SKIPPED_FRAME,
    SkipReason,
    encode_skipped_frame,
    frame_type,
    parse_data_frame,
    parse_skipped_frame,
)
from edges.core.delivery import QUANTUM, DeliveryQueue, Lane, Skip
from edges.core.drops import DropReason
from edges.core.hub import EdgeHub
from edges.core.output import ClientOutput, Data, Reply, Skipped
from edges.core.session import ClientSession
from router import wire
from router.core.policy import DeliveryPolicy, PolicyKind, SlowClientAction
from tests.edges.core.hub_clients import LATEST, frame, frames_of, resume_subscribe, router_request, view
from tests.strategies import scaled_examples

CONFLATED, RATE_LIMITED, QUEUE_FULL, BEHIND = (
    SkipReason.CONFLATED,
    SkipReason.RATE_LIMITED,
    SkipReason.QUEUE_FULL,
    SkipReason.BEHIND,
)


# ---------------------------------------------------------------- helpers


def drained(queue: DeliveryQueue, limit: int | None = None) -> list[tuple[object, ...]]:
    out: list[ClientOutput] = []
    queue.drain(out, limit)
    return view(out)


def one_lane(policy: DeliveryPolicy, max_messages: int = 100, max_bytes: int = 10_000) -> Lane:
    return DeliveryQueue(max_messages, max_bytes).open(1, policy)


def push_all(lane: Lane, offsets: range, size: int = 0, now: float | None = None) -> None:
    for offset in offsets:
        lane.push(frame(lane.channel, offset, size), now)


# ---------------------------------------------------------------- what a queued frame costs


def test_a_queued_frame_is_the_shared_frame_itself() -> None:
    """Queues hold each message's frame, shared by every client, and nothing per client and
    message that the garbage collector would walk: 1,000 clients x 100 queued messages once made
    every full collection walk 100,000 tuples, and cost the edge about half its speed."""
    lanes = [DeliveryQueue(1_000, 1_000_000).open(1, DeliveryPolicy()) for _ in range(1_000)]
    frames = [frame(1, offset, 100) for offset in range(1, 101)]
    for lane in lanes:
        lane.push(frames[0])
    gc.collect()
    tracked = len(gc.get_objects())
    for data in frames[1:]:
        for lane in lanes:
            lane.push(data)
    assert len(gc.get_objects()) - tracked < 100, "no object per client and message"
    out: list[ClientOutput] = []
    lanes[0].emit(out, None)
    assert out == frames


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
    alerts.push(frame(2, 4))
    assert alerts.behind is not None
    assert (bulk.count, alerts.count) == (0, 3), "bulk 2 was not queued; nothing else was dropped"


def test_shrunk_byte_bound_skips_a_held_frame_too_large_now() -> None:
    lane = one_lane(DeliveryPolicy(kind="latest", max_rate=1.0))
    lane.push(frame(1, 1, size=20), 0.0)
    assert drained(lane.queue) == [("data", 1, 1)]
    lane.push(frame(1, 2, size=20), 0.0)
    assert lane.held is not None
    lane.set_policy(DeliveryPolicy(kind="latest", queue_max_bytes=20))
    assert lane.held is None
    lane.push(frame(1, 3), 1.0)
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
    lane.push(frame(1, 1))
    lane.push(frame(1, 2, size=17))
    push_all(lane, range(3, 5))
    assert drained(lane.queue) == [("skip", QUEUE_FULL, 1, 1, 2, 2), ("data", 1, 3), ("data", 1, 4)]


def test_oversize_frame_is_skipped_alone() -> None:
    lane = one_lane(DeliveryPolicy(queue_max_bytes=30))
    lane.push(frame(1, 1))
    lane.push(frame(1, 2, size=17))
    lane.push(frame(1, 3))
    assert drained(lane.queue) == [("data", 1, 1), ("skip", QUEUE_FULL, 1, 2, 2, 1), ("data", 1, 3)]
    assert lane.queue.dropped == {"oversize": 1}


def test_disconnect_marks_the_client_too_slow() -> None:
    lane = one_lane(DeliveryPolicy(queue_max_messages=2, slow_client="disconnect"))
    assert not lane.push(frame(1, 1))
    assert not lane.push(frame(1, 2))
    assert not lane.queue.too_slow
    assert lane.push(frame(1, 3))
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
        held = lane.push(frame(1, offset), now)
        assert held == (offset >= 3), "a burst of 2, then 2 tokens a second"
        assert drained(lane.queue) == ([("data", 1, offset)] if offset <= 2 else [])
    assert lane.held is not None
    assert lane.held.offset == 5
    assert lane.next_release() == 0.5
    assert lane.release(0.4375), "still held"
    assert not lane.release(0.5)
    assert lane.held is None
    assert drained(lane.queue) == [("skip", CONFLATED, 1, 3, 4, 2), ("data", 1, 5)]


def test_a_newer_message_supersedes_the_held_one_even_when_skipped() -> None:
    lane = one_lane(DeliveryPolicy(kind="latest", max_rate=1.0, queue_max_bytes=30))
    lane.push(frame(1, 1), 0.0)
    assert drained(lane.queue) == [("data", 1, 1)]
    lane.push(frame(1, 2), 0.0)
    lane.push(frame(1, 3, size=20), 0.0)
    assert lane.held is None, "3 is newer than 2, and too large to send"
    lane.push(frame(1, 4), 1.0)
    assert drained(lane.queue) == [("skip", CONFLATED | QUEUE_FULL, 1, 2, 3, 2), ("data", 1, 4)]


# ---------------------------------------------------------------- max_rate on best_effort


def test_best_effort_rate_limit_skips_the_excess() -> None:
    """4 msg/s and a burst of 4, offered 8 msg/s: the bucket empties, then every other one goes."""
    lane = one_lane(DeliveryPolicy(max_rate=4.0))
    for offset in range(1, 21):
        lane.push(frame(1, offset), now=offset * 0.125)
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
    assert not lane.push(frame(1, 1))
    assert not lane.push(frame(1, 2))
    assert lane.push(frame(1, 3)), "fell behind: the caller must look"
    assert not lane.push(frame(1, 4))
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
    history = [frame(1, offset) for offset in range(1, 9)]
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
    lane.recover([frame(1, offset) for offset in reply], more)
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


# ---------------------------------------------------------------- the client's own max_rate


def capped_lane(policy: DeliveryPolicy, client_max_rate: float | None) -> Lane:
    lane = one_lane(policy, max_messages=1000)
    lane.cap_rate(client_max_rate)
    return lane


def told_offsets(seen: list[tuple[object, ...]]) -> list[int]:
    """Every offset that a data frame or a skipped frame told the client of, in that order."""
    told: list[int] = []
    for item in seen:
        if item[0] == "data":
            told.append(cast(int, item[2]))
            continue
        first, last, count = cast(tuple[int, int, int], item[3:])
        assert count == last - first + 1
        told += range(first, last + 1)
    return told


def test_the_clients_cap_limits_a_topic_without_one() -> None:
    """100 msg/s for 3 s to a client that wants 5/s: the bucket starts full (5), then 5 a second;
    every other message is told as rate limited."""
    lane = capped_lane(DeliveryPolicy(), 5.0)
    seen: list[tuple[object, ...]] = []
    for offset in range(1, 301):
        lane.push(frame(1, offset), now=(offset - 1) / 100)
        seen += drained(lane.queue)
    delivered = [cast(int, item[2]) for item in seen if item[0] == "data"]
    assert 5 * 3 <= len(delivered) <= 5 * 3 + 5
    assert delivered[:5] == [1, 2, 3, 4, 5], "the burst"
    assert {item[1] for item in seen if item[0] == "skip"} == {RATE_LIMITED}
    assert lane.queue.dropped == {"rate_limited": 300 - len(delivered)}
    assert told_offsets(seen) == list(range(1, delivered[-1] + 1)), "every gap up to the last frame told"


@pytest.mark.parametrize(("policy_rate", "client_rate"), [(3.0, 8.0), (8.0, 3.0), (None, 3.0), (3.0, None)])
def test_the_lower_of_the_policys_and_the_clients_cap_applies(
    policy_rate: float | None, client_rate: float | None
) -> None:
    lane = capped_lane(DeliveryPolicy(max_rate=policy_rate), client_rate)
    push_all(lane, range(1, 21), now=0.0)
    assert lane.rate == 3.0
    assert drained(lane.queue) == [("data", 1, 1), ("data", 1, 2), ("data", 1, 3)]
    lane.push(frame(1, 21), now=1 / 3)
    assert drained(lane.queue) == [("skip", RATE_LIMITED, 1, 4, 20, 17), ("data", 1, 21)]


def test_the_clients_cap_holds_a_latest_frame_until_its_token_comes() -> None:
    lane = capped_lane(DeliveryPolicy(kind="latest"), 2.0)
    out: list[tuple[object, ...]] = []
    for offset in range(1, 5):
        lane.push(frame(1, offset), 0.0)
        out += drained(lane.queue)
    assert out == [("data", 1, 1), ("data", 1, 2)], "the burst of 2, then 4 waits in 3's place"
    assert lane.held is not None
    assert lane.next_release() == 0.5
    lane.release(0.5)
    assert drained(lane.queue) == [("skip", CONFLATED, 1, 3, 3, 1), ("data", 1, 4)]


def test_a_reliable_topic_ignores_the_clients_cap() -> None:
    lane = capped_lane(DeliveryPolicy(kind="reliable"), 1.0)
    push_all(lane, range(1, 11), now=0.0)
    assert lane.rate is None
    assert lane.count == 10


def test_the_clients_cap_outlives_policy_changes() -> None:
    lane = capped_lane(DeliveryPolicy(max_rate=10.0), 2.0)
    for policy, rate in [
        (DeliveryPolicy(), 2.0),
        (DeliveryPolicy(max_rate=1.0), 1.0),
        (DeliveryPolicy(kind="reliable", max_rate=1.0), None),
        (DeliveryPolicy(kind="latest", max_rate=50.0), 2.0),
        (DeliveryPolicy(), 2.0),
    ]:
        lane.set_policy(policy)
        assert (policy, lane.rate) == (policy, rate)
    push_all(lane, range(1, 11), now=0.0)
    assert lane.count == 2
    lane.cap_rate(None)
    assert lane.rate is None


# ---------------------------------------------------------------- drain order


def test_higher_priority_first_and_order_kept_within_a_topic() -> None:
    queue = DeliveryQueue(100, 10_000)
    low = queue.open(1, DeliveryPolicy(priority=-1))
    high = queue.open(2, DeliveryPolicy(priority=3))
    low.push(frame(1, 1))
    high.push(frame(2, 7))
    low.push(frame(1, 2))
    high.push(frame(2, 8))
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
        waiting.push(frame(1, offset, 10))
        other.push(frame(2, offset, 10))
    assert drained(queue) == [("data", 1, 1)] + [("data", 2, offset) for offset in (1, 2, 3)]
    assert drained(queue) == []
    waiting.ack(1)
    assert drained(queue) == [("data", 1, 2)]


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
            lane.push(frame(lane.channel, offset, pattern[offset % len(pattern)]))
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
            lane.push(frame(1, offset), now)
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
    client_max_rate: float | None = None
    """The cap the client asked for."""


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
            channel: [item for item in (self.lane(channel).items or ()) if not isinstance(item, Skip)]
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
        lane.push(data, self.now)
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

    @rule(channel=st.sampled_from(CHANNELS), max_rate=st.sampled_from([None, 0.5, 2.0]))
    def cap_rate(self, channel: int, max_rate: float | None) -> None:
        lane = self.lane(channel)
        note(f"client's cap of {channel}: {max_rate}")
        lane.cap_rate(max_rate)
        model = self.channels[channel]
        model.client_max_rate = max_rate
        model.paid_since = self.now
        model.delivered_since = -lane.count
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
            reply = [frames[offset] for offset in range(start, start + count) if offset in frames]
            note(f"refill {channel} with {[frame.offset for frame in reply]} more={more}")
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
    def the_lower_cap_applies(self) -> None:
        """A lane's rate is the lower of its policy's and the client's, none on a reliable lane."""
        for channel, model in self.channels.items():
            lane = self.lane(channel)
            caps = [cap for cap in (lane.policy.max_rate, model.client_max_rate) if cap is not None]
            expected = min(caps) if caps and lane.kind != "reliable" else None
            assert lane.rate == expected

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
