"""The edge's half of the control link (``edges/core/link_state.py``), driven with a made-up clock."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st

from edges.core.link_state import (
    TRANSITIONS,
    InvalidTransitionError,
    LinkEvent,
    LinkProtocol,
    LinkState,
    next_state,
)
from router.core.edge_reports import EdgeTotals
from router.core.errors import ErrorCode
from router.wire import (
    EdgeMessage,
    EdgeStatsReport,
    Error,
    Heartbeat,
    Hello,
    RegisterClient,
    Registered,
    RouterMessage,
    Welcome,
    encode_control,
)
from tests.strategies import scaled_examples

HELLO = Hello(edge_id="e1", protocol="websocket")
RESYNC: list[EdgeMessage] = [RegisterClient(request_id=7, client_id="e1/c1")]
REPORT: list[EdgeMessage] = [EdgeStatsReport(totals=EdgeTotals(clients=1))]


def welcome(router_id: str = "r1", interval: float = 1.0, timeout: float = 5.0, session: str = "") -> bytes:
    return encode_control(
        Welcome(
            router_id=router_id,
            version=1,
            heartbeat_interval=interval,
            heartbeat_timeout=timeout,
            session=session,
        )
    )


def beat(router_id: str = "r1") -> bytes:
    return encode_control(Heartbeat(router_id=router_id))


UNKNOWN_EDGE = Error(request_id=0, code=ErrorCode.UNKNOWN_EDGE.value, message="who?")


def new_link() -> LinkProtocol:
    link = LinkProtocol("e1", "websocket", heartbeat_interval=1.0)
    link.resync = lambda: list(RESYNC)
    link.report = lambda: list(REPORT)
    return link


def connected_link(now: float = 0.0) -> LinkProtocol:
    """A link that said hello at ``now`` and was welcomed by ``r1`` at once."""
    link = new_link()
    link.tick(now)
    link.receive(welcome(), now)
    link.data_to_send()
    return link


# ---------------------------------------------------------------- the table


def test_table_lists_every_state() -> None:
    assert set(TRANSITIONS) == set(LinkState)
    assert TRANSITIONS[LinkState.CLOSED] == {}


@given(st.sampled_from(LinkState), st.sampled_from(LinkEvent))
def test_next_state_follows_the_table(state: LinkState, event: LinkEvent) -> None:
    allowed = TRANSITIONS[state]
    if event in allowed:
        assert next_state(state, event) is allowed[event]
    else:
        with pytest.raises(InvalidTransitionError) as caught:
            next_state(state, event)
        assert (caught.value.state, caught.value.event) == (state, event)


# ---------------------------------------------------------------- hello and welcome


def test_the_first_tick_says_hello_and_repeats_it_until_welcomed() -> None:
    link = new_link()
    assert link.state is LinkState.STARTING
    assert link.data_to_send() == []
    assert link.tick(10.0) == 11.0
    assert link.data_to_send() == [HELLO]
    assert link.state.value == "greeting"
    assert link.tick(10.5) == 11.0
    assert link.data_to_send() == []
    assert link.tick(11.0) == 12.0
    assert link.data_to_send() == [HELLO]
    assert not link.connected


def test_welcome_takes_the_routers_timing_and_sends_the_resync() -> None:
    link = new_link()
    link.tick(0.0)
    link.data_to_send()
    assert link.receive(welcome("r1", interval=0.5, timeout=2.0), 0.1) is None
    assert link.data_to_send() == RESYNC
    assert link.connected
    assert (link.router_id, link.welcomes) == ("r1", 1)
    assert (link.heartbeat_interval, link.heartbeat_timeout) == (0.5, 2.0)
    assert link.tick(1.0) == 1.5
    assert link.tick(1.5) == 2.0


def test_each_welcome_sends_the_resync_again() -> None:
    link = connected_link()
    link.receive(welcome(), 0.2)
    assert link.data_to_send() == RESYNC
    assert link.welcomes == 2


def test_a_welcome_before_any_hello_is_ignored() -> None:
    link = new_link()
    assert link.receive(welcome(), 0.0) is None
    assert link.data_to_send() == []
    assert (link.state, link.welcomes, link.router_id) == (LinkState.STARTING, 0, "")


# ---------------------------------------------------------------- heartbeats


def test_connected_heartbeats_carry_the_report() -> None:
    link = connected_link()
    assert link.tick(1.0) == 2.0
    assert link.data_to_send() == [Heartbeat(), *REPORT]
    link.receive(beat("r1"), 1.2)
    assert link.data_to_send() == []
    assert link.connected


def test_an_unanswered_hello_is_told_past_the_timeout_then_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    link = new_link()
    with caplog.at_level(logging.WARNING, logger="switchboard.edge"):
        for now in range(6):
            link.tick(float(now))
        assert caplog.text == "", "within the timeout, nothing to say yet"
        link.tick(6.0)
        assert "no welcome from the router for 6.0 s" in caplog.text
        caplog.clear()
        for now in range(7, 66):
            link.tick(float(now))
        assert caplog.text == ""
        link.tick(66.0)
        assert "no welcome from the router for 66.0 s" in caplog.text
        caplog.clear()
        link.receive(welcome(), 66.5)
        for now in range(67, 80):
            link.tick(float(now))
        assert caplog.text.count("\n") == 1, "router silent; then no second warning in the same minute"
        assert "router silent for 5.5 s" in caplog.text


def test_heartbeat_timeout_says_hello_again(caplog: pytest.LogCaptureFixture) -> None:
    link = connected_link()
    for now in (1.0, 2.0, 3.0, 4.0, 5.0):
        link.tick(now)
    assert link.data_to_send() == [Heartbeat(), *REPORT] * 5
    assert link.connected
    assert link.silent_for(5.0) == 5.0
    with caplog.at_level(logging.WARNING, logger="switchboard.edge"):
        link.tick(6.0)
    assert link.data_to_send() == [HELLO]
    assert link.state is LinkState.GREETING
    assert "router silent for 6.0 s" in caplog.text
    link.tick(7.0)
    assert link.data_to_send() == [HELLO]


def test_a_silent_router_asks_for_a_new_connection_and_a_hello_with_the_session() -> None:
    link = new_link()
    link.tick(0.0)
    link.receive(welcome(session="s1"), 0.0)
    link.data_to_send()
    for now in (1.0, 2.0, 3.0, 4.0, 5.0):
        link.tick(now)
        assert not link.take_new_connection()
    link.data_to_send()
    link.tick(6.0)
    assert link.take_new_connection()
    assert not link.take_new_connection(), "asked once"
    assert link.data_to_send() == [Hello(edge_id="e1", protocol="websocket", session="s1")]
    for now in (7.0, 8.0, 9.0, 10.0, 11.0):
        link.tick(now)
        assert not link.take_new_connection(), f"not again within the timeout ({now})"
    link.tick(12.0)
    assert link.take_new_connection(), "again after a further timeout of silence"
    link.receive(welcome(session="s2"), 12.5)
    link.tick(13.0)
    assert not link.take_new_connection()


def test_an_edge_id_in_use_while_saying_hello_is_logged_once_a_minute_and_kept_from_the_application(
    caplog: pytest.LogCaptureFixture,
) -> None:
    link = new_link()
    link.tick(0.0)
    refused = encode_control(Error(request_id=0, code=ErrorCode.EDGE_ID_IN_USE.value, message="held"))
    with caplog.at_level(logging.WARNING, logger="switchboard.edge"):
        assert link.receive(refused, 0.1) is None
        assert link.receive(refused, 1.1) is None
    assert caplog.text.count("refused this edge's hello: held") == 1
    assert link.state is LinkState.GREETING
    link.tick(1.0)
    assert link.data_to_send() == [HELLO, HELLO]


def test_any_message_from_the_router_counts_as_heard() -> None:
    link = connected_link()
    link.receive(encode_control(Registered(request_id=1, client_id="e1/c1", user="bob")), 5.5)
    link.tick(6.0)
    assert link.data_to_send() == [Heartbeat(), *REPORT]
    assert link.silent_for(6.0) == 0.5


def test_a_message_that_does_not_decode_counts_as_heard_and_goes_nowhere() -> None:
    link = connected_link()
    assert link.receive(b"\xc1 not msgpack", 4.0) is None
    assert link.data_to_send() == []
    assert link.silent_for(4.0) == 0.0


# ---------------------------------------------------------------- restarts


def test_a_new_router_id_is_a_restart_and_the_next_welcome_resyncs() -> None:
    link = connected_link()
    assert link.receive(beat("r2"), 1.0) is None
    assert link.data_to_send() == [HELLO]
    assert not link.connected
    link.receive(welcome("r2"), 1.1)
    assert link.data_to_send() == RESYNC
    assert (link.router_id, link.welcomes, link.connected) == ("r2", 2, True)


def test_a_heartbeat_without_router_id_is_no_restart() -> None:
    link = connected_link()
    link.receive(beat(""), 1.0)
    assert link.data_to_send() == []
    assert link.connected


def test_unknown_edge_says_hello_again_and_still_reaches_the_application() -> None:
    link = connected_link()
    assert link.receive(encode_control(UNKNOWN_EDGE), 1.0) == UNKNOWN_EDGE
    assert link.data_to_send() == [HELLO]
    assert link.state is LinkState.GREETING
    assert link.receive(encode_control(UNKNOWN_EDGE), 1.1) == UNKNOWN_EDGE
    assert link.data_to_send() == []


def test_replies_go_to_the_application() -> None:
    link = connected_link()
    reply = Registered(request_id=3, client_id="e1/c1", user="bob")
    assert link.receive(encode_control(reply), 1.0) == reply
    assert link.data_to_send() == []


def test_request_ids_count_from_one_and_never_repeat() -> None:
    link = new_link()
    assert [link.next_request_id() for _ in range(3)] == [1, 2, 3]
    link.tick(0.0)
    link.receive(welcome(), 0.0)
    link.receive(beat("r2"), 0.1)
    assert link.next_request_id() == 4


def test_closed_sends_nothing_and_takes_nothing() -> None:
    link = connected_link()
    link.tick(1.0)
    link.close()
    link.close()
    assert link.state is LinkState.CLOSED
    assert link.data_to_send() == []
    assert link.tick(2.0) is None
    assert link.receive(encode_control(UNKNOWN_EDGE), 2.0) is None
    assert link.data_to_send() == []


# ---------------------------------------------------------------- any order of inputs


@dataclass
class Model:
    """What the link should do: whether it is welcomed, by whom, and when it last heard anything."""

    started: bool = False
    connected: bool = False
    router_id: str = ""
    timeout: float = 5.0
    interval: float = 1.0
    heard: float = 0.0
    due: float = 0.0
    welcomes: int = 0
    sent: list[EdgeMessage] = field(default_factory=list)

    def tick(self, now: float) -> None:
        if self.started and now < self.due:
            return
        if not self.started:
            self.started, self.heard = True, now
        if self.connected and now - self.heard <= self.timeout:
            self.sent += [Heartbeat(), *REPORT]
        else:
            self.connected = False
            self.sent.append(HELLO)
        self.due = now + self.interval

    def receive(self, message: RouterMessage, now: float) -> None:
        if not self.started:
            return
        self.heard = now
        match message:
            case Welcome():
                self.connected, self.router_id, self.welcomes = True, message.router_id, self.welcomes + 1
                self.interval, self.timeout = message.heartbeat_interval, message.heartbeat_timeout
                self.sent += RESYNC
            case Heartbeat(router_id=router_id) if router_id and router_id != self.router_id:
                self.connected = False
                self.sent.append(HELLO)
            case Error() if self.connected:
                self.connected = False
                self.sent.append(HELLO)


router_ids = st.sampled_from(["", "r1", "r2"])
inputs = st.lists(
    st.one_of(
        st.tuples(st.just("tick"), st.floats(0.0, 8.0)),
        st.tuples(st.just("welcome"), st.sampled_from(["r1", "r2"]), st.sampled_from([0.5, 1.0])),
        st.tuples(st.just("heartbeat"), router_ids),
        st.tuples(st.just("unknown_edge")),
    ),
    max_size=30,
)


@settings(max_examples=scaled_examples(300))
@given(inputs)
def test_the_link_follows_a_simple_model(steps: list[tuple[object, ...]]) -> None:
    link, model, now = new_link(), Model(), 0.0
    for step in steps:
        message: RouterMessage | None = None
        match step:
            case ("tick", float(dt)):
                now += dt
                link.tick(now)
                model.tick(now)
            case ("welcome", str(router_id), float(interval)):
                timeout = 5 * interval
                message = Welcome(
                    router_id=router_id, version=1, heartbeat_interval=interval, heartbeat_timeout=timeout
                )
            case ("heartbeat", str(router_id)):
                message = Heartbeat(router_id=router_id)
            case _:
                message = UNKNOWN_EDGE
        if message is not None:
            link.receive(encode_control(message), now)
            model.receive(message, now)
        note(f"{step} at {now:.2f}: {link.state.value}")
        assert link.data_to_send() == model.sent
        model.sent.clear()
        assert link.connected is model.connected
        assert link.connected is (link.state is LinkState.CONNECTED)
        assert (link.router_id, link.welcomes) == (model.router_id, model.welcomes)
