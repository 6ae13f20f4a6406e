"""Edge reports kept by the ConnectionManager, and the views the admin API reads."""

from __future__ import annotations

import pytest

from router.core import (
    ClientFigures,
    ClientInfo,
    ConnectionManager,
    DeliveryPolicy,
    EdgeTotals,
    ErrorCode,
    RefusedError,
    TopicRegistry,
    TopicSpec,
)

RELIABLE = TopicSpec(pattern="/alerts", policy=DeliveryPolicy(kind="reliable"))


def manager_with_clients() -> ConnectionManager:
    manager = ConnectionManager(TopicRegistry([RELIABLE]))
    for edge in ("e1", "e2"):
        manager.edge_hello(edge, "websocket", now=10.0)
    manager.register_client(ClientInfo(client_id="a", edge_id="e1", remote="10.0.0.1:5", connected_at=11.0))
    manager.register_client(ClientInfo(client_id="b", edge_id="e2", connected_at=12.0))
    manager.subscribe("a", "/alerts")
    manager.subscribe("a", "/t")
    manager.subscribe("b", "/t")
    return manager


def totals(delivered: int, dropped: dict[str, int], queued: int = 0) -> EdgeTotals:
    return EdgeTotals(
        clients=1, delivered=delivered, queued_messages=queued, queued_bytes=10 * queued, dropped=dropped
    )


def test_stats_add_up_every_edge_report() -> None:
    manager = manager_with_clients()
    manager.edge_report("e1", totals(5, {"queue_full": 2}, queued=3), {"/t": 2}, [], now=13.0)
    manager.edge_report("e2", totals(7, {"queue_full": 1, "conflated": 4}), {"/t": 5}, [], now=13.0)
    stats = manager.get_connection_stats()
    assert (stats.edge_delivered, stats.edge_queued_messages, stats.edge_queued_bytes) == (12, 3, 30)
    assert stats.edge_drops == {"queue_full": 3, "conflated": 4}
    assert {v.topic: v.edge_drops for v in manager.topic_views()} == {"/alerts": 0, "/t": 7}


def test_a_newer_report_replaces_totals_and_the_clients_it_lists() -> None:
    manager = manager_with_clients()
    manager.edge_report("e1", totals(1, {}), {}, [ClientFigures("a", 4, 400, 1)], now=13.0)
    manager.edge_report("e1", totals(2, {}), {}, [], now=14.0)
    (view,) = manager.client_views("e1")
    assert view.figures == ClientFigures("a", 4, 400, 1)
    manager.edge_report("e1", totals(3, {}), {}, [ClientFigures("a", 0, 0, 2)], now=15.0)
    assert manager.client_views("e1")[0].figures == ClientFigures("a", 0, 0, 2)
    assert manager.get_connection_stats().edge_delivered == 3


def test_figures_of_other_edges_clients_and_unheld_topics_are_ignored() -> None:
    manager = manager_with_clients()
    manager.edge_report("e1", totals(1, {}), {"/other": 9}, [ClientFigures("b", 1, 1, 1)], now=13.0)
    assert manager.client_views("e2")[0].figures is None
    assert all(v.edge_drops == 0 for v in manager.topic_views())


def test_a_gone_client_and_a_lost_edge_take_their_figures_with_them() -> None:
    manager = manager_with_clients()
    manager.edge_report(
        "e1", totals(1, {"queue_full": 1}), {"/t": 1}, [ClientFigures("a", 1, 1, 1)], now=13.0
    )
    manager.unregister_client("a")
    manager.register_client(ClientInfo(client_id="a", edge_id="e1"))
    assert manager.client_views("e1")[0].figures is None
    manager.edge_lost("e1", "test")
    assert manager.get_connection_stats().edge_drops == {}


def test_reports_from_unknown_edges_are_refused() -> None:
    manager = manager_with_clients()
    with pytest.raises(RefusedError) as refused:
        manager.edge_report("nobody", totals(1, {}), {}, [], now=13.0)
    assert refused.value.code is ErrorCode.UNKNOWN_EDGE


def test_views_show_edges_clients_and_topics() -> None:
    manager = manager_with_clients()
    manager.route_data("/alerts", b"xyz")
    manager.set_delivery_policy("/t", DeliveryPolicy(kind="latest"))
    edges = {v.edge_id: v for v in manager.edge_views()}
    assert (edges["e1"].clients, edges["e1"].topics, edges["e1"].connected_at, edges["e1"].totals) == (
        1,
        2,
        10.0,
        None,
    )
    clients = {v.info.client_id: v for v in manager.client_views()}
    assert clients["a"].topics == ("/alerts", "/t")
    assert (clients["a"].info.remote, clients["a"].info.connected_at, clients["a"].user) == (
        "10.0.0.1:5",
        11.0,
        "anonymous",
    )
    topics = {v.topic: v for v in manager.topic_views()}
    alerts, t = topics["/alerts"], topics["/t"]
    assert (alerts.subscribers, alerts.messages, alerts.bytes, alerts.overridden) == (1, 1, 3, False)
    assert alerts.history is not None
    assert (alerts.history.messages, alerts.history.last) == (1, 1)
    assert (t.subscribers, t.policy.kind, t.overridden, t.history) == (2, "latest", True, None)
