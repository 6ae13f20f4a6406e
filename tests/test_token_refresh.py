"""Sessions that end and tokens refreshed on an open connection: the router's control plane with
JwtSessions and real tokens, the edge hub, and both together over the control wire format."""

from __future__ import annotations

import json
from typing import Any

import pytest

from edges.core.client_wire import CloseCode
from edges.core.hub import CloseClient, EdgeHub, ToRouter, UnwatchData
from edges.core.session import ClientSession, State
from router import wire
from router.core import ConnectionManager, ErrorCode, TopicRegistry
from router.core.control import ControlPlane, Outbound, ToEdge, Upstream
from router.core.jwt_sessions import JwtSessions
from tests.edges.core.test_hub import connect, error_for, only_request, parsed, subscribe
from tests.tokens import NOW, token, verification_key

EDGE = "ws-1"
CLIENT = "ws-1/1"
LEEWAY = 2.0


def make_plane(topics_claim: str = "topics") -> ControlPlane:
    sessions = JwtSessions([verification_key("ES256")], leeway=LEEWAY, topics_claim=topics_claim)
    manager = ConnectionManager(TopicRegistry.open(), sessions)
    plane = ControlPlane(
        manager, heartbeat_interval=1.0, heartbeat_timeout=30.0, router_id="r1", new_secret=str
    )
    send(plane, wire.Hello(edge_id=EDGE, protocol="websocket"))
    return plane


def send(plane: ControlPlane, message: wire.EdgeMessage, unix_time: float = NOW) -> list[Outbound]:
    """One edge message through the wire encoding; the monotonic clock stands still at 1.0."""
    return plane.handle(EDGE.encode(), wire.encode_control(message), 1.0, unix_time)


def es256(lifetime: float = 60, **changes: Any) -> str:
    return token("ES256", exp=int(NOW + lifetime), **changes)


def registered(plane: ControlPlane, presented: str, client_id: str = CLIENT) -> None:
    [reply] = send(plane, wire.RegisterClient(request_id=1, client_id=client_id, token=presented))
    assert reply == ToEdge(EDGE, wire.Registered(request_id=1, client_id=client_id, user="alice"))


def subscribed(plane: ControlPlane, topic: str, client_id: str = CLIENT) -> None:
    last = send(plane, wire.Subscribe(request_id=2, client_id=client_id, topic=topic))[-1]
    assert isinstance(last, ToEdge)
    assert isinstance(last.message, wire.SubscribeOk)


def refresh(plane: ControlPlane, presented: str, unix_time: float = NOW) -> list[Outbound]:
    return send(plane, wire.RefreshToken(request_id=3, client_id=CLIENT, token=presented), unix_time)


def drops(out: list[Outbound]) -> list[wire.DropClient]:
    return [
        item.message for item in out if isinstance(item, ToEdge) and isinstance(item.message, wire.DropClient)
    ]


# ---------------------------------------------------------------- the router


def test_a_session_ends_at_the_first_tick_after_its_token_expires() -> None:
    plane = make_plane()
    registered(plane, es256(lifetime=10))
    subscribed(plane, "/video/main")
    assert drops(plane.tick(2.0, NOW + 10 + LEEWAY - 0.5)) == []
    out = plane.tick(3.0, NOW + 10 + LEEWAY)
    assert drops(out) == [wire.DropClient(client_id=CLIENT, reason="token expired")]
    assert Upstream("/video/main", watched=False) in out
    assert plane.manager.get_active_clients() == []
    assert drops(plane.tick(4.0, NOW + 100)) == []


def test_each_client_ends_at_its_own_expiry() -> None:
    plane = make_plane()
    registered(plane, es256(lifetime=10), "ws-1/1")
    registered(plane, es256(lifetime=20), "ws-1/2")
    assert [d.client_id for d in drops(plane.tick(2.0, NOW + 15))] == ["ws-1/1"]
    assert [d.client_id for d in drops(plane.tick(3.0, NOW + 25))] == ["ws-1/2"]


def test_a_refresh_extends_the_session() -> None:
    plane = make_plane()
    registered(plane, es256(lifetime=10))
    out = refresh(plane, es256(lifetime=100), unix_time=NOW + 5)
    expires_at = NOW + 100 + LEEWAY
    reply = wire.Refreshed(request_id=3, client_id=CLIENT, user="alice", expires_at=expires_at)
    assert out == [ToEdge(EDGE, reply)]
    assert drops(plane.tick(2.0, NOW + 50)) == []
    assert len(drops(plane.tick(3.0, expires_at))) == 1


def test_many_refreshes_end_the_session_once_at_the_last_expiry() -> None:
    plane = make_plane()
    registered(plane, es256(lifetime=10))
    for lifetime in range(11, 300):
        [reply] = refresh(plane, es256(lifetime=lifetime))
        assert isinstance(reply, ToEdge)
        assert isinstance(reply.message, wire.Refreshed)
    assert drops(plane.tick(2.0, NOW + 200)) == []
    assert len(drops(plane.tick(3.0, NOW + 299 + LEEWAY))) == 1


def refused(out: list[Outbound], code: ErrorCode = ErrorCode.UNAUTHORIZED, request_id: int = 3) -> str:
    [item] = out
    assert isinstance(item, ToEdge)
    assert isinstance(item.message, wire.Error)
    assert (item.message.request_id, item.message.code) == (request_id, code)
    return item.message.message


def test_a_refresh_for_another_user_is_refused_and_changes_nothing() -> None:
    plane = make_plane()
    registered(plane, es256(lifetime=10))
    assert refused(refresh(plane, es256(lifetime=100, sub="mallory"))) == "the new token is for another user"
    assert len(drops(plane.tick(2.0, NOW + 10 + LEEWAY))) == 1


@pytest.mark.parametrize(
    ("presented", "reason"),
    [(es256(lifetime=-60), "token expired"), (token("ES256", name="intruder"), "bad signature")],
)
def test_a_bad_refresh_leaves_the_session_as_it_was(presented: str, reason: str) -> None:
    plane = make_plane()
    registered(plane, es256(lifetime=10))
    subscribed(plane, "/video/main")
    assert refused(refresh(plane, presented)) == reason
    assert plane.manager.get_client_topics(CLIENT) == {"/video/main"}


def test_a_refresh_ends_the_subscriptions_the_new_token_does_not_allow() -> None:
    plane = make_plane()
    registered(plane, es256(topics=["/video/*", "/telemetry/**"]))
    subscribed(plane, "/video/main")
    subscribed(plane, "/telemetry/gps")
    out = refresh(plane, es256(lifetime=100, topics=["/telemetry/**"]))
    assert out[0] == Upstream("/video/main", watched=False)
    assert isinstance(out[-1], ToEdge)
    assert isinstance(out[-1].message, wire.Refreshed)
    assert out[-1].message.revoked == ["/video/main"]
    assert plane.manager.get_client_topics(CLIENT) == {"/telemetry/gps"}
    forbidden = send(plane, wire.Subscribe(request_id=3, client_id=CLIENT, topic="/video/main"))
    assert refused(forbidden, ErrorCode.FORBIDDEN) == "'alice' may not read '/video/main'"


def test_only_the_clients_edge_may_refresh_it() -> None:
    plane = make_plane()
    registered(plane, es256())
    plane.handle(b"ws-2", wire.encode_control(wire.Hello(edge_id="ws-2", protocol="websocket")), 1.0)
    message = wire.RefreshToken(request_id=3, client_id=CLIENT, token=es256())
    out = plane.handle(b"ws-2", wire.encode_control(message), 1.0, NOW)
    assert refused(out, ErrorCode.UNKNOWN_CLIENT) == "edge 'ws-2' has no client 'ws-1/1'"


# ---------------------------------------------------------------- the edge


def refresh_request(hub: EdgeHub, presented: str = "new-token", request_id: int = 9) -> wire.RefreshToken:
    hub.client_text(CLIENT, json.dumps({"op": "refresh", "id": request_id, "token": presented}))
    request = only_request(hub)
    assert request == wire.RefreshToken(request_id=request.request_id, client_id=CLIENT, token=presented)
    return request  # type: ignore[no-any-return]


def refreshed_for(
    request: wire.RefreshToken, expires_at: float | None = 1e9, **fields: Any
) -> wire.Refreshed:
    return wire.Refreshed(
        request_id=request.request_id,
        client_id=request.client_id,
        user="alice",
        expires_at=expires_at,
        **fields,
    )


def test_the_edge_forwards_a_refresh_and_answers_the_client() -> None:
    hub = EdgeHub()
    session = connect(hub, CLIENT)
    request = refresh_request(hub)
    hub.router_message(refreshed_for(request, expires_at=1750000123.5))
    assert parsed(session) == [{"op": "refreshed", "id": 9, "expires_at": 1750000123.5}]
    assert session.token == "new-token"
    assert session.state is State.READY


def test_a_refused_refresh_is_an_error_and_the_connection_stays() -> None:
    hub = EdgeHub()
    session = connect(hub, CLIENT)
    request = refresh_request(hub)
    hub.router_message(error_for(request, "unauthorized", "token expired"))
    assert parsed(session) == [{"op": "error", "id": 9, "code": "unauthorized", "message": "token expired"}]
    assert session.token == "tok"
    assert session.state is State.READY
    assert hub.drain_actions() == []


def test_revoked_subscriptions_end_like_lost_ones() -> None:
    hub = EdgeHub()
    session = connect(hub, CLIENT)
    subscribe(hub, CLIENT, "/a", request_id=1)
    subscribe(hub, CLIENT, "/b", request_id=2)
    session.data_to_send()
    request = refresh_request(hub)
    hub.router_message(refreshed_for(request, revoked=["/a", "/not-mine"]))
    assert hub.drain_actions() == [UnwatchData("/a")]
    assert parsed(session) == [
        {"op": "refreshed", "id": 9, "expires_at": 1e9},
        {
            "op": "error",
            "id": None,
            "code": "forbidden",
            "message": "the refreshed token does not allow '/a'",
            "topic": "/a",
        },
    ]
    hub.deliver(b"/b", 5, 11, b"still flows")
    assert parsed(session) == [(1, 11, b"still flows")]


def test_refresh_needs_a_connected_session_and_a_token() -> None:
    hub = EdgeHub()
    session = hub.open_client(CLIENT)
    hub.client_text(CLIENT, '{"op":"refresh","id":1,"token":"t"}')
    assert parsed(session)[0]["code"] == "bad_request"
    connect(hub, "ws-1/2")
    other = hub.session("ws-1/2")
    assert other is not None
    hub.client_text("ws-1/2", '{"op":"refresh","id":2}')
    [reply] = parsed(other)
    assert (reply["id"], reply["code"]) == (2, "bad_request")
    assert hub.drain_actions() == []


def test_after_a_router_restart_the_edge_registers_with_the_refreshed_token_and_refreshes_again() -> None:
    hub = EdgeHub()
    connect(hub, CLIENT)
    hub.router_message(refreshed_for(refresh_request(hub, "second")))
    refresh_request(hub, "third")
    messages = hub.resync()
    assert isinstance(messages[0], wire.RegisterClient)
    assert messages[0].token == "second"
    assert isinstance(messages[-1], wire.RefreshToken)
    assert messages[-1].token == "third"
    session = hub.session(CLIENT)
    assert session is not None
    session.data_to_send()
    hub.router_message(refreshed_for(messages[-1]))
    assert parsed(session) == [{"op": "refreshed", "id": 9, "expires_at": 1e9}]
    assert session.token == "third"


# ---------------------------------------------------------------- edge and router together


class Pair:
    """An edge hub wired to a control plane: what one sends, the other receives, encoded."""

    def __init__(self, plane: ControlPlane) -> None:
        self.hub = EdgeHub()
        self.plane = plane
        self.closed: list[CloseClient] = []

    def pump(self, out: list[Outbound] | None = None, unix_time: float = NOW) -> None:
        """Carry router output to the hub and hub requests to the router until both are quiet."""
        pending = list(out or [])
        for _ in range(100):
            for item in pending:
                if isinstance(item, ToEdge):
                    self.hub.router_message(wire.decode_router_message(wire.encode_control(item.message)))
            pending = []
            for action in self.hub.drain_actions():
                if isinstance(action, ToRouter):
                    pending += send(self.plane, action.message, unix_time)
                elif isinstance(action, CloseClient):
                    self.closed.append(action)
            if not pending:
                return
        raise AssertionError("the edge and the router never settled")

    def client(self, presented: str) -> ClientSession:
        session = self.hub.open_client(CLIENT)
        self.hub.client_text(CLIENT, json.dumps({"op": "connect", "token": presented}))
        self.pump()
        return session

    def ask(self, op: dict[str, Any], unix_time: float = NOW) -> None:
        self.hub.client_text(CLIENT, json.dumps(op))
        self.pump(unix_time=unix_time)


def test_an_expired_session_closes_the_client_with_4002() -> None:
    pair = Pair(make_plane())
    session = pair.client(es256(lifetime=10))
    pair.ask({"op": "subscribe", "id": 1, "topic": "/video/main"})
    assert [m["op"] for m in parsed(session)] == ["connected", "subscribed"]
    pair.pump(pair.plane.tick(2.0, NOW + 10 + LEEWAY))
    assert parsed(session) == [{"op": "closing", "code": 4002, "reason": "token expired"}]
    assert pair.closed == [CloseClient(CLIENT, CloseCode.DROPPED, "token expired")]
    assert pair.plane.manager.get_active_clients() == []


def test_a_refresh_keeps_the_client_past_its_first_expiry() -> None:
    pair = Pair(make_plane())
    session = pair.client(es256(lifetime=10))
    pair.ask({"op": "refresh", "id": 1, "token": es256(lifetime=100)}, unix_time=NOW + 5)
    assert parsed(session)[-1] == {"op": "refreshed", "id": 1, "expires_at": NOW + 100 + LEEWAY}
    pair.pump(pair.plane.tick(2.0, NOW + 50))
    assert parsed(session) == []
    assert pair.closed == []


def test_a_forbidden_subscribe_gets_forbidden_and_no_data() -> None:
    pair = Pair(make_plane())
    session = pair.client(es256())
    pair.ask({"op": "subscribe", "id": 1, "topic": "/audio/main"})
    [_, reply] = parsed(session)
    assert (reply["op"], reply["id"], reply["code"]) == ("error", 1, "forbidden")
    assert pair.hub.deliver(b"/audio/main", 5, 1, b"secret") == 0
    assert parsed(session) == []


def test_after_a_router_restart_every_resubscribe_is_authorized_again() -> None:
    """The restarted router reads another claim, under which the token allows less: the edge's
    resubscribe is refused, and the client loses the subscription (an error with its topic)."""
    pair = Pair(make_plane())
    session = pair.client(es256(topics=["/video/*", "/telemetry/**"], narrow=["/telemetry/**"]))
    pair.ask({"op": "subscribe", "id": 1, "topic": "/video/main"})
    pair.ask({"op": "subscribe", "id": 2, "topic": "/telemetry/gps"})
    parsed(session)
    pair.plane = make_plane(topics_claim="narrow")
    for message in pair.hub.resync():
        pair.pump(send(pair.plane, message))
    [lost] = parsed(session)
    assert (lost["id"], lost["code"], lost["topic"]) == (None, "forbidden", "/video/main")
    assert pair.plane.manager.get_client_topics(CLIENT) == {"/telemetry/gps"}
    assert pair.hub.deliver(b"/video/main", 7, 1, b"x") == 0
    assert pair.hub.deliver(b"/telemetry/gps", 7, 1, b"y") == 1
