"""EdgeHub with a cluster of routers (edges/core/hub.py, routes.py, requests.py): where each request
goes, one reply per request, subscriptions moving with their shard, a router welcomed again getting
back only its own, and data that continues across owners. The routers are tests/edges/core/
cluster_routers.py's."""

from __future__ import annotations

import json
from typing import Any

from edges.core.hub import EdgeHub, ToRouter, UnwatchData, WatchData
from edges.core.output import Reply
from edges.core.session import ClientSession
from router import wire
from router.core.errors import ErrorCode
from router.core.policy import DeliveryPolicy
from tests.edges.core.cluster_routers import FakeCluster, client_op, connect, topic_in
from tests.edges.core.hub_clients import view

A0, A1, B2, B3 = topic_in(0), topic_in(1), topic_in(2), topic_in(3)
"""Topics of shards 0 and 1 (router ra's at first) and 2 and 3 (rb's)."""


def replies(session: ClientSession) -> list[dict[str, Any]]:
    return [json.loads(item.text) for item in session.data_to_send() if isinstance(item, Reply)]


def data(session: ClientSession) -> list[tuple[object, ...]]:
    return view([item for item in session.data_to_send() if not isinstance(item, Reply)])


def started(*client_ids: str) -> tuple[EdgeHub, FakeCluster, dict[str, ClientSession]]:
    """A hub welcomed by ra (its link's router), which sent the first shard map (ra: shards 0
    and 1, rb: 2 and 3), then by rb; ``client_ids`` connected."""
    hub = EdgeHub()
    cluster = FakeCluster(hub)
    for shard, router_id in enumerate(["ra", "ra", "rb", "rb"]):
        cluster.give(shard, router_id)
    cluster.welcome("ra")
    cluster.send_map("ra")
    cluster.welcome("rb")
    sessions = {client_id: connect(hub, cluster, client_id) for client_id in client_ids}
    cluster.answer_all()
    for session in sessions.values():
        session.data_to_send()
    return hub, cluster, sessions


def subscribed(hub: EdgeHub, cluster: FakeCluster, client_id: str, *topics: str) -> None:
    for number, topic in enumerate(topics, 1):
        client_op(hub, cluster, client_id, op="subscribe", id=number, topic=topic)
    cluster.answer_all()


# ---------------------------------------------------------------- entering cluster mode


def test_one_router_never_addresses_a_router() -> None:
    hub = EdgeHub()
    hub.open_client("c1")
    hub.client_text("c1", '{"op":"connect"}')
    [action] = hub.drain_actions()
    assert isinstance(action, ToRouter)
    assert action.router == ""
    assert hub.routes is None


def test_the_first_map_moves_what_the_seed_does_not_serve() -> None:
    hub = EdgeHub()
    cluster = FakeCluster(hub)
    for shard, router_id in enumerate(["ra", "ra", "rb", "rb"]):
        cluster.give(shard, router_id)
    cluster.welcome("ra")
    session = connect(hub, cluster, "c1")
    cluster.answer("ra")
    client_op(hub, cluster, "c1", op="subscribe", id=1, topic=A0)
    client_op(hub, cluster, "c1", op="subscribe", id=2, topic=B2)
    assert [getattr(m, "topic", "") for m in cluster.routers["ra"].inbox] == [A0, B2]

    cluster.send_map("ra")
    cluster.answer("ra")
    assert hub.stats().unexpected_replies == 0, "the not_owner of a subscribe that moved is expected"
    got = replies(session)
    assert [r["op"] for r in got] == ["connected", "subscribed"]
    assert got[1]["topic"] == A0

    cluster.welcome("rb")
    assert [type(m).__name__ for m in cluster.routers["rb"].inbox] == ["RegisterClient", "Subscribe"]
    cluster.answer("rb")
    [reply] = replies(session)
    assert (reply["op"], reply["id"], reply["topic"]) == ("subscribed", 2, B2)
    assert not cluster.stray


# ---------------------------------------------------------------- where requests go


def test_registers_and_unregisters_go_to_every_router_and_one_reply_counts() -> None:
    hub, cluster, _ = started()
    session = connect(hub, cluster, "c1")
    [to_a] = cluster.routers["ra"].inbox
    [to_b] = cluster.routers["rb"].inbox
    assert isinstance(to_a, wire.RegisterClient)
    assert to_a == to_b
    cluster.answer("rb")
    assert [r["op"] for r in replies(session)] == ["connected"]
    cluster.answer("ra")
    assert replies(session) == []
    assert hub.stats().unexpected_replies == 0

    hub.client_closed("c1")
    cluster.carry_out()
    for router_id in ("ra", "rb"):
        [gone] = cluster.routers[router_id].inbox
        assert gone == wire.UnregisterClient(client_id="c1", reason="connection closed")


def test_a_reply_from_a_router_not_asked_is_unexpected() -> None:
    hub, cluster, _ = started()
    hub.open_client("c1")
    hub.client_text("c1", '{"op":"connect"}')
    cluster.carry_out()
    register = cluster.routers["ra"].inbox[0]
    assert isinstance(register, wire.RegisterClient)
    hub.router_message(wire.Registered(request_id=register.request_id, client_id="c1", user="u"), "rc")
    assert hub.stats().unexpected_replies == 1


def test_a_topics_requests_go_to_its_owner_only() -> None:
    hub, cluster, sessions = started("c1")
    subscribed(hub, cluster, "c1", A0, B2)
    ra, rb = cluster.routers["ra"], cluster.routers["rb"]
    assert ("c1", A0) in ra.subs
    assert ("c1", B2) in rb.subs
    assert ("c1", B2) not in ra.subs
    assert ("c1", A0) not in rb.subs
    assert [r["topic"] for r in replies(sessions["c1"])] == [A0, B2]

    client_op(hub, cluster, "c1", op="unsubscribe", id=3, topic=B2)
    assert [type(m).__name__ for m in rb.inbox] == ["Unsubscribe"]
    assert ra.inbox == []
    cluster.answer_all()
    assert replies(sessions["c1"]) == [{"op": "unsubscribed", "id": 3, "topic": B2}]


def test_refresh_goes_everywhere_and_every_routers_revocations_apply() -> None:
    hub, cluster, sessions = started("c1")
    revoked_a, revoked_b = topic_in(0, "/revoked"), topic_in(2, "/revoked")
    subscribed(hub, cluster, "c1", revoked_a, revoked_b, A1)
    replies(sessions["c1"])
    client_op(hub, cluster, "c1", op="refresh", id=9, token="new")
    cluster.answer("ra")
    cluster.answer("rb")
    got = replies(sessions["c1"])
    assert got[0]["op"] == "refreshed"
    assert sorted(r["topic"] for r in got[1:]) == sorted([revoked_a, revoked_b])
    assert all(r["code"] == ErrorCode.FORBIDDEN for r in got[1:])
    assert hub.stats().unexpected_replies == 0


def test_a_policy_counts_only_from_the_owner() -> None:
    hub, cluster, _ = started("c1")
    subscribed(hub, cluster, "c1", A0)
    latest = DeliveryPolicy(kind="latest")
    hub.router_message(wire.PolicyUpdate(topic=A0, policy=latest), "rb")
    assert hub.policy_of(A0) != latest
    hub.router_message(wire.PolicyUpdate(topic=A0, policy=latest), "ra")
    assert hub.policy_of(A0) == latest


# ---------------------------------------------------------------- waiting for an owner


def test_a_subscribe_waits_for_its_owner_to_be_welcomed() -> None:
    hub = EdgeHub()
    cluster = FakeCluster(hub)
    for shard, router_id in enumerate(["ra", "ra", "rb", "rb"]):
        cluster.give(shard, router_id)
    cluster.welcome("ra")
    cluster.send_map("ra")
    session = connect(hub, cluster, "c1")
    cluster.answer_all()
    replies(session)
    client_op(hub, cluster, "c1", op="subscribe", id=1, topic=B2)
    assert cluster.routers["ra"].inbox == []
    assert replies(session) == []
    cluster.router("rb")
    cluster.welcome("rb")
    assert [type(m).__name__ for m in cluster.routers["rb"].inbox] == ["RegisterClient", "Subscribe"]
    register = cluster.routers["rb"].inbox[0]
    assert isinstance(register, wire.RegisterClient)
    cluster.answer_all()
    assert [(r["op"], r["topic"]) for r in replies(session)] == [("subscribed", B2)]


def test_an_unsubscribe_with_no_owner_to_ask_is_done_at_once() -> None:
    hub, cluster, sessions = started("c1")
    subscribed(hub, cluster, "c1", B2)
    replies(sessions["c1"])
    hub.router_lost("rb")
    client_op(hub, cluster, "c1", op="unsubscribe", id=5, topic=B2)
    assert cluster.routers["rb"].inbox == []
    assert replies(sessions["c1"]) == [{"op": "unsubscribed", "id": 5, "topic": B2}]


def test_not_owner_is_asked_again_on_a_tick_and_at_the_new_owner_when_the_view_changes() -> None:
    hub, cluster, sessions = started("c1")
    cluster.give(2, "rc")
    cluster.router("rc")
    cluster.welcome("rc")
    cluster.answer_all()
    client_op(hub, cluster, "c1", op="subscribe", id=1, topic=B2)
    cluster.answer("rb")
    assert replies(sessions["c1"]) == [], "not_owner is not the client's business"
    assert cluster.routers["rb"].inbox == []
    hub.cluster_tick()
    cluster.carry_out()
    assert [type(m).__name__ for m in cluster.routers["rb"].inbox] == ["Subscribe"]
    cluster.answer("rb")
    cluster.send_map("rc")
    [again] = cluster.routers["rc"].inbox
    assert isinstance(again, wire.Subscribe)
    cluster.answer("rc")
    assert [(r["op"], r["id"]) for r in replies(sessions["c1"])] == [("subscribed", 1)]
    assert ("c1", B2) in cluster.routers["rc"].subs
    assert hub.stats().unexpected_replies == 0


# ---------------------------------------------------------------- moving with the shard


def test_a_shard_that_changes_owner_moves_its_subscriptions_with_their_position() -> None:
    hub, cluster, sessions = started("c1", "c2")
    subscribed(hub, cluster, "c1", A0)
    subscribed(hub, cluster, "c2", A0)
    for session in sessions.values():
        replies(session)
    for _ in range(3):
        cluster.publish(A0)
    assert [frame[2] for frame in data(sessions["c1"])] == [1, 2, 3]
    data(sessions["c2"])

    cluster.give(0, "rb")
    cluster.publish(A0)
    cluster.send_map("rb")
    moved = [m for m in cluster.routers["rb"].inbox if isinstance(m, wire.Subscribe)]
    assert sorted((m.client_id, m.resume_epoch, m.resume_offset) for m in moved) == [
        ("c1", 7, 3),
        ("c2", 7, 3),
    ]
    cluster.answer("rb")
    cluster.answer_all()
    cluster.publish(A0)
    for session in sessions.values():
        assert [frame[2] for frame in data(session)] == [4, 5], "the gap came from the history"
        assert replies(session) == []
    assert ("c1", A0) in cluster.routers["rb"].subs


def test_data_from_the_old_owner_is_fenced_off() -> None:
    hub, cluster, sessions = started("c1")
    subscribed(hub, cluster, "c1", A0)
    replies(sessions["c1"])
    routes = hub.routes
    assert routes is not None
    assert routes.owners == {A0.encode(): "ra"}
    cluster.give(0, "rb")
    cluster.routers["ra"].subs.add(("c1", A0))
    cluster.send_map("rb")
    assert routes.owners == {A0.encode(): "rb"}
    cluster.publish(A0, by="ra")
    assert cluster.fenced == 1
    client_op(hub, cluster, "c1", op="unsubscribe", id=2, topic=A0)
    assert routes.owners == {}


def test_a_sequence_the_new_owner_starts_anew_is_told_as_a_restart() -> None:
    hub, cluster, sessions = started("c1")
    cluster.sequence(A0, DeliveryPolicy())
    subscribed(hub, cluster, "c1", A0)
    replies(sessions["c1"])
    cluster.publish(A0)
    assert [frame[2] for frame in data(sessions["c1"])] == [1]
    cluster.give(0, "rb")
    cluster.sequences[A0] = type(cluster.sequences[A0])(epoch=8, policy=DeliveryPolicy())
    cluster.send_map("rb")
    cluster.answer_all()
    cluster.publish(A0)
    assert data(sessions["c1"]) == [("restart", 0, 8), ("data", 0, 1)]


def test_a_recover_in_flight_to_the_old_owner_is_asked_of_the_new_one() -> None:
    hub, cluster, sessions = started("c1")
    subscribed(hub, cluster, "c1", A0)
    replies(sessions["c1"])
    cluster.publish(A0)
    data(sessions["c1"])
    cluster.sequences[A0].messages += [(2, b"x"), (3, b"y")]
    cluster.publish(A0)
    [recover] = cluster.routers["ra"].inbox
    assert isinstance(recover, wire.Recover)
    cluster.give(0, "rb")
    cluster.send_map("rb")
    cluster.answer("ra")
    cluster.answer_all()
    assert [frame[2] for frame in data(sessions["c1"])] == [2, 3, 4]
    assert any(isinstance(m, wire.Recover) for m in cluster.routers["rb"].received)


def test_the_same_router_under_a_new_lease_gets_the_subscriptions_again() -> None:
    hub, cluster, _ = started("c1")
    subscribed(hub, cluster, "c1", A0)
    cluster.routers["ra"].lose(0)
    cluster.give(0, "ra")
    cluster.send_map("ra")
    [again] = cluster.routers["ra"].inbox
    assert isinstance(again, wire.Subscribe)
    cluster.answer_all()
    assert ("c1", A0) in cluster.routers["ra"].subs


# ---------------------------------------------------------------- one router welcomed again


def test_a_router_welcomed_again_gets_back_its_own_and_disturbs_no_other() -> None:
    hub, cluster, sessions = started("c1", "c2")
    subscribed(hub, cluster, "c1", B2, B3)
    subscribed(hub, cluster, "c2", B2)
    replies(sessions["c1"])
    replies(sessions["c2"])
    client_op(hub, cluster, "c1", op="subscribe", id=7, topic=A0)
    client_op(hub, cluster, "c2", op="unsubscribe", id=8, topic=B2)
    [to_a] = cluster.routers["ra"].inbox
    assert isinstance(to_a, wire.Subscribe)

    messages = cluster.welcome("rb")
    kinds = [(type(m).__name__, getattr(m, "client_id", ""), getattr(m, "topic", "")) for m in messages]
    assert kinds[:2] == [("RegisterClient", "c1", ""), ("RegisterClient", "c2", "")]
    assert sorted(kinds[2:]) == [("Subscribe", "c1", B2), ("Subscribe", "c1", B3)]
    assert replies(sessions["c2"]) == [{"op": "unsubscribed", "id": 8, "topic": B2}]
    assert cluster.routers["ra"].inbox == [to_a], "nothing for ra"

    cluster.answer_all()
    assert [(r["op"], r["id"]) for r in replies(sessions["c1"])] == [("subscribed", 7)]
    assert replies(sessions["c2"]) == [], "registered again silently"
    assert cluster.routers["rb"].subs == {("c1", B2), ("c1", B3)}
    assert hub.stats().unexpected_replies == 0


def test_a_client_whose_only_register_was_lost_is_registered_again() -> None:
    hub, cluster, _ = started()
    hub.router_lost("rb")
    session = connect(hub, cluster, "c1")
    assert [type(m).__name__ for m in cluster.routers["ra"].inbox] == ["RegisterClient"]
    hub.router_lost("ra")
    cluster.carry_out()
    [register] = cluster.welcome("ra")
    assert isinstance(register, wire.RegisterClient)
    cluster.routers["ra"].inbox = [register]
    cluster.answer("ra")
    assert [r["op"] for r in replies(session)] == ["connected"]


def test_a_register_only_a_lost_router_had_goes_to_the_others() -> None:
    hub, cluster, _ = started()
    hub.router_lost("rb")
    session = connect(hub, cluster, "c1")
    cluster.welcome("rb")
    cluster.answer("rb")
    assert replies(session) == [], "rb's register was a silent one: ra's is the one the client waits for"
    cluster.routers["ra"].inbox.clear()
    hub.router_lost("ra")
    cluster.carry_out()
    [again] = cluster.routers["rb"].inbox
    assert isinstance(again, wire.RegisterClient)
    cluster.answer("rb")
    assert [r["op"] for r in replies(session)] == ["connected"]


def test_a_subscription_left_behind_by_a_lost_router_follows_the_view() -> None:
    hub, cluster, sessions = started("c1")
    subscribed(hub, cluster, "c1", B2)
    replies(sessions["c1"])
    hub.router_lost("rb")
    cluster.give(2, "ra")
    cluster.send_map("ra")
    [moved] = cluster.routers["ra"].inbox
    assert isinstance(moved, wire.Subscribe)
    assert moved.resume_epoch == 7
    cluster.answer_all()
    assert ("c1", B2) in cluster.routers["ra"].subs


def test_each_router_gets_its_own_reports() -> None:
    hub, cluster, _ = started("c1", "c2")
    [first_a] = hub.report("ra")
    [first_b] = hub.report("rb")
    assert len(first_a.clients) == len(first_b.clients) == 2
    assert hub.report("ra")[0].clients == []
    hub.router_lost("rb")
    cluster.welcome("rb")
    assert len(hub.report("rb")[0].clients) == 2


def test_a_subscription_is_at_most_in_one_place() -> None:
    hub, cluster, sessions = started("c1")
    subscribed(hub, cluster, "c1", A0, B2)
    for shard in range(4):
        cluster.give(shard, ["rb", "rb", "ra", "ra"][shard])
    cluster.send_map("ra")
    cluster.answer_all()
    for router in cluster.routers.values():
        for client_id, topic in router.subs:
            assert router.serves(topic), (router, client_id, topic)
    assert {t for _, t in cluster.routers["ra"].subs} == {B2}
    assert {t for _, t in cluster.routers["rb"].subs} == {A0}
    assert [r["op"] for r in replies(sessions["c1"])] == ["subscribed", "subscribed"]


def test_watch_and_unwatch_stay_one_per_topic() -> None:
    hub, cluster, _ = started("c1")
    hub.client_text("c1", json.dumps({"op": "subscribe", "id": 1, "topic": A0}))
    actions = hub.drain_actions()
    assert [a for a in actions if isinstance(a, WatchData)] == [WatchData(A0)]
    cluster.routers["ra"].inbox += [a.message for a in actions if isinstance(a, ToRouter)]
    cluster.answer_all()
    hub.client_text("c1", json.dumps({"op": "unsubscribe", "id": 2, "topic": A0}))
    assert [a for a in hub.drain_actions() if isinstance(a, UnwatchData)] == [UnwatchData(A0)]
