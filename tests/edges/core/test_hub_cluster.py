"""EdgeHub with a cluster of routers (edges/core/hub.py, routes.py, requests.py): where each request
goes, one reply per request, subscriptions moving with their shard, a router welcomed again getting
back only its own, and data that continues across owners. The routers are tests/edges/core/
cluster_routers.py's."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from edges.core.client_wire import client_error_code
from edges.core.hub import EdgeHub, ToRouter, UnwatchData, WatchData
from edges.core.output import Data, Reply, Skipped
from edges.core.session import ClientSession, EdgeLimits, State
from router import wire
from router.core.errors import ErrorCode
from router.core.policy import DeliveryPolicy
from router.wire import NO_OWNER, ShardMap
from tests.edges.core.cluster_routers import FakeCluster, client_op, connect, topic_in
from tests.edges.core.hub_clients import view
from tests.strategies import scaled_examples

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


def test_a_not_owner_that_reaches_a_client_says_retry() -> None:
    assert client_error_code(ErrorCode.NOT_OWNER) == ErrorCode.UNAVAILABLE


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


def test_a_subscription_moves_and_comes_back_with_the_clients_max_rate() -> None:
    hub, cluster, sessions = started("c1")
    client_op(hub, cluster, "c1", op="subscribe", id=1, topic=A0, max_rate=3)
    client_op(hub, cluster, "c1", op="subscribe", id=2, topic=B2, max_rate=0.5)
    [first] = cluster.routers["ra"].inbox
    assert isinstance(first, wire.Subscribe)
    assert first.max_rate == 3.0
    cluster.answer_all()
    replies(sessions["c1"])
    for _ in range(3):
        cluster.publish(A0)

    cluster.give(0, "rb")
    cluster.send_map("rb")
    [moved] = [m for m in cluster.routers["rb"].inbox if isinstance(m, wire.Subscribe)]
    assert (moved.topic, moved.max_rate, moved.resume_epoch, moved.resume_offset) == (A0, 3.0, 7, 3)
    cluster.answer_all()

    again = [m for m in cluster.welcome("rb") if isinstance(m, wire.Subscribe)]
    assert sorted((m.topic, m.max_rate) for m in again) == sorted([(A0, 3.0), (B2, 0.5)])
    cluster.answer_all()
    assert replies(sessions["c1"]) == []
    lane = sessions["c1"].lane(0)
    assert lane is not None
    assert lane.rate is None, "a reliable topic has no rate, the client's neither"
    hub.router_message(wire.PolicyUpdate(topic=A0, policy=DeliveryPolicy()), "rb")
    assert lane.rate == 3.0


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


def test_a_lane_behind_stays_behind_across_owners_and_is_refilled_by_the_new_one() -> None:
    hub = EdgeHub(EdgeLimits(queue_max_messages=2))
    cluster = FakeCluster(hub)
    for shard, router_id in enumerate(["ra", "ra", "rb", "rb"]):
        cluster.give(shard, router_id)
    cluster.welcome("ra")
    cluster.send_map("ra")
    cluster.welcome("rb")
    session = connect(hub, cluster, "c1")
    cluster.answer_all()
    subscribed(hub, cluster, "c1", A0)
    replies(session)
    for _ in range(5):
        cluster.publish(A0)
    assert [frame[2] for frame in data(session)] == [1, 2]
    cluster.carry_out()
    [recover] = cluster.routers["ra"].inbox
    assert isinstance(recover, wire.Recover)
    assert (recover.from_offset, recover.to_offset) == (2, 5)

    cluster.give(0, "rb")
    cluster.send_map("rb")
    [moved, again] = cluster.routers["rb"].inbox
    assert isinstance(moved, wire.Subscribe)
    assert (moved.resume_epoch, moved.resume_offset) == (7, 2)
    assert isinstance(again, wire.Recover)
    cluster.answer_all()
    got = data(session)
    cluster.answer_all()
    cluster.carry_out()
    cluster.answer_all()
    got += data(session)
    assert [frame[2] for frame in got] == [3, 4, 5], "nothing skipped, nothing twice"
    assert hub.stats().unexpected_replies == 0


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


def test_a_link_welcomed_by_a_new_router_process_loses_what_the_old_one_had() -> None:
    hub, cluster, sessions = started("c1")
    subscribed(hub, cluster, "c1", A0)
    replies(sessions["c1"])
    client_op(hub, cluster, "c1", op="unsubscribe", id=4, topic=A0)
    client_op(hub, cluster, "c1", op="subscribe", id=5, topic=A1)
    cluster.routers["ra"].inbox.clear()
    messages = cluster.welcome("rz", replaces="ra")
    assert [type(m).__name__ for m in messages] == ["RegisterClient"], "rz serves nothing yet"
    assert replies(sessions["c1"]) == [{"op": "unsubscribed", "id": 4, "topic": A0}]
    cluster.give(0, "rz")
    cluster.give(1, "rz")
    cluster.send_map("rz")
    cluster.answer_all()
    assert [(r["op"], r["id"]) for r in replies(sessions["c1"])] == [("subscribed", 5)]
    assert cluster.routers["rz"].subs == {("c1", A1)}


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


# ---------------------------------------------------------------- the machine

ROUTERS = ["ra", "rb", "rc"]
CLIENTS = ["c0", "c1", "c2"]
TOPICS = [topic_in(shard, prefix) for shard in range(4) for prefix in ("/m", "/n")]


@dataclass
class Reader:
    """What one client read: each request's replies, and each topic's data offsets."""

    replies: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    channels: dict[int, str] = field(default_factory=dict)
    starts: dict[str, int] = field(default_factory=dict)
    offsets: dict[str, list[int]] = field(default_factory=dict)
    other: list[object] = field(default_factory=list)


class ClusterMachine(RuleBasedStateMachine):
    """Clients of one edge and three routers of a cluster: shards change owner, maps arrive late
    and out of order, routers lose the edge and welcome it again, replies come whenever. Once
    everything has settled, every subscription is held by its topic's owner and no other router,
    every request was answered once, and each client got every message of its topics, in order,
    once (``reliable`` topics keep their sequence across owners)."""

    def __init__(self) -> None:
        super().__init__()
        self.hub = EdgeHub(EdgeLimits(queue_max_messages=3))
        self.cluster = FakeCluster(self.hub)
        self.readers: dict[str, Reader] = {}
        self.sessions: dict[str, ClientSession] = {}
        self.request_ids = iter(range(1, 1_000_000))
        self.lost: set[str] = set()
        self.maps: list[ShardMap] = []
        self.orphans = False
        """A client left while routers had requests to answer: their replies are unexpected."""

    @initialize()
    def start(self) -> None:
        for shard in range(4):
            self.cluster.give(shard, ROUTERS[shard % 2])
        self.cluster.welcome("ra")
        self.cluster.send_map("ra")
        self.cluster.welcome("rb")
        self.cluster.router("rc")
        self.lost.add("rc")
        self.maps.append(self.cluster.shard_map())

    # ------------------------------------------------------------ clients

    @precondition(lambda self: len(self.sessions) < len(CLIENTS))
    @rule()
    def client_connects(self) -> None:
        client_id = next(c for c in CLIENTS if c not in self.sessions)
        note(f"{client_id} connects")
        self.sessions[client_id] = connect(self.hub, self.cluster, client_id)
        self.readers[client_id] = Reader()

    @precondition(lambda self: self.sessions)
    @rule(data=st.data(), topic=st.sampled_from(TOPICS))
    def client_subscribes(self, data: st.DataObject, topic: str) -> None:
        client_id = data.draw(st.sampled_from(sorted(self.sessions)))
        session = self.sessions[client_id]
        if session.state is not State.READY:
            return
        reader = self.readers[client_id]
        if topic in reader.starts or any(r["asked"] == topic for r in self._waiting(reader)):
            return
        request_id = next(self.request_ids)
        note(f"{client_id} subscribes to {topic} ({request_id})")
        reader.replies[request_id] = []
        client_op(self.hub, self.cluster, client_id, op="subscribe", id=request_id, topic=topic)
        reader.replies[request_id].append({"asked": topic})

    @precondition(lambda self: self.sessions)
    @rule(data=st.data())
    def client_unsubscribes(self, data: st.DataObject) -> None:
        client_id = data.draw(st.sampled_from(sorted(self.sessions)))
        reader = self.readers[client_id]
        if not reader.starts:
            return
        topic = data.draw(st.sampled_from(sorted(reader.starts)))
        request_id = next(self.request_ids)
        note(f"{client_id} unsubscribes from {topic} ({request_id})")
        reader.replies[request_id] = [{"asked": topic}]
        del reader.starts[topic]
        client_op(self.hub, self.cluster, client_id, op="unsubscribe", id=request_id, topic=topic)

    @precondition(lambda self: self.sessions)
    @rule(data=st.data())
    def client_leaves(self, data: st.DataObject) -> None:
        client_id = data.draw(st.sampled_from(sorted(self.sessions)))
        note(f"{client_id} leaves")
        self.read()
        if any(router.inbox for router in self.cluster.routers.values()):
            self.orphans = True
        del self.sessions[client_id]
        del self.readers[client_id]
        self.hub.client_closed(client_id)
        self.cluster.carry_out()

    @staticmethod
    def _waiting(reader: Reader) -> list[dict[str, Any]]:
        return [got[0] for got in reader.replies.values() if len(got) == 1]

    # ------------------------------------------------------------ routers

    @rule(router=st.sampled_from(ROUTERS), count=st.integers(1, 4))
    def router_answers(self, router: str, count: int) -> None:
        if router not in self.lost:
            note(f"{router} answers {count}")
            self.cluster.answer(router, count)

    @rule(shard=st.integers(0, 3), router=st.sampled_from(ROUTERS))
    def shard_changes_owner(self, shard: int, router: str) -> None:
        note(f"shard {shard} -> {router}")
        self.cluster.give(shard, router)
        self.maps.append(self.cluster.shard_map())

    @rule(data=st.data(), sender=st.sampled_from(ROUTERS))
    def a_map_arrives(self, data: st.DataObject, sender: str) -> None:
        """The newest map, or an older one (a router that has not heard yet)."""
        if sender in self.lost:
            return
        sent = data.draw(st.sampled_from(self.maps))
        note(f"{sender} sends the map {sent.owners}")
        self.hub.shard_map(sender, sent, self.cluster.now)
        self.cluster.carry_out()

    @precondition(lambda self: len(self.lost) < 2)
    @rule(router=st.sampled_from(ROUTERS))
    def router_loses_the_edge(self, router: str) -> None:
        if router in self.lost:
            return
        note(f"{router} loses the edge")
        self.lost.add(router)
        self.cluster.routers[router].inbox.clear()
        self.hub.router_lost(router)
        self.cluster.carry_out()

    @rule(router=st.sampled_from(ROUTERS))
    def router_welcomes(self, router: str) -> None:
        note(f"{router} welcomes the edge")
        self.lost.discard(router)
        self.cluster.welcome(router)

    @rule()
    def a_second_passes(self) -> None:
        self.hub.cluster_tick()
        self.cluster.carry_out()

    @rule(topic=st.sampled_from(TOPICS), count=st.sampled_from([1, 1, 5]))
    def messages_are_published(self, topic: str, count: int) -> None:
        """One message, or more than a client's queue holds: its lane falls behind and is refilled
        from the history, at whichever router serves the topic then."""
        for _ in range(count):
            offset = self.cluster.publish(topic)
        note(f"{topic} up to @{offset}")

    # ------------------------------------------------------------ what clients read

    def read(self) -> None:
        for client_id, session in self.sessions.items():
            reader = self.readers[client_id]
            for item in session.data_to_send():
                if isinstance(item, Reply):
                    self._reply(reader, json.loads(item.text))
                    continue
                if not isinstance(item, Data | Skipped):
                    continue
                [seen] = view([item])
                assert seen[0] == "data", f"{client_id}: nothing is lost or restarted here: {seen}"
                _, channel, offset = seen
                assert isinstance(channel, int)
                assert isinstance(offset, int)
                topic = reader.channels[channel]
                got = reader.offsets.setdefault(topic, [])
                assert not got or got[-1] == offset - 1, (client_id, topic, got[-3:], offset)
                got.append(offset)

    def _reply(self, reader: Reader, reply: dict[str, Any]) -> None:
        assert reply.get("code") != ErrorCode.NOT_OWNER, reply
        assert reply["op"] != "error", reply
        request_id = reply.get("id")
        if request_id is None:
            reader.other.append(reply)
            return
        asked = reader.replies[request_id]
        assert len(asked) == 1, f"a second reply to {request_id}: {[*asked, reply]}"
        asked.append(reply)
        if reply["op"] == "subscribed":
            reader.channels[reply["channel"]] = reply["topic"]
            reader.starts[reply["topic"]] = reply["offset"]
            reader.offsets[reply["topic"]] = [reply["offset"]]

    @invariant()
    def each_request_is_answered_at_most_once(self) -> None:
        self.read()
        assert self.orphans or self.hub.stats().unexpected_replies == 0

    @invariant()
    def a_subscription_is_at_its_topics_owner_or_nowhere(self) -> None:
        for router in self.cluster.routers.values():
            for client_id, topic in router.subs:
                assert router.serves(topic), (router, client_id, topic)

    def settle(self) -> None:
        """Clients read and routers answer until nothing is left to do."""
        for _ in range(100):
            self.read()
            self.cluster.carry_out()
            if not any(router.inbox for router in self.cluster.routers.values()):
                return
            self.cluster.answer_all()
        raise AssertionError("still busy after 100 rounds")

    def teardown(self) -> None:
        """Everything settles: every router welcomes the edge, each sends the newest map, ticks
        pass and every router answers all; then one more message of each topic."""
        for router_id in sorted(self.lost):
            self.cluster.welcome(router_id)
        self.lost.clear()
        for router_id in ROUTERS:
            self.cluster.send_map(router_id)
        for _ in range(3):
            self.cluster.answer_all()
            self.hub.cluster_tick()
            self.cluster.carry_out()
        self.settle()
        for topic in TOPICS:
            self.cluster.publish(topic)
        self.settle()
        for router in self.cluster.routers.values():
            held = {(c, t) for c, reader in self.readers.items() for t in reader.starts if router.serves(t)}
            assert router.subs == held, (router, router.subs ^ held)
        for client_id, reader in self.readers.items():
            for request_id, got in reader.replies.items():
                assert len(got) == 2, f"{client_id}'s request {request_id} unanswered: {got}"
            for topic, start in reader.starts.items():
                owner = next(r for r in self.cluster.routers.values() if r.serves(topic))
                assert (client_id, topic) in owner.subs, (client_id, topic, owner)
                last = self.cluster.sequences[topic].offset
                assert reader.offsets[topic] == list(range(start, last + 1)), (client_id, topic)


ClusterMachine.TestCase.settings = settings(
    max_examples=scaled_examples(150),
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestClusterMachine = ClusterMachine.TestCase


# ---------------------------------------------------------------- a shard with no owner


def test_a_subscribe_to_a_shard_with_no_owner_waits_counted_then_ends_with_unavailable() -> None:
    hub, cluster, sessions = started("c1")
    cluster.routers["rb"].lose(3)
    cluster.owners[3] = NO_OWNER
    cluster.send_map("ra")
    hub.client_text("c1", json.dumps({"op": "subscribe", "id": 4, "topic": B3}), 100.0)
    hub.client_text("c1", json.dumps({"op": "subscribe", "id": 5, "topic": B2}), 100.0)
    cluster.carry_out()
    cluster.answer_all()
    assert [r["op"] for r in replies(sessions["c1"])] == ["subscribed"]
    assert [getattr(m, "topic", "") for m in cluster.routers["rb"].inbox] == [], "B3 went nowhere"
    assert hub.stats().topics_waiting == 1

    hub.tick(100.0 + EdgeLimits().request_timeout)
    cluster.carry_out()
    message = f"no router answered within {EdgeLimits().request_timeout:g} s; subscribe again"
    assert replies(sessions["c1"]) == [{"op": "error", "id": 4, "code": "unavailable", "message": message}]
    assert all(not router.inbox for router in cluster.routers.values()), "nothing to withdraw"
    assert (hub.stats().topics_waiting, hub.stats().unanswered) == (0, 1)
    assert not cluster.stray
