"""EdgeHub.report(): the edge's figures for the router, and drop_client's close codes."""

from __future__ import annotations

from edges.core.client_wire import CloseCode, encode_data_frame
from edges.core.hub import CloseClient, EdgeHub, EdgeLimits
from edges.core.reports import REPORT_BUDGET
from router import wire
from router.core import ClientFigures
from router.core.policy import DeliveryPolicy
from tests.edges.core.test_hub import connect, subscribe

LATEST = DeliveryPolicy(kind="latest")


def fill(hub: EdgeHub, topic: str, offsets: range) -> None:
    for offset in offsets:
        hub.deliver(topic.encode(), 5, offset, b"x" * 10)


def test_a_report_has_the_totals_topic_drops_and_changed_clients() -> None:
    hub = EdgeHub(EdgeLimits(queue_max_messages=4))
    connect(hub, "a")
    connect(hub, "b")
    subscribe(hub, "a", "/t", offset=10, policy=DeliveryPolicy())
    subscribe(hub, "b", "/v", offset=10, policy=LATEST)
    hub.drain_actions()
    fill(hub, "/t", range(11, 21))
    fill(hub, "/v", range(11, 14))
    [report] = hub.report()
    assert report.totals.clients == 2
    assert report.totals.queued_messages == 5
    assert report.totals.dropped == {"queue_full": 6, "conflated": 2}
    assert report.topic_drops == {"/t": 6, "/v": 2}
    frame = len(encode_data_frame(0, 0, b"x" * 10))
    assert {c.client_id: c for c in report.clients} == {
        "a": ClientFigures("a", 4, 4 * frame, 6),
        "b": ClientFigures("b", 1, frame, 2),
    }

    [again] = hub.report()
    assert again.clients == []
    assert again.topic_drops == {"/t": 6, "/v": 2}
    hub.session("a").data_to_send()  # type: ignore[union-attr]
    assert hub.report()[0].clients == [ClientFigures("a", 0, 0, 6)]


def test_every_client_is_reported_again_after_a_resync() -> None:
    hub = EdgeHub()
    connect(hub, "a")
    hub.report()
    hub.resync()
    assert hub.report()[0].clients == [ClientFigures("a", 0, 0, 0)]


def test_topic_drops_stay_when_a_subscriber_leaves() -> None:
    hub = EdgeHub(EdgeLimits(queue_max_messages=1))
    for client in ("a", "b"):
        connect(hub, client)
        subscribe(hub, client, "/t", offset=10, policy=DeliveryPolicy())
    fill(hub, "/t", range(11, 14))
    hub.close_client("a", CloseCode.NORMAL, "bye")
    hub.client_closed("a")
    assert hub.report()[0].topic_drops == {"/t": 4}


def test_a_big_report_is_split_into_messages_that_fit() -> None:
    hub = EdgeHub()
    for n in range(3000):
        connect(hub, f"client-with-a-longish-name-{n:05}")
    reports = hub.report()
    assert len(reports) > 1
    assert sum(len(r.clients) for r in reports) == 3000
    for report in reports:
        assert len(wire.encode_control(report)) < wire.MAX_CONTROL_BYTES
        assert REPORT_BUDGET < wire.MAX_CONTROL_BYTES
        assert report.totals.clients == 3000


def test_drop_client_closes_with_its_code() -> None:
    hub = EdgeHub()
    connect(hub, "a")
    connect(hub, "b")
    connect(hub, "c")
    hub.router_message(wire.DropClient(client_id="a", reason="kicked"))
    hub.router_message(wire.DropClient(client_id="b", reason="drain", code=wire.CLOSE_GOING_AWAY))
    hub.router_message(wire.DropClient(client_id="c", reason="odd", code=1000))
    closes = [a for a in hub.drain_actions() if isinstance(a, CloseClient)]
    assert closes == [
        CloseClient("a", CloseCode.DROPPED, "kicked"),
        CloseClient("b", CloseCode.GOING_AWAY, "drain"),
        CloseClient("c", CloseCode.DROPPED, "odd"),
    ]
