"""JWT keys from a JWKS URL, with no I/O: when a fetch is due, what a token with an unknown ``kid``
does while keys are fetched, and how a register waits for them behind the session gate."""

from __future__ import annotations

import math
from typing import Any

import jwt
import pytest

from router.core import ClientInfo, ConnectionManager, RefusedError
from router.core.control import ControlPlane, Outbound, ToEdge
from router.core.jwt_sessions import (
    KEYS_PENDING,
    NOT_FETCHED_IN_TIME,
    JwksSchedule,
    JwtSessions,
    VerificationKey,
    signing_keys,
)
from router.core.session_gate import SessionGate
from router.core.sessions import DecisionPending
from router.wire import Error, Hello, RegisterClient, Registered, encode_control
from tests.jwks_server import jwk
from tests.tokens import NOW, SECRET, token, verification_key

CLIENT = ClientInfo(client_id="ws-1/1", edge_id="ws-1")
REFRESH, COOLDOWN = 300.0, 10.0


def fetched(*names: str) -> list[VerificationKey]:
    """Keys as a fetch gives them: the ES256 test key ``name`` with kid ``name``."""
    return [verification_key("ES256", name, kid=name) for name in names]


def url_sessions(*configured: VerificationKey) -> JwtSessions:
    """JWT sessions whose first fetch, at NOW, gave the key ``old``."""
    manager = JwtSessions(configured, jwks=JwksSchedule(REFRESH, COOLDOWN))
    manager.fetch_started()
    manager.keys_fetched(fetched("old"), NOW)
    return manager


def signed(name: str, kid: str | None = None) -> str:
    return token("ES256", name=name, kid=name if kid is None else kid)


# ---------------------------------------------------------------- the schedule


def test_the_first_fetch_is_due_at_once_then_every_refresh_interval() -> None:
    schedule = JwksSchedule(REFRESH, COOLDOWN)
    assert schedule.due(NOW)
    assert schedule.next_due() == -math.inf
    schedule.started()
    assert not schedule.due(NOW + 1000)
    assert schedule.next_due() == math.inf
    schedule.ended(NOW + 1)
    assert not schedule.due(NOW + 1 + REFRESH - 0.1)
    assert schedule.due(NOW + 1 + REFRESH)
    assert schedule.next_due() == NOW + 1 + REFRESH


def test_an_unknown_kid_makes_a_fetch_due_once_the_cooldown_has_passed() -> None:
    schedule = JwksSchedule(REFRESH, COOLDOWN)
    schedule.started()
    assert schedule.want(NOW)
    schedule.ended(NOW)
    assert not schedule.want(NOW + COOLDOWN - 0.1)
    assert not schedule.due(NOW + COOLDOWN - 0.1)
    assert schedule.want(NOW + COOLDOWN)
    assert schedule.due(NOW + COOLDOWN)
    schedule.started()
    schedule.ended(NOW + COOLDOWN + 1)
    assert schedule.next_due() == NOW + COOLDOWN + 1 + REFRESH


def test_a_clock_that_goes_back_makes_a_fetch_due() -> None:
    schedule = JwksSchedule(REFRESH, COOLDOWN)
    schedule.started()
    schedule.ended(NOW)
    assert schedule.due(NOW - 1)
    assert schedule.want(NOW - 1)


@pytest.mark.parametrize(("refresh", "cooldown"), [(300, 0), (10, 11), (math.inf, 10)])
def test_a_schedule_that_cannot_work(refresh: float, cooldown: float) -> None:
    with pytest.raises(ValueError, match="cooldown"):
        JwksSchedule(refresh, cooldown)


# ---------------------------------------------------------------- sessions with fetched keys


def test_a_token_with_an_unknown_kid_waits_for_a_fetch_that_may_start() -> None:
    manager = url_sessions()
    assert manager.authenticate(CLIENT, signed("old"), NOW + 1).user == "alice"
    with pytest.raises(DecisionPending) as pending:
        manager.authenticate(CLIENT, signed("new"), NOW + COOLDOWN)
    assert pending.value.key == KEYS_PENDING
    assert manager.jwks is not None
    assert manager.jwks.due(NOW + COOLDOWN)
    manager.fetch_started()
    manager.keys_fetched(fetched("old", "new"), NOW + COOLDOWN + 0.5)
    assert manager.authenticate(CLIENT, signed("new"), NOW + COOLDOWN + 0.5).user == "alice"


def test_a_kid_the_fetch_did_not_bring_is_refused_and_waits_for_no_other_fetch() -> None:
    manager = url_sessions()
    with pytest.raises(DecisionPending):
        manager.authenticate(CLIENT, signed("never"), NOW + COOLDOWN)
    manager.fetch_started()
    manager.keys_fetched(fetched("old"), NOW + COOLDOWN + 0.5)
    with pytest.raises(RefusedError, match=r"unknown key id$"):
        manager.authenticate(CLIENT, signed("never"), NOW + COOLDOWN + 0.5)
    with pytest.raises(RefusedError, match=r"unknown key id$"):
        manager.authenticate(CLIENT, signed("other", kid="made-up"), NOW + COOLDOWN + 1)


def test_while_a_fetch_is_under_way_every_unknown_kid_waits_for_it() -> None:
    manager = url_sessions()
    manager.fetch_started()
    for kid in ("a", "b"):
        with pytest.raises(DecisionPending):
            manager.authenticate(CLIENT, signed("new", kid=kid), NOW + 1)


def test_a_failed_fetch_keeps_the_keys_in_use() -> None:
    manager = url_sessions()
    manager.fetch_started()
    manager.fetch_failed(NOW + REFRESH)
    assert manager.authenticate(CLIENT, signed("old"), NOW + REFRESH).user == "alice"
    assert manager.jwks is not None
    assert manager.jwks.fetches == 2


def test_after_the_wait_timed_out_the_token_is_refused_at_that_time_only() -> None:
    manager = url_sessions()
    manager.fetch_started()
    with pytest.raises(DecisionPending):
        manager.authenticate(CLIENT, signed("new"), NOW + 1)
    manager.fail(KEYS_PENDING, "timed out", NOW + 5)
    with pytest.raises(RefusedError, match=NOT_FETCHED_IN_TIME):
        manager.authenticate(CLIENT, signed("new"), NOW + 5)
    with pytest.raises(DecisionPending):
        manager.authenticate(CLIENT, signed("new"), NOW + 6)


def test_a_configured_key_keeps_its_kid_over_a_fetched_one() -> None:
    manager = url_sessions(verification_key("HS256", kid="old"))
    assert [(k.algorithm, k.kid) for k in manager.keys] == [("HS256", "old")]
    assert manager.authenticate(CLIENT, token("HS256", kid="old"), NOW).user == "alice"
    with pytest.raises(RefusedError, match="algorithm is not accepted"):
        manager.authenticate(CLIENT, signed("old"), NOW)


def test_without_a_url_an_unknown_kid_is_refused_at_once() -> None:
    manager = JwtSessions([verification_key("ES256", "old", kid="old")])
    with pytest.raises(RefusedError, match="unknown key id"):
        manager.authenticate(CLIENT, signed("new"), NOW)


def test_a_token_without_a_kid_never_waits() -> None:
    manager = url_sessions()
    with pytest.raises(RefusedError, match="unknown key id"):
        manager.authenticate(CLIENT, token("ES256", name="old"), NOW + COOLDOWN)


def test_url_sessions_may_start_with_no_key_but_others_may_not() -> None:
    assert JwtSessions([], jwks=JwksSchedule()).keys == ()
    with pytest.raises(ValueError, match="at least one key"):
        JwtSessions([])


def test_fetched_keys_of_other_algorithms_or_too_weak_are_left_out() -> None:
    rs384 = {**jwk("RS256", "main", "rs384"), "alg": "RS384"}
    hs = {"kty": "oct", "k": jwt.utils.base64url_encode(SECRET).decode(), "kid": "hs", "alg": "HS256"}
    short = {"kty": "oct", "k": "c2hvcnQ", "kid": "short", "alg": "HS256"}
    jwks = jwt.PyJWKSet([jwk("ES256", "main", "es"), rs384, hs, short])
    keys, skipped = signing_keys(jwks.keys)
    assert [(k.algorithm, k.kid) for k in keys] == [("ES256", "es"), ("HS256", "hs")]
    assert len(skipped) == 2
    assert "RS384" in skipped[0]
    assert "32 bytes" in skipped[1]


# ---------------------------------------------------------------- behind the gate

EDGE = b"edge-1"
WAIT = 5.0


class Gate:
    """A SessionGate in front of a real ControlPlane with URL sessions, at fake times (Unix time =
    NOW + monotonic ``now``)."""

    def __init__(self) -> None:
        self.sessions = JwtSessions([], jwks=JwksSchedule(REFRESH, COOLDOWN))
        self.sessions.fetch_started()
        self.sessions.keys_fetched(fetched("old"), NOW)
        manager = ConnectionManager(sessions=self.sessions)
        plane = ControlPlane(manager, 1.0, 60.0, router_id="r1", new_secret=str)
        self.gate = SessionGate(plane, self.sessions, WAIT)
        self.gate.handle(EDGE, encode_control(Hello(edge_id="edge-1", protocol="test")), 0, NOW)
        self.next_id = 0

    def register(self, client_id: str, presented: str, now: float) -> list[Any]:
        self.next_id += 1
        message = RegisterClient(request_id=self.next_id, client_id=client_id, token=presented)
        return replies(self.gate.handle(EDGE, encode_control(message), now, NOW + now))

    def fetch(self, names: tuple[str, ...], now: float) -> list[Any]:
        self.sessions.fetch_started()
        self.sessions.keys_fetched(fetched(*names), NOW + now)
        return replies(self.gate.decided(KEYS_PENDING, now, NOW + now))


def replies(out: list[Outbound]) -> list[Any]:
    return [item.message for item in out if isinstance(item, ToEdge)]


def test_a_register_with_a_new_kid_waits_for_the_fetch_then_succeeds() -> None:
    g = Gate()
    assert g.register("c1", signed("new"), now=COOLDOWN) == []
    [old] = g.register("c2", signed("old"), now=COOLDOWN + 0.1)
    assert isinstance(old, Registered)
    [registered] = g.fetch(("old", "new"), now=COOLDOWN + 0.5)
    assert isinstance(registered, Registered)
    assert registered.client_id == "c1"
    assert g.gate.parked == 0


def test_a_register_whose_kid_the_fetch_lacks_is_refused_after_it() -> None:
    g = Gate()
    g.register("c1", signed("never"), now=COOLDOWN)
    [refused] = g.fetch(("old",), now=COOLDOWN + 0.5)
    assert isinstance(refused, Error)
    assert (refused.code, refused.message) == ("unauthorized", "unknown key id")


def test_within_the_cooldown_a_new_kid_is_refused_at_once() -> None:
    g = Gate()
    [refused] = g.register("c1", signed("new"), now=COOLDOWN - 1)
    assert isinstance(refused, Error)
    assert refused.message == "unknown key id"


def test_a_fetch_that_outlasts_the_wait_refuses_the_register() -> None:
    g = Gate()
    g.register("c1", signed("new"), now=COOLDOWN)
    g.sessions.fetch_started()
    assert g.gate.expire(COOLDOWN + WAIT - 0.1, NOW + COOLDOWN + WAIT - 0.1) == []
    [refused] = replies(g.gate.expire(COOLDOWN + WAIT, NOW + COOLDOWN + WAIT))
    assert isinstance(refused, Error)
    assert (refused.code, refused.message) == ("unauthorized", NOT_FETCHED_IN_TIME)
    assert g.gate.parked == 0
