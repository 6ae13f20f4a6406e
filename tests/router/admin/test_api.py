"""The admin API (router/admin/api.py) over a real ConnectionManager and ControlPlane, no sockets."""

from __future__ import annotations

import asyncio
import json
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest

from router.admin.api import AdminApi
from router.admin.config import AdminSection, is_loopback, parse_listen
from router.admin.rates import RateMeter
from router.config import ConfigError, load_config
from router.core import (
    ClientFigures,
    ClientInfo,
    ConnectionManager,
    DeliveryPolicy,
    EdgeTotals,
    TopicRegistry,
    TopicSpec,
)
from router.core.control import DRAINED, KICKED, ControlPlane, Demand, Outbound, ToEdge
from router.core.shards import Holder
from router.core.views import ClusterView, ShardView
from router.http_messages import HttpRequest, HttpResponse
from router.wire import CLOSE_GOING_AWAY, DropClient, PolicyUpdate

TOKEN = "s3cret-token"
HOST = "127.0.0.1:7760"


class Router:
    """What the API acts on, as RouterServer does it, with what it would send kept in ``sent``."""

    def __init__(self) -> None:
        registry = TopicRegistry([TopicSpec(pattern="/video/*", policy=DeliveryPolicy(kind="latest"))])
        self.manager = ConnectionManager(registry)
        self.control = ControlPlane(
            self.manager, heartbeat_interval=1.0, heartbeat_timeout=5.0, router_id="r1", new_secret=str
        )
        self.sent: list[Outbound] = []
        self.cluster: ClusterView | None = None

    def set_delivery_policy(self, topic: str, policy: DeliveryPolicy) -> list[str]:
        out = self.control.set_delivery_policy(topic, policy)
        self.sent += out
        return [item.edge_id for item in out if isinstance(item, ToEdge)]

    def kick_client(self, client_id: str, reason: str = KICKED) -> str:
        edge_id = self.manager.client_edge(client_id)
        self.sent += self.control.kick(client_id, reason, unix_time=0.0)
        assert edge_id is not None
        return edge_id

    def drain_edge(self, edge_id: str) -> list[str]:
        clients = [c.client_id for c in self.manager.get_active_clients(edge_id)]
        self.sent += self.control.drain(edge_id, unix_time=0.0)
        return clients

    def cluster_view(self) -> ClusterView | None:
        return self.cluster


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def router() -> Router:
    router = Router()
    manager = router.manager
    manager.edge_hello("ws-1", "websocket", now=90.0)
    manager.edge_hello("ws-2", "websocket", now=90.0)
    manager.register_client(
        ClientInfo(client_id="ws-1/1", edge_id="ws-1", remote="10.1.1.1:4000", connected_at=95.0)
    )
    manager.register_client(ClientInfo(client_id="ws-2/1", edge_id="ws-2", connected_at=96.0))
    manager.subscribe("ws-1/1", "/video/main")
    manager.subscribe("ws-2/1", "/sensors/temp")
    return router


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_api(router: Router, clock: Clock, token: str | None = TOKEN) -> AdminApi:
    return AdminApi(router, token, 1.0, clock=clock, unix_clock=lambda: clock.now + 1_700_000_000)


def call(
    api: AdminApi,
    method: str,
    path: str,
    body: object = None,
    token: str | None = TOKEN,
    headers: dict[str, str] | None = None,
) -> tuple[HTTPStatus, Any]:
    all_headers = {"host": HOST, **({"authorization": f"Bearer {token}"} if token else {}), **(headers or {})}
    data = b"" if body is None else json.dumps(body).encode()
    path, _, query = path.partition("?")
    response: HttpResponse = asyncio.run(api.handle(HttpRequest(method, path, all_headers, data, "", query)))
    decoded = json.loads(response.body) if response.content_type == "application/json" else response.body
    return response.status, decoded


def test_requests_need_the_token(router: Router, clock: Clock) -> None:
    api = make_api(router, clock)
    assert call(api, "GET", "/api/stats", token=None)[0] == HTTPStatus.UNAUTHORIZED
    status, body = call(api, "GET", "/api/stats", token="wrong")
    assert (status, body["error"]["code"]) == (HTTPStatus.UNAUTHORIZED, "unauthorized")
    assert call(api, "GET", "/api/stats")[0] == HTTPStatus.OK


def test_the_dashboard_needs_no_token(router: Router, clock: Clock) -> None:
    api = make_api(router, clock)
    status, page = call(api, "GET", "/", token=None)
    assert status == HTTPStatus.OK
    assert b"dashboard.js" in page
    assert call(api, "GET", "/dashboard.js", token=None)[0] == HTTPStatus.OK
    assert call(api, "GET", "/secrets", token=None)[0] == HTTPStatus.NOT_FOUND


def test_other_sites_are_refused_even_with_the_token(router: Router, clock: Clock) -> None:
    api = make_api(router, clock)
    status, body = call(
        api, "POST", "/api/clients/ws-1%2F1/kick", {}, headers={"origin": "http://evil.example"}
    )
    assert (status, body["error"]["code"]) == (HTTPStatus.FORBIDDEN, "forbidden")
    assert call(api, "GET", "/api/stats", headers={"origin": f"http://{HOST}"})[0] == HTTPStatus.OK


def test_the_public_origin_and_the_one_a_trusted_proxy_reports_are_the_apis_own(
    router: Router, clock: Clock
) -> None:
    public = AdminApi(router, TOKEN, 1.0, public_origin="https://ops.example.com")
    https = {"origin": "https://ops.example.com"}
    assert call(public, "GET", "/api/stats", headers=https)[0] == HTTPStatus.OK
    api = make_api(router, clock)
    assert call(api, "GET", "/api/stats", headers=https)[0] == HTTPStatus.FORBIDDEN
    request = HttpRequest(
        "GET", "/api/stats", {"host": HOST, "authorization": f"Bearer {TOKEN}", **https}, b"",
        proxied_origin="https://ops.example.com",
    )  # fmt: skip
    assert asyncio.run(api.handle(request)).status == HTTPStatus.OK
    other = request._replace(headers={**request.headers, "origin": "https://evil.example"})
    assert asyncio.run(api.handle(other)).status == HTTPStatus.FORBIDDEN


def test_without_a_token_only_loopback_hosts_are_served(router: Router, clock: Clock) -> None:
    api = make_api(router, clock, token=None)
    assert call(api, "GET", "/api/stats", token=None)[0] == HTTPStatus.OK
    for host in ("localhost:7760", "[::1]:7760"):
        assert call(api, "GET", "/api/stats", token=None, headers={"host": host})[0] == HTTPStatus.OK
    rebound = call(api, "GET", "/api/stats", token=None, headers={"host": "attacker.example:7760"})
    assert rebound[0] == HTTPStatus.FORBIDDEN


def test_outside_cluster_mode_the_cluster_is_false(router: Router, clock: Clock) -> None:
    api = make_api(router, clock)
    assert call(api, "GET", "/api/cluster") == (HTTPStatus.OK, {"cluster": False})
    assert call(api, "GET", "/api/cluster", token=None)[0] == HTTPStatus.UNAUTHORIZED
    assert call(api, "POST", "/api/cluster")[0] == HTTPStatus.METHOD_NOT_ALLOWED


def test_the_cluster_lists_routers_live_first_and_every_shard(router: Router, clock: Clock) -> None:
    router.cluster = ClusterView(
        router_id="r1",
        lease_time=2.0,
        redis="redis://:***@127.0.0.1:6379/0",
        available=True,
        unavailable_rounds=3,
        routers={
            "r1": {"xpub": "tcp://10.0.0.1:7752", "control": "tcp://10.0.0.1:7753"},
            "r0": {"control": "tcp://10.0.0.9:7753"},
            "r2": {"control": "tcp://10.0.0.2:7753"},
        },
        live=frozenset({"r1", "r2"}),
        shards=[
            ShardView(0, Holder("r1", 4), 1.9996),
            ShardView(1, Holder("r2", 9), 0.5),
            ShardView(2, None, None),
            ShardView(3, Holder("r0", 2), None),
            ShardView(4, Holder("r1", 1), 0.0),
            ShardView(5, Holder("r1", 8), 0.3, degraded=True),
        ],
        changes={"gained": 3, "taken": 1},
    )
    status, body = call(make_api(router, clock), "GET", "/api/cluster")
    assert status == HTTPStatus.OK
    assert body == {
        "cluster": True,
        "router_id": "r1",
        "shard_count": 6,
        "lease_time": 2.0,
        "redis": {"where": "redis://:***@127.0.0.1:6379/0", "available": True, "unavailable_rounds": 3},
        "routers": [
            {
                "router_id": "r1",
                "live": True,
                "endpoints": {"control": "tcp://10.0.0.1:7753", "xpub": "tcp://10.0.0.1:7752"},
                "shards_served": 2,
            },
            {
                "router_id": "r2",
                "live": True,
                "endpoints": {"control": "tcp://10.0.0.2:7753"},
                "shards_served": 1,
            },
            {
                "router_id": "r0",
                "live": False,
                "endpoints": {"control": "tcp://10.0.0.9:7753"},
                "shards_served": 1,
            },
        ],
        "shards": [
            {"shard": 0, "owner": "r1", "token": 4, "lease_ms_left": 1999, "degraded": False},
            {"shard": 1, "owner": "r2", "token": 9, "lease_ms_left": 500, "degraded": False},
            {"shard": 2, "owner": None, "token": None, "lease_ms_left": None, "degraded": False},
            {"shard": 3, "owner": "r0", "token": 2, "lease_ms_left": None, "degraded": False},
            {"shard": 4, "owner": "r1", "token": 1, "lease_ms_left": 0, "degraded": False},
            {"shard": 5, "owner": "r1", "token": 8, "lease_ms_left": 300, "degraded": True},
        ],
        "changes": {"gained": 3, "handed_over": 0, "taken": 1, "expired": 0},
    }
    assert list(body["routers"][0]["endpoints"]) == ["control", "xpub"], "in the same order for every router"


def test_clients_list_what_the_router_and_their_edge_know(router: Router, clock: Clock) -> None:
    totals = EdgeTotals(clients=1, delivered=10)
    router.manager.edge_report("ws-1", totals, {}, [ClientFigures("ws-1/1", 3, 300, 7)], now=99.0)
    api = make_api(router, clock)
    status, body = call(api, "GET", "/api/clients")
    assert status == HTTPStatus.OK
    assert body["clients"][0] == {
        "client_id": "ws-1/1",
        "edge_id": "ws-1",
        "protocol": "websocket",
        "remote": "10.1.1.1:4000",
        "user": "anonymous",
        "subscriptions": ["/video/main"],
        "connected_at": 1_700_000_095.0,
        "queued_messages": 3,
        "queued_bytes": 300,
        "drops": 7,
    }
    assert body["clients"][1]["drops"] is None
    assert [c["client_id"] for c in call(api, "GET", "/api/clients?edge=ws-2")[1]["clients"]] == ["ws-2/1"]


def test_topics_show_rates_between_samples(router: Router, clock: Clock) -> None:
    api = make_api(router, clock)
    api.sample()
    for _ in range(30):
        router.manager.route_data("/video/main", b"frame")
    router.manager.edge_report("ws-1", EdgeTotals(), {"/video/main": 4}, [], now=100.0)
    clock.now += 2.0
    api.sample()
    topics = {t["topic"]: t for t in call(api, "GET", "/api/topics")[1]["topics"]}
    video = topics["/video/main"]
    assert (video["rate"], video["drops"], video["drop_rate"], video["messages"]) == (15.0, 4, 2.0, 30)
    assert (video["subscribers"], video["policy"]["kind"], video["policy_overridden"]) == (1, "latest", False)
    assert topics["/sensors/temp"]["rate"] == 0.0


def test_edges_show_health_and_their_last_report(router: Router, clock: Clock) -> None:
    router.manager.edge_report(
        "ws-1", EdgeTotals(clients=1, delivered=10, dropped={"conflated": 2}), {}, [], 99.0
    )
    router.manager.edge_heartbeat("ws-1", 99.5)
    clock.now = 100.0
    edges = {e["edge_id"]: e for e in call(make_api(router, clock), "GET", "/api/edges")[1]["edges"]}
    assert (edges["ws-1"]["health"], edges["ws-1"]["silent_for"], edges["ws-1"]["drops"]) == (
        "ok",
        0.5,
        {"conflated": 2},
    )
    assert (edges["ws-2"]["health"], edges["ws-2"]["delivered"], edges["ws-2"]["clients"]) == (
        "late",
        None,
        1,
    )


def test_a_policy_change_is_sent_to_the_edges_at_once(router: Router, clock: Clock) -> None:
    api = make_api(router, clock)
    status, body = call(api, "PUT", "/api/topics/video/main/policy", {"kind": "latest", "max_rate": 5})
    assert status == HTTPStatus.OK
    assert (body["policy"]["max_rate"], body["overridden"], body["edges_told"]) == (5.0, True, ["ws-1"])
    policy = DeliveryPolicy(kind="latest", max_rate=5.0)
    assert router.sent == [
        ToEdge("ws-1", PolicyUpdate(topic="/video/main", policy=policy)),
        Demand("/video/main", 5.0),
    ]
    assert call(api, "GET", "/api/topics/video/main/policy")[1]["policy"]["max_rate"] == 5.0
    assert call(api, "GET", "/api/topics/video/other/policy")[1]["overridden"] is False


@pytest.mark.parametrize(
    ("body", "code"),
    [({"kind": "fastest"}, "bad_request"), ({"max_rte": 1}, "bad_request"), ([1], "bad_request")],
)
def test_bad_policies_are_refused(router: Router, clock: Clock, body: object, code: str) -> None:
    status, reply = call(make_api(router, clock), "PUT", "/api/topics/video/main/policy", body)
    assert (status, reply["error"]["code"]) == (HTTPStatus.BAD_REQUEST, code)
    assert router.sent == []


def test_bad_topics_and_methods_are_refused(router: Router, clock: Clock) -> None:
    api = make_api(router, clock)
    assert call(api, "GET", "/api/topics/bad%00topic/policy")[1]["error"]["code"] == "bad_topic"
    assert call(api, "DELETE", "/api/topics/video/main/policy")[0] == HTTPStatus.METHOD_NOT_ALLOWED
    assert call(api, "POST", "/api/stats")[0] == HTTPStatus.METHOD_NOT_ALLOWED
    assert call(api, "GET", "/api/nothing")[0] == HTTPStatus.NOT_FOUND


def test_kick_forgets_the_client_and_tells_its_edge(router: Router, clock: Clock) -> None:
    api = make_api(router, clock)
    status, body = call(api, "POST", "/api/clients/ws-1%2F1/kick", {"reason": "spam"})
    assert (status, body) == (HTTPStatus.OK, {"client_id": "ws-1/1", "edge_id": "ws-1"})
    assert ToEdge("ws-1", DropClient(client_id="ws-1/1", reason="spam")) in router.sent
    status, body = call(api, "POST", "/api/clients/ws-1%2F1/kick")
    assert (status, body["error"]["code"]) == (HTTPStatus.NOT_FOUND, "unknown_client")


def test_drain_asks_every_client_of_the_edge_to_go_elsewhere(router: Router, clock: Clock) -> None:
    api = make_api(router, clock)
    status, body = call(api, "POST", "/api/edges/ws-2/drain")
    assert (status, body) == (HTTPStatus.OK, {"edge_id": "ws-2", "clients": ["ws-2/1"]})
    drops = [item.message for item in router.sent if isinstance(item, ToEdge)]
    assert drops == [DropClient(client_id="ws-2/1", reason=DRAINED, code=CLOSE_GOING_AWAY)]
    assert call(api, "POST", "/api/edges/nope/drain")[0] == HTTPStatus.NOT_FOUND


def test_stats_add_up_the_router_and_its_edges(router: Router, clock: Clock) -> None:
    router.manager.edge_report("ws-1", EdgeTotals(delivered=4, dropped={"queue_full": 1}), {}, [], 99.0)
    router.manager.edge_report("ws-2", EdgeTotals(delivered=6, dropped={"queue_full": 2}), {}, [], 99.0)
    body = call(make_api(router, clock), "GET", "/api/stats")[1]
    assert (body["edges"], body["clients"], body["edge_delivered"], body["edge_drops"]) == (
        2,
        2,
        10,
        {"queue_full": 3},
    )


def test_a_rate_meter_restarts_a_counter_that_went_down() -> None:
    meter = RateMeter()
    meter.sample(0.0, {"a": 10})
    assert meter.rate("a") == 0.0
    meter.sample(2.0, {"a": 30})
    assert meter.rate("a") == 10.0
    meter.sample(3.0, {"a": 4})
    assert meter.rate("a") == 4.0
    meter.sample(4.0, {})
    assert meter.rate("a") == 0.0


def test_admin_config_needs_a_token_beyond_loopback() -> None:
    assert AdminSection().token({}) is None
    assert AdminSection(listen="0.0.0.0:7760").token({"SWITCHBOARD_ADMIN_TOKEN": "t"}) == "t"
    with pytest.raises(ValueError, match="SWITCHBOARD_ADMIN_TOKEN"):
        AdminSection(listen="0.0.0.0:7760").token({})
    assert AdminSection(listen="").token({}) is None
    with pytest.raises(ValueError, match="HOST:PORT"):
        AdminSection(listen="7760")
    assert parse_listen("[::1]:0") == ("::1", 0)
    assert [is_loopback(h) for h in ("127.0.0.2", "::1", "localhost", "10.0.0.1", "example.com")] == [
        True,
        True,
        True,
        False,
        False,
    ]


def test_the_admin_table_and_its_command_line_override(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "router.toml"
    path.write_text('[admin]\nlisten = "127.0.0.1:9000"\ntoken_env = "MY_ADMIN_TOKEN"\n', encoding="utf-8")
    monkeypatch.delenv("MY_ADMIN_TOKEN", raising=False)
    assert load_config(path).admin == AdminSection(listen="127.0.0.1:9000", token_env="MY_ADMIN_TOKEN")
    assert load_config(path, {"listen": ""}).admin.listen == ""
    with pytest.raises(ConfigError, match="MY_ADMIN_TOKEN"):
        load_config(path, {"listen": "0.0.0.0:9000"})
    monkeypatch.setenv("MY_ADMIN_TOKEN", "t")
    assert load_config(path, {"listen": "0.0.0.0:9000"}).admin.token() == "t"
    path.write_text('[admin]\nlisten = "127.0.0.1:9000"\ntoken = "in-the-file"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="token"):
        load_config(path)


def test_the_admin_table_names_its_proxies_and_public_origin(tmp_path: Path) -> None:
    path = tmp_path / "router.toml"
    path.write_text(
        '[admin]\ntrusted_proxies = ["127.0.0.1", "10.0.0.0/8"]\nproxy_headers = "forwarded"\n'
        'public_origin = "https://Ops.example.com/"\n',
        encoding="utf-8",
    )
    admin = load_config(path).admin
    assert (admin.proxies().trusts("10.2.3.4"), admin.proxies().trusts("127.0.0.2")) == (True, False)
    assert admin.proxies().headers == "forwarded"
    assert admin.origin() == "https://ops.example.com"
    for bad in ('trusted_proxies = ["10.0.0.1/8"]', 'proxy_headers = "x-real-ip"', 'public_origin = "ops"'):
        path.write_text(f"[admin]\n{bad}\n", encoding="utf-8")
        with pytest.raises(ConfigError, match=r"\[admin\]"):
            load_config(path)
