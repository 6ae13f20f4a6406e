"""Subscription (edges/core/subscription.py): the state table, the lane it owns, and the rule that an
illegal event raises and changes nothing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st

from edges.core.client_wire import (
    FRAME_SKIPPED,
    frame_type,
    parse_data_frame,
    parse_skipped_frame,
)
from edges.core.output import Data, data_frame
from edges.core.session import ClientSession, EdgeLimits
from edges.core.subscription import (
    TRANSITIONS,
    InvalidSubscriptionEventError,
    SubEvent,
    Subscription,
    SubState,
    next_sub_state,
)
from router.core.policy import DeliveryPolicy
from tests.edges.output import wire_forms
from tests.strategies import scaled_examples

RELIABLE = DeliveryPolicy(kind="reliable")


def frame(offset: int) -> Data:
    return data_frame(3, offset, b"m%d" % offset)


def new_sub(queue_max_messages: int = 4, recoverable: bool = True) -> Subscription:
    session = ClientSession(
        "c1", limits=EdgeLimits(queue_max_messages=queue_max_messages), recoverable=recoverable
    )
    sub = Subscription(session, "/t", 3, client_request=1)
    sub.sent(7)
    return sub


def confirmed(policy: DeliveryPolicy = RELIABLE, **kwargs: Any) -> Subscription:
    sub = new_sub(**kwargs)
    sub.confirm(policy, 5, 10)
    return sub


def offsets(sub: Subscription) -> list[object]:
    """What the client gets: data offsets, and ("skip", first, last) for skipped frames."""
    out: list[object] = []
    for item in wire_forms(sub.session.data_to_send()):
        assert isinstance(item, bytes)
        if frame_type(item) == FRAME_SKIPPED:
            skipped = parse_skipped_frame(item)
            out.append(("skip", skipped.first, skipped.last))
        else:
            out.append(parse_data_frame(item).offset)
    return out


# ---------------------------------------------------------------- the table


def test_every_state_but_closed_can_leave_and_closed_takes_nothing() -> None:
    for state in SubState:
        if state is SubState.CLOSED:
            assert TRANSITIONS[state] == {}
        else:
            assert next_sub_state(state, SubEvent.LEAVE) is SubState.CLOSED


def test_only_a_requested_subscription_is_confirmed_or_sent_again() -> None:
    for state in SubState:
        for event in (SubEvent.CONFIRM, SubEvent.SEND):
            if state is SubState.REQUESTED:
                next_sub_state(state, event)
            else:
                with pytest.raises(InvalidSubscriptionEventError):
                    next_sub_state(state, event)


# ---------------------------------------------------------------- lifecycle and lane


def test_the_router_confirms_and_the_lane_is_taken_once() -> None:
    sub = new_sub()
    assert sub.awaits(7)
    assert not sub.awaits(8)
    assert not sub.confirmed
    sub.confirm(RELIABLE, 5, 10)
    assert (sub.state, sub.start_epoch, sub.start_offset) == (SubState.ACTIVE, 5, 10)
    assert sub.session.lane(3) is sub.lane
    assert not sub.awaits(7)
    with pytest.raises(InvalidSubscriptionEventError):
        sub.confirm(RELIABLE, 6, 0)
    assert sub.session.lane(3) is sub.lane


def test_a_window_limits_frames_in_flight() -> None:
    session = ClientSession("c1")
    sub = Subscription(session, "/t", 3, client_request=1, window=1)
    sub.sent(7)
    sub.confirm(DeliveryPolicy(), 5, 10)
    for offset in (11, 12):
        sub.lane.push(frame(offset))
    assert offsets(sub) == [11]
    sub.lane.ack(11)
    assert offsets(sub) == [12]


def test_the_clients_max_rate_caps_the_lane_under_the_policys() -> None:
    session = ClientSession("c1")
    sub = Subscription(session, "/t", 3, client_request=1, max_rate=2.0)
    sub.sent(7)
    sub.confirm(DeliveryPolicy(max_rate=10.0), 5, 10)
    assert sub.lane.rate == 2.0
    sub.set_policy(DeliveryPolicy(max_rate=1.0))
    assert sub.lane.rate == 1.0
    sub.set_policy(DeliveryPolicy())
    assert sub.lane.rate == 2.0


def test_leaving_purges_the_lane_and_returns_its_drops() -> None:
    sub = confirmed(DeliveryPolicy(), queue_max_messages=1)
    for offset in (11, 12, 13):
        sub.lane.push(frame(offset))
    assert sub.leave() == 2
    assert sub.state is SubState.CLOSED
    assert sub.session.lane(3) is None
    assert sub.session.dropped == {"queue_full": 2, "unsubscribed": 1}


def test_leaving_before_the_router_confirmed_touches_no_lane() -> None:
    sub = new_sub()
    assert sub.leave() == 0
    assert sub.session.lane(3) is None


# ---------------------------------------------------------------- a reliable lane behind


def test_catch_up_in_two_answers() -> None:
    sub = confirmed()
    assert sub.owe(11, 14)
    sub.fall_behind(5)
    assert (sub.state, sub.owed, sub.behind_epoch) == (SubState.BEHIND, (11, 14), 5)
    sub.ask(9)
    assert sub.waits_for(9)
    assert not sub.waits_for(8)
    assert sub.recovered([frame(offset) for offset in (11, 12)], more=True) == 2
    assert (sub.state, sub.owed, sub.asked) == (SubState.BEHIND, (13, 14), 0)
    sub.ask(10)
    assert sub.recovered([frame(offset) for offset in (13, 14)], more=False) == 2
    assert sub.state is SubState.ACTIVE
    assert offsets(sub) == [11, 12, 13, 14]


def test_giving_up_turns_what_is_owed_into_a_skipped_frame() -> None:
    sub = confirmed()
    sub.owe(11, 12)
    sub.fall_behind(5)
    sub.ask(9)
    sub.give_up()
    assert (sub.state, sub.asked) == (SubState.ACTIVE, 0)
    sub.lane.push(frame(13))
    assert offsets(sub) == [("skip", 11, 12), 13]


def test_only_open_reliable_lanes_owe() -> None:
    assert not confirmed(DeliveryPolicy()).owe(11, 12)
    assert not confirmed().owe(12, 11)
    assert confirmed().owe(11, 11)


def test_a_new_router_reconfirms_and_what_was_owed_is_skipped() -> None:
    sub = confirmed()
    sub.owe(11, 12)
    sub.fall_behind(5)
    sub.reconfirm(9, 0)
    assert (sub.state, sub.start_epoch, sub.start_offset) == (SubState.ACTIVE, 9, 0)
    sub.lane.push(frame(1))
    assert offsets(sub) == [("skip", 11, 12), 1]


def test_a_policy_that_is_not_reliable_ends_the_catch_up() -> None:
    sub = confirmed()
    sub.owe(11, 12)
    sub.fall_behind(5)
    sub.ask(9)
    sub.set_policy(DeliveryPolicy())
    assert sub.state is SubState.ACTIVE
    assert not sub.waits_for(9)


def test_a_lane_that_gives_up_by_itself_is_noticed() -> None:
    sub = confirmed(recoverable=False)
    sub.owe(11, 12)
    sub.fall_behind(5)
    assert sub.notice_caught_up()
    sub.session.data_to_send()
    assert not sub.notice_caught_up()
    assert sub.state is SubState.ACTIVE


def test_a_held_frame_is_released_when_its_token_comes() -> None:
    sub = confirmed(DeliveryPolicy(kind="latest", max_rate=1.0))
    sub.lane.push(frame(11), 0.0)
    sub.session.data_to_send()
    assert sub.lane.push(frame(12), 0.5)
    assert sub.held
    assert sub.release(0.6) == 1.0
    assert sub.release(1.0) is None
    assert not sub.held
    assert offsets(sub) == [12]


# ---------------------------------------------------------------- an illegal event changes nothing


def _fall_behind(sub: Subscription) -> None:
    if sub.state is SubState.ACTIVE:
        sub.owe(sub.start_offset + 1, sub.start_offset + 2)
    sub.fall_behind(5)


OPERATIONS: dict[SubEvent, Callable[[Subscription], object]] = {
    SubEvent.SEND: lambda sub: sub.sent(8),
    SubEvent.CONFIRM: lambda sub: sub.confirm(RELIABLE, 5, 10),
    SubEvent.RECONFIRM: lambda sub: sub.reconfirm(6, 0),
    SubEvent.FALL_BEHIND: lambda sub: sub.fall_behind(5),
    SubEvent.ASK: lambda sub: sub.ask(9),
    SubEvent.ANSWER: lambda sub: sub.recovered([frame(11)], more=False),
    SubEvent.GIVE_UP: lambda sub: sub.give_up(),
    SubEvent.LEAVE: lambda sub: sub.leave(),
}
"""Each event's method (``catch_up`` has none: it follows the lane, see :meth:`notice_caught_up`)."""

LEGAL_OPERATIONS = {**OPERATIONS, SubEvent.FALL_BEHIND: _fall_behind}
"""The same, with what makes a legal ``fall_behind`` true: the lane owes messages."""


def snapshot(sub: Subscription) -> tuple[object, ...]:
    fields = (sub.state, sub.request_id, sub.start_epoch, sub.start_offset, sub.behind_epoch, sub.asked)
    session = sub.session
    lane = session.lane(sub.channel)
    lane_state = None
    if lane is not None:
        behind = lane.behind
        lane_state = (lane.open, lane.count, lane.drops, behind and (behind.first, behind.last, behind.count))
    return (*fields, lane_state, dict(session.dropped), session.queued_messages, session.pending_messages)


@settings(max_examples=scaled_examples(300), deadline=None)
@given(events=st.lists(st.sampled_from(sorted(OPERATIONS)), max_size=25))
def test_an_illegal_event_raises_and_changes_nothing(events: list[SubEvent]) -> None:
    sub = new_sub()
    for event in events:
        before = snapshot(sub)
        allowed = TRANSITIONS[sub.state]
        if event not in allowed:
            note(f"{event} in {sub.state}: refused")
            with pytest.raises(InvalidSubscriptionEventError):
                OPERATIONS[event](sub)
            assert snapshot(sub) == before
            continue
        expected = allowed[event]
        LEGAL_OPERATIONS[event](sub)
        note(f"{event} -> {sub.state}")
        if event is SubEvent.ANSWER:
            assert sub.state in (SubState.BEHIND, SubState.ACTIVE), "answered, or caught up"
        else:
            assert sub.state is expected
        if sub.confirmed:
            assert (sub.state in (SubState.BEHIND, SubState.ASKING)) == sub.lane_behind
