"""ControlPlane's operator requests (policy, kick, drain) and the edges' stats reports."""

from __future__ import annotations

import pytest

from router.core import ClientFigures, DeliveryPolicy, EdgeTotals, ErrorCode, RefusedError
from router.core.control import DRAINED, KICKED, ControlPlane, Demand, ToEdge, Upstream
from router.wire import (
    CLOSE_DROPPED,
    CLOSE_GOING_AWAY,
    DropClient,
    EdgeStatsReport,
    PolicyUpdate,
    decode_edge_message,
    decode_router_message,
    encode_control,
)
from tests.router.core.test_control import hello, make_plane, register, send, subscribe

T = 1_700_000_000.0
"""The Unix time of the operator's requests."""


@pytest.fixture
def plane() -> ControlPlane:
    plane = make_plane()
    for edge in ("e1", "e2"):
        hello(plane, edge)
    register(plane, "e1", "a")
    register(plane, "e1", "b")
    register(plane, "e2", "c")
    for client in ("a", "b", "c"):
        subscribe(plane, "e1" if client != "c" else "e2", client, "/t")
    return plane


def test_a_policy_change_goes_to_every_edge_holding_the_topic(plane: ControlPlane) -> None:
    policy = DeliveryPolicy(kind="latest", max_rate=5.0)
    out = plane.set_delivery_policy("/t", policy)
    told = [ToEdge(e, PolicyUpdate(topic="/t", policy=policy)) for e in ("e1", "e2")]
    assert out == [*told, Demand("/t", 5.0)], "the policy's cap lowers the demand producers are told"
    assert plane.manager.get_delivery_policy("/t") == policy


def test_a_kicked_client_is_forgotten_and_its_edge_told_to_close_it(plane: ControlPlane) -> None:
    assert plane.kick("a", unix_time=T) == [
        ToEdge("e1", DropClient(client_id="a", reason=KICKED, code=CLOSE_DROPPED))
    ]
    assert plane.manager.client_edge("a") is None
    assert plane.kick("c", "bye", unix_time=T) == [ToEdge("e2", DropClient(client_id="c", reason="bye"))]
    with pytest.raises(RefusedError) as refused:
        plane.kick("a", unix_time=T)
    assert refused.value.code is ErrorCode.UNKNOWN_CLIENT


def test_the_last_subscriber_kicked_unwatches_the_topic(plane: ControlPlane) -> None:
    plane.kick("a", unix_time=T)
    plane.kick("c", unix_time=T)
    assert plane.kick("b", unix_time=T) == [
        Demand("/t", 0.0),
        Upstream("/t", watched=False),
        ToEdge("e1", DropClient(client_id="b", reason=KICKED)),
    ]


def test_a_drained_edge_closes_every_client_with_going_away(plane: ControlPlane) -> None:
    out = plane.drain("e1", unix_time=T)
    drop = [DropClient(client_id=c, reason=DRAINED, code=CLOSE_GOING_AWAY) for c in ("a", "b")]
    assert out == [ToEdge("e1", message) for message in drop]
    assert [c.client_id for c in plane.manager.get_active_clients()] == ["c"]
    assert plane.manager.is_edge_known("e1")
    for item in out:
        assert isinstance(item, ToEdge)
        assert decode_router_message(encode_control(item.message)) == item.message
    with pytest.raises(RefusedError) as refused:
        plane.drain("nobody", unix_time=T)
    assert refused.value.code is ErrorCode.UNKNOWN_EDGE


def test_an_edge_report_is_kept_and_needs_no_reply(plane: ControlPlane) -> None:
    report = EdgeStatsReport(
        totals=EdgeTotals(clients=2, delivered=9, dropped={"queue_full": 3}),
        topic_drops={"/t": 3},
        clients=[ClientFigures("a", 2, 200, 3)],
    )
    assert decode_edge_message(encode_control(report)) == report
    assert send(plane, "e1", report, now=1.0) == []
    assert plane.manager.get_connection_stats().edge_drops == {"queue_full": 3}
    figures = {v.info.client_id: v.figures for v in plane.manager.client_views()}
    assert figures == {"a": ClientFigures("a", 2, 200, 3), "b": None, "c": None}


def test_an_old_drop_client_without_a_code_means_dropped() -> None:
    message = decode_router_message(b"\x83\xa4type\xabdrop_client\xa9client_id\xa1a\xa6reason\xa1r")
    assert message == DropClient(client_id="a", reason="r", code=CLOSE_DROPPED)
