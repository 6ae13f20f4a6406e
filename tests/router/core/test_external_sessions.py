"""External sessions without sockets: the decision cache, the session manager that asks the
service, and the gate that parks control messages until the service (or its timeout) decides."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from router.core import ClientInfo, ConnectionManager, ErrorCode, Identity, RefusedError
from router.core.control import ControlPlane, Outbound, ToEdge
from router.core.decision_cache import Decision, DecisionCache, token_key
from router.core.external_sessions import DecisionPending, ExternalSessions
from router.core.session_gate import TIMED_OUT, UNAVAILABLE, SessionGate
from router.sessions_config import SessionsSection
from router.wire import Error, Hello, RegisterClient, Registered, Subscribe, SubscribeOk, encode_control

BAD = "the session service gave a bad answer: "
CLIENT = ClientInfo(client_id="c", edge_id="e", protocol="websocket", remote="127.0.0.1:5000")
ALICE = Identity(user="alice", allowed_patterns=("/video/**",))
TIMEOUT = 2.0
EDGE = b"edge-1"


def reply(request_id: int, **fields: Any) -> bytes:
    return json.dumps({"id": request_id, **fields}).encode()


def allow(request_id: int, **fields: Any) -> bytes:
    return reply(request_id, allow=True, **{"user": "alice", "topics": ["/video/**"], **fields})


# ---------------------------------------------------------------- cache


def test_a_decision_lasts_its_ttl_bounded_by_the_maximum() -> None:
    cache = DecisionCache(size=10, max_ttl=60)
    cache.put("short", Decision(ALICE), now=100, ttl=5)
    cache.put("long", Decision(ALICE), now=100, ttl=3600)
    assert cache.get("short", 105) == Decision(ALICE)
    assert cache.get("short", 105.1) is None
    assert cache.get("long", 160) == Decision(ALICE)
    assert cache.get("long", 160.1) is None


def test_a_decision_ends_with_its_session_and_ttl_0_serves_only_now() -> None:
    cache = DecisionCache(size=10, max_ttl=60)
    cache.put("ending", Decision(Identity(user="a", expires_at=110)), now=100, ttl=60)
    cache.put("once", Decision(None, "no"), now=100, ttl=0)
    cache.put("nan", Decision(None, "no"), now=100, ttl=float("nan"))
    assert cache.get("ending", 110) is not None
    assert cache.get("ending", 110.1) is None
    assert cache.get("once", 100) == Decision(None, "no")
    assert cache.get("once", 100.001) is None
    assert cache.get("nan", 100.001) is None


def test_the_least_recently_used_decision_goes_first() -> None:
    cache = DecisionCache(size=2, max_ttl=60)
    cache.put("a", Decision(ALICE), 0, 60)
    cache.put("b", Decision(ALICE), 0, 60)
    assert cache.get("a", 1) is not None
    cache.put("c", Decision(ALICE), 0, 60)
    assert (cache.get("a", 1), cache.get("b", 1), cache.get("c", 1)) == (
        Decision(ALICE),
        None,
        Decision(ALICE),
    )
    assert len(cache) == 2


def test_keys_are_hashes_never_the_token() -> None:
    assert "secret-token" not in token_key("secret-token")
    assert len({token_key(None), token_key(""), token_key("x")}) == 3


# ---------------------------------------------------------------- sessions


def ask(sessions: ExternalSessions, token: str | None, now: float = 0) -> dict[str, Any]:
    with pytest.raises(DecisionPending):
        sessions.authenticate(CLIENT, token, now)
    [(_, body)] = sessions.requests_to_send()
    request: dict[str, Any] = json.loads(body)
    return request


def test_a_miss_asks_the_service_once_per_token() -> None:
    sessions = ExternalSessions()
    request = ask(sessions, "tok")
    assert request == {
        "id": 1,
        "kind": "authenticate",
        "token": "tok",
        "client": {"edge": "e", "protocol": "websocket", "remote": "127.0.0.1:5000"},
    }
    with pytest.raises(DecisionPending):
        sessions.authenticate(CLIENT, "tok", 0)
    assert sessions.requests_to_send() == []


def test_an_answer_is_cached_and_authorizes_from_its_patterns() -> None:
    sessions = ExternalSessions(cache_ttl=60)
    request = ask(sessions, "tok")
    assert sessions.answer(allow(request["id"], ttl=10, expires_at=1000.0), now=1) == token_key("tok")
    identity = sessions.authenticate(CLIENT, "tok", 11)
    assert identity == Identity(user="alice", allowed_patterns=("/video/**",), expires_at=1000.0)
    assert sessions.authorize(identity, "/video/main")
    assert not sessions.authorize(identity, "/audio")
    with pytest.raises(DecisionPending):
        sessions.authenticate(CLIENT, "tok", 11.5)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (reply(1, allow=False, reason="unknown token"), "unknown token"),
        (
            reply(1, allow=True, topics=[]),
            BAD + "an accepting reply names the user",
        ),
        (
            allow(1, topics=["video"]),
            BAD + "pattern 'video' must start with '/'",
        ),
        (allow(1, ttl=-1), BAD + "ttl is a number of seconds, 0 or more"),
        (allow(1, expires_at=0.5), "session expired"),
    ],
)
def test_refusals_and_bad_answers_refuse(body: bytes, reason: str) -> None:
    sessions = ExternalSessions()
    ask(sessions, "tok", now=1)
    assert sessions.answer(body, now=1) == token_key("tok")
    with pytest.raises(RefusedError) as refused:
        sessions.authenticate(CLIENT, "tok", 1)
    assert (refused.value.code, refused.value.detail) == (ErrorCode.UNAUTHORIZED, reason)


def test_unknown_and_unreadable_replies_are_ignored() -> None:
    sessions = ExternalSessions()
    ask(sessions, "tok")
    assert sessions.answer(allow(99), 0) is None
    assert sessions.answer(b"not json", 0) is None
    assert sessions.in_flight == 1


def test_a_failure_refuses_now_and_asks_again_later() -> None:
    sessions = ExternalSessions()
    request = ask(sessions, "tok", now=5)
    sessions.fail(token_key("tok"), TIMED_OUT, now=7)
    with pytest.raises(RefusedError, match=TIMED_OUT):
        sessions.authenticate(CLIENT, "tok", 7)
    assert sessions.answer(allow(request["id"]), 8) is None
    assert ask(sessions, "tok", now=8)["id"] == request["id"] + 1


# ---------------------------------------------------------------- gate


class Gate:
    """A SessionGate in front of a real ControlPlane, fed encoded messages at fake times."""

    def __init__(self) -> None:
        self.sessions = ExternalSessions(cache_ttl=60)
        manager = ConnectionManager(sessions=self.sessions)
        plane = ControlPlane(manager, 1.0, 5.0, router_id="r1", new_secret=str)
        self.gate = SessionGate(plane, self.sessions, TIMEOUT)
        self.next_id = 0
        self.gate.handle(EDGE, encode_control(Hello(edge_id="edge-1", protocol="test")), 0)

    def send(self, message: Any, now: float = 0) -> list[Any]:
        return replies(self.gate.handle(EDGE, encode_control(message), now, 1000 + now))

    def register(self, client_id: str, token: str, now: float = 0) -> list[Any]:
        self.next_id += 1
        return self.send(RegisterClient(request_id=self.next_id, client_id=client_id, token=token), now)

    def subscribe(self, client_id: str, topic: str, now: float = 0) -> list[Any]:
        self.next_id += 1
        return self.send(Subscribe(request_id=self.next_id, client_id=client_id, topic=topic), now)

    def asked(self) -> list[int]:
        return [json.loads(body)["id"] for _, body in self.sessions.requests_to_send()]

    def answered(self, body: bytes, now: float) -> list[Outbound]:
        """The service's reply ``body`` arrives at ``now``."""
        return self.gate.decided(self.sessions.answer(body, 1000 + now), now, 1000 + now)


def replies(out: list[Outbound]) -> list[Any]:
    return [item.message for item in out if isinstance(item, ToEdge)]


def test_a_register_waits_for_the_service_and_later_messages_of_its_client_wait_behind() -> None:
    g = Gate()
    assert g.register("c1", "tok") == []
    assert g.subscribe("c1", "/video/main") == []
    assert g.subscribe("c1", "/audio") == []
    [request_id] = g.asked()
    out = g.answered(allow(request_id), now=0.5)
    registered, subscribed, forbidden = replies(out)
    assert isinstance(registered, Registered)
    assert registered.user == "alice"
    assert isinstance(subscribed, SubscribeOk)
    assert subscribed.topic == "/video/main"
    assert isinstance(forbidden, Error)
    assert forbidden.code == "forbidden"
    assert g.gate.parked == 0
    assert g.gate.next_deadline() is None


def test_other_clients_are_served_while_one_waits() -> None:
    g = Gate()
    g.register("c1", "tok")
    [request_id] = g.asked()
    g.answered(allow(request_id), 0.1)
    g.register("c2", "slow-token")
    assert g.asked() != []
    [subscribed] = g.subscribe("c1", "/video/main", now=0.2)
    assert isinstance(subscribed, SubscribeOk)
    [registered] = g.register("c3", "tok", now=0.3)
    assert isinstance(registered, Registered)


def test_one_request_per_token_answers_every_waiting_client() -> None:
    g = Gate()
    g.register("c1", "tok")
    g.register("c2", "tok")
    [request_id] = g.asked()
    out = replies(g.answered(allow(request_id), 0.1))
    assert [type(m) for m in out] == [Registered, Registered]


def test_no_answer_within_the_timeout_refuses_unauthorized() -> None:
    g = Gate()
    g.register("c1", "tok", now=1.0)
    g.subscribe("c1", "/video/main", now=1.5)
    assert g.gate.next_deadline() == 1.0 + TIMEOUT
    assert g.gate.expire(now=2.9, unix_time=1002.9) == []
    refused, unknown = replies(g.gate.expire(now=3.0, unix_time=1003.0))
    assert (refused.code, refused.message, refused.client_id) == ("unauthorized", TIMED_OUT, "c1")
    assert unknown.code == "unknown_client"
    assert g.gate.parked == 0


def test_a_request_that_cannot_be_sent_is_refused_at_once() -> None:
    g = Gate()
    g.register("c1", "tok")
    [(key, _)] = g.sessions.requests_to_send()
    [refused] = replies(g.gate.unavailable(key, 0.1, 1000.1))
    assert (refused.code, refused.message) == ("unauthorized", UNAVAILABLE)
    g.register("c2", "tok", now=0.2)
    assert len(g.asked()) == 1


def test_a_late_answer_after_the_timeout_changes_nothing() -> None:
    g = Gate()
    g.register("c1", "tok")
    [request_id] = g.asked()
    g.gate.tick(now=TIMEOUT, unix_time=1000 + TIMEOUT)
    assert g.answered(allow(request_id), TIMEOUT + 1) == []


# ---------------------------------------------------------------- configuration


def test_the_sessions_table_makes_external_sessions() -> None:
    table = {"kind": "external", "endpoint": "tcp://127.0.0.1:7770", "cache_ttl": 5, "cache_size": 3}
    sessions = msgspec.convert(table, SessionsSection).session_manager()
    assert isinstance(sessions, ExternalSessions)
    assert (sessions.cache.max_ttl, sessions.cache.size) == (5, 3)


@pytest.mark.parametrize(
    ("table", "error"),
    [
        ({"kind": "external"}, "endpoint goes with kind = 'external'"),
        ({"endpoint": "tcp://127.0.0.1:7770"}, "endpoint goes with kind = 'external'"),
        ({"kind": "external", "endpoint": "tcp://h:1", "audience": "a"}, "has JWT settings"),
        ({"kind": "external", "endpoint": "tcp://h:1", "timeout": 0}, "timeout is more than 0"),
        ({"kind": "external", "endpoint": "tcp://h:1", "cache_size": 0}, "cache_size is at least 1"),
    ],
)
def test_bad_external_settings_are_refused(table: dict[str, Any], error: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=error):
        msgspec.convert(table, SessionsSection)
