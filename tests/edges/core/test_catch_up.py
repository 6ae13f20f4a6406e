"""Reliable catch-up through the hub (edges/core/catch_up.py): a lane that fell behind or missed
offsets is refilled from the router's history, in order, or told what could not be; resume on
subscribe replays what a client missed."""

from __future__ import annotations

import json
from typing import Any

import pytest

from edges.core.client_wire import (
    SkipReason,
)
from edges.core.drops import DropReason
from edges.core.hub import EdgeHub, ToRouter
from edges.core.session import EdgeLimits
from router import wire
from router.core.errors import RecoveryStatus
from router.core.policy import DeliveryPolicy
from tests.edges.core.hub_clients import (
    RELIABLE,
    frames_of,
    hub_client,
    resume_subscribe,
    router_request,
    subscribe_ok,
)

CONFLATED, RATE_LIMITED, QUEUE_FULL, BEHIND = (
    SkipReason.CONFLATED,
    SkipReason.RATE_LIMITED,
    SkipReason.QUEUE_FULL,
    SkipReason.BEHIND,
)


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
    hub.router_message(subscribe_ok(router_request(hub), policy))


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


def test_hub_tells_a_gap_of_other_policies_with_a_not_received_skip() -> None:
    """Messages that never reached the edge (the router's queue for it was full, or it was not
    sent while the router did not know the client) are told, and not asked for again."""
    hub, (session,) = hub_client(DeliveryPolicy(), recovery=True)
    for offset in (1, 2, 5, 6, 9):
        hub.deliver(b"/t", 5, offset, b"x")
    not_received = int(SkipReason.NOT_RECEIVED)
    assert frames_of(session) == [
        ("data", 0, 1),
        ("data", 0, 2),
        ("skip", not_received, 0, 3, 4, 2),
        ("data", 0, 5),
        ("data", 0, 6),
        ("skip", not_received, 0, 7, 8, 2),
        ("data", 0, 9),
    ]
    assert hub.drain_actions() == []
    assert hub.stats().gaps == 0
    assert session.dropped[DropReason.NOT_RECEIVED] == 4


def test_a_latest_topic_merges_what_was_not_received_with_what_was_conflated() -> None:
    hub, (session,) = hub_client(DeliveryPolicy(kind="latest"), recovery=True)
    for offset in (1, 2, 5):
        hub.deliver(b"/t", 5, offset, b"x")
    reasons = int(SkipReason.NOT_RECEIVED | SkipReason.CONFLATED)
    assert frames_of(session) == [("skip", reasons, 0, 1, 4, 4), ("data", 0, 5)]


def test_a_gap_before_a_subscribers_announced_position_is_not_its_loss() -> None:
    hub, (first,) = hub_client(DeliveryPolicy(), recovery=True)
    hub.deliver(b"/t", 5, 1, b"x")
    late, _, subscribed = resume_subscribe(hub, "c1", None, offset=3, policy=DeliveryPolicy())
    assert subscribed["offset"] == 3
    hub.deliver(b"/t", 5, 5, b"x")
    not_received = int(SkipReason.NOT_RECEIVED)
    assert frames_of(first) == [("data", 0, 1), ("skip", not_received, 0, 2, 4, 3), ("data", 0, 5)]
    assert frames_of(late) == [("skip", not_received, 0, 4, 4, 1), ("data", 0, 5)]


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
    """The new router's history starts afresh: what the client missed is lost, told once by the
    restarted frame (with the new epoch) before the new sequence's first frame."""
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
    hub.router_message(subscribe_ok(subscribe, policy, epoch=9))
    assert not hub.catching_up
    hub.deliver(b"/t", 9, 1, b"x")
    assert frames_of(session) == [("restart", 0, 9), ("data", 0, 1)]
    assert hub.drain_actions() == []


def test_what_a_router_published_while_it_had_lost_the_edge_is_refilled_on_a_reliable_topic() -> None:
    """The same router (same epoch) took the client back at offset 6, having routed nothing to
    the edge since offset 2: the edge asks its history for 3 to 6 before the next live frame."""
    hub, (session,) = hub_client(RELIABLE, recovery=True)
    for offset in (1, 2):
        hub.deliver(b"/t", 5, offset, b"m%d" % offset)
    assert frames_of(session) == [("data", 0, 1), ("data", 0, 2)]
    register, subscribe = hub.resync()
    assert isinstance(register, wire.RegisterClient)
    assert isinstance(subscribe, wire.Subscribe)
    hub.router_message(wire.Registered(request_id=register.request_id, client_id="c0", user="u"))
    hub.router_message(subscribe_ok(subscribe, RELIABLE, epoch=5, offset=6))
    request = recover_request(hub)
    assert (request.epoch, request.from_offset, request.to_offset) == (5, 2, 6)
    answer(hub, request, {offset: b"m%d" % offset for offset in range(1, 7)})
    hub.deliver(b"/t", 5, 7, b"m7")
    assert frames_of(session) == [("data", 0, offset) for offset in range(3, 8)]


def test_what_a_router_published_while_it_had_lost_the_edge_is_a_not_received_skip() -> None:
    hub, (session,) = hub_client(DeliveryPolicy(), recovery=True)
    hub.deliver(b"/t", 5, 1, b"x")
    register, subscribe = hub.resync()
    assert isinstance(register, wire.RegisterClient)
    assert isinstance(subscribe, wire.Subscribe)
    hub.router_message(wire.Registered(request_id=register.request_id, client_id="c0", user="u"))
    hub.router_message(subscribe_ok(subscribe, DeliveryPolicy(), epoch=5, offset=4))
    hub.deliver(b"/t", 5, 5, b"x")
    assert frames_of(session) == [
        ("data", 0, 1),
        ("skip", int(SkipReason.NOT_RECEIVED), 0, 2, 4, 3),
        ("data", 0, 5),
    ]
