"""The client protocol codec (edges/core/client_wire.py) and one client's session (edges/core/session.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st

from edges.core.client_wire import (
    DATA_HEADER,
    FRAME_DATA,
    MAX_CLOSE_REASON_BYTES,
    ClientProtocolError,
    CloseCode,
    Closing,
    Connect,
    Connected,
    ErrorReply,
    Ping,
    Pong,
    Resume,
    SkipReason,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
    client_error_code,
    close_reason,
    decode_client_message,
    encode_data_frame,
    encode_server_message,
    encode_skipped_frame,
    parse_data_frame,
)
from edges.core.output import Data, Reply, SubscriptionClosed, SubscriptionOpened
from edges.core.session import (
    TRANSITIONS,
    ClientSession,
    EdgeLimits,
    Event,
    InvalidTransitionError,
    State,
    next_state,
)
from tests.edges.output import queue_frame, raw, wire_forms
from tests.strategies import scaled_examples

REJECTION_CODES = {"bad_request", "too_large"}


def replies(session: ClientSession) -> list[dict[str, Any]]:
    """Drain a session, expecting only control messages, and parse them."""
    out = wire_forms(session.data_to_send())
    assert all(isinstance(item, str) for item in out), out
    return [json.loads(item) for item in out]


def ready_session(limits: EdgeLimits | None = None) -> ClientSession:
    session = ClientSession("c1", "10.0.0.1:5000", limits)
    assert isinstance(session.receive_text('{"op":"connect"}'), Connect)
    session.registered("alice")
    session.data_to_send()
    return session


def snapshot(session: ClientSession) -> tuple[object, ...]:
    return (
        session.state,
        session.close_request,
        session.bad_messages,
        dict(session.dropped),
        session.queued_messages,
        session.queued_bytes,
        session.pending_replies,
    )


# ---------------------------------------------------------------- decoding client messages


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"op":"connect"}', Connect()),
        ('{"op":"connect","token":"abc"}', Connect(token="abc")),
        ('{"op":"subscribe","id":1,"topic":"/a"}', Subscribe(id=1, topic="/a")),
        (
            '{"op":"subscribe","id":2,"topic":"/a","resume":{"epoch":9,"offset":41}}',
            Subscribe(id=2, topic="/a", resume=Resume(epoch=9, offset=41)),
        ),
        ('{"op":"subscribe","id":4,"topic":"/a","max_rate":2}', Subscribe(id=4, topic="/a", max_rate=2.0)),
        (
            '{"op":"subscribe","id":5,"topic":"/a","max_rate":0.25}',
            Subscribe(id=5, topic="/a", max_rate=0.25),
        ),
        ('{"op":"unsubscribe","id":3,"topic":"/a"}', Unsubscribe(id=3, topic="/a")),
        ('{"op":"ping","id":0}', Ping(id=0)),
        ('{"op":"ping","id":9007199254740991,"later":"field"}', Ping(id=2**53 - 1)),
    ],
)
def test_decode_valid_messages(text: str, expected: object) -> None:
    assert decode_client_message(text) == expected


@pytest.mark.parametrize(
    ("text", "request_id"),
    [
        ("", None),
        ("not json", None),
        ("[1, 2]", None),
        ('"connect"', None),
        ('{"id": 4}', 4),
        ('{"op":"shout","id":5}', 5),
        ('{"op":"ping"}', None),
        ('{"op":"ping","id":"7"}', None),
        ('{"op":"ping","id":-1}', None),
        ('{"op":"ping","id":1.5}', None),
        ('{"op":"ping","id":9007199254740992}', None),
        ('{"op":"subscribe","id":6,"topic":7}', 6),
        ('{"op":"subscribe","id":6,"topic":"/a","resume":{"epoch":-1,"offset":0}}', 6),
        ('{"op":"connect","token":5}', None),
        ('{"op":"ping","id":1} trailing', None),
        ("\ud800", None),
        ('{"x":' * 5000 + "1" + "}" * 5000, None),
    ],
)
def test_decode_errors_are_bad_request(text: str, request_id: int | None) -> None:
    with pytest.raises(ClientProtocolError) as caught:
        decode_client_message(text)
    assert caught.value.code == "bad_request"
    assert caught.value.request_id == request_id
    assert 0 < len(caught.value.message) <= 200


def test_decode_too_large_counts_utf8_bytes() -> None:
    fits = '{"op":"connect","token":"' + "é" * 10 + '"}'
    assert (len(fits), len(fits.encode())) == (37, 47)
    assert decode_client_message(fits, max_bytes=47) == Connect(token="é" * 10)
    with pytest.raises(ClientProtocolError) as caught:
        decode_client_message(fits, max_bytes=46)
    assert caught.value.code == "too_large"
    with pytest.raises(ClientProtocolError, match="too_large"):
        decode_client_message("x" * 65537)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
op_objects = st.fixed_dictionaries(
    {"op": st.sampled_from(["connect", "subscribe", "unsubscribe", "ping", "pong", "Ping", ""])},
    optional={
        "id": json_values,
        "topic": json_values,
        "token": json_values,
        "resume": json_values | st.fixed_dictionaries({"epoch": json_values, "offset": json_values}),
    },
)
client_texts = (
    st.text(max_size=80)
    | json_values.map(json.dumps)
    | op_objects.map(json.dumps)
    | st.binary(max_size=40).map(lambda raw: raw.decode("latin-1"))
    | st.integers(1, 3000).map(lambda depth: "[" * depth + "]" * depth)
)


@settings(max_examples=scaled_examples(400))
@given(client_texts)
def test_decode_raises_only_client_protocol_errors(text: str) -> None:
    outcome: object
    try:
        outcome = decode_client_message(text, max_bytes=64)
    except ClientProtocolError as error:
        outcome = error.code
    assert isinstance(outcome, Connect | Subscribe | Unsubscribe | Ping) or outcome in REJECTION_CODES


# ---------------------------------------------------------------- encoding edge messages


@pytest.mark.parametrize(
    ("message", "text"),
    [
        (Connected(client_id="c1", user="alice"), '{"op":"connected","client_id":"c1","user":"alice"}'),
        (
            Subscribed(
                id=1, topic="/a", channel=3, epoch=9, offset=41, content_type="text/plain", policy="latest"
            ),
            '{"op":"subscribed","id":1,"topic":"/a","channel":3,"epoch":9,"offset":41,'
            '"content_type":"text/plain","policy":"latest","resume":"none","resume_from":0}',
        ),
        (Unsubscribed(id=2, topic="/a"), '{"op":"unsubscribed","id":2,"topic":"/a"}'),
        (Pong(id=3), '{"op":"pong","id":3}'),
        (
            ErrorReply(id=None, code="bad_request", message="no"),
            '{"op":"error","id":null,"code":"bad_request","message":"no"}',
        ),
        (
            ErrorReply(id=None, code="forbidden", message="no", topic="/a"),
            '{"op":"error","id":null,"code":"forbidden","message":"no","topic":"/a"}',
        ),
        (Closing(code=4002, reason="expired"), '{"op":"closing","code":4002,"reason":"expired"}'),
    ],
)
def test_encode_server_messages(message: Any, text: str) -> None:
    assert encode_server_message(message) == text


@pytest.mark.parametrize(
    ("router_code", "client_code"),
    [
        ("forbidden", "forbidden"),
        ("unauthorized", "unauthorized"),
        ("limit_exceeded", "limit_exceeded"),
        ("not_subscribed", "not_subscribed"),
        ("duplicate_client", "internal"),
        ("unknown_edge", "unavailable"),
        ("unknown_client", "unavailable"),
        ("something new", "internal"),
    ],
)
def test_client_error_code(router_code: str, client_code: str) -> None:
    assert client_error_code(router_code) == client_code


def test_close_reason_fits_a_close_frame() -> None:
    assert close_reason("short") == "short"
    cut = close_reason("é" * 100)
    assert cut == "é" * 61
    assert len(cut.encode()) <= MAX_CLOSE_REASON_BYTES


# ---------------------------------------------------------------- data frames


def test_data_frame_bytes() -> None:
    frame = encode_data_frame(channel=2, offset=258, payload=b"hi")
    assert frame.hex() == "0100" + "00000002" + "0000000000000102" + "6869"
    assert DATA_HEADER.size == 14
    assert parse_data_frame(frame) == (FRAME_DATA, 0, 2, 258, b"hi")


def test_short_data_frame_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 14"):
        parse_data_frame(b"\x01" * 13)


@given(st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1), st.binary(max_size=64))
def test_data_frame_round_trip(channel: int, offset: int, payload: bytes) -> None:
    frame = encode_data_frame(channel, offset, payload)
    assert len(frame) == 14 + len(payload)
    assert parse_data_frame(frame) == (FRAME_DATA, 0, channel, offset, payload)


# ---------------------------------------------------------------- the lifecycle table


def test_table_lists_every_state() -> None:
    assert set(TRANSITIONS) == set(State)
    assert TRANSITIONS[State.CLOSED] == {}


@given(st.sampled_from(State), st.sampled_from(Event))
def test_next_state_follows_the_table(state: State, event: Event) -> None:
    allowed = TRANSITIONS[state]
    if event in allowed:
        assert next_state(state, event) is allowed[event]
    else:
        with pytest.raises(InvalidTransitionError) as caught:
            next_state(state, event)
        assert (caught.value.state, caught.value.event) == (state, event)


def _registered(session: ClientSession) -> None:
    session.registered("bob")


def _close(session: ClientSession) -> None:
    session.close(CloseCode.GOING_AWAY, "bye")


def _lost(session: ClientSession) -> None:
    session.connection_lost()


def _connect(session: ClientSession) -> None:
    session.receive_text('{"op":"connect"}')


SESSION_EVENTS = {"registered": _registered, "close": _close, "lost": _lost, "connect": _connect}


@settings(max_examples=scaled_examples(200))
@given(st.lists(st.sampled_from(sorted(SESSION_EVENTS)), max_size=8))
def test_illegal_session_events_raise_and_change_nothing(names: list[str]) -> None:
    session = ClientSession("c1")
    queue_frame(session, raw(b"frame", 1))
    for name in names:
        before = snapshot(session)
        try:
            SESSION_EVENTS[name](session)
        except InvalidTransitionError:
            note(f"{name} refused in {before[0]}")
            assert snapshot(session) == before
        else:
            note(f"{name} -> {session.state}")


# ---------------------------------------------------------------- client input


def test_connect_first() -> None:
    session = ClientSession("c1")
    request = session.receive_text('{"op":"connect","token":"t0k"}')
    assert request == Connect(token="t0k")
    assert session.state is State.REGISTERING
    assert session.token == "t0k"
    assert not session.has_output


@pytest.mark.parametrize(
    ("state", "text", "request_id", "why"),
    [
        (State.AWAITING_CONNECT, '{"op":"ping","id":4}', 4, "the first message must be connect"),
        (State.AWAITING_CONNECT, '{"op":"subscribe","id":5,"topic":"/a"}', 5, "must be connect"),
        (State.REGISTERING, '{"op":"ping","id":6}', 6, "wait for connected"),
        (State.REGISTERING, '{"op":"connect"}', None, "wait for connected"),
        (State.READY, '{"op":"connect"}', None, "already connected"),
    ],
)
def test_op_in_the_wrong_state(state: State, text: str, request_id: int | None, why: str) -> None:
    session = ClientSession("c1")
    if state is not State.AWAITING_CONNECT:
        session.receive_text('{"op":"connect"}')
    if state is State.READY:
        session.registered("alice")
        session.data_to_send()
    assert session.receive_text(text) is None
    [reply] = replies(session)
    assert reply["op"] == "error"
    assert reply["id"] == request_id
    assert reply["code"] == "bad_request"
    assert why in reply["message"]
    assert session.state is state
    assert session.bad_messages == 1


def test_registered_says_connected() -> None:
    session = ClientSession("c7")
    session.receive_text('{"op":"connect"}')
    session.registered("alice")
    assert session.state is State.READY
    assert session.user == "alice"
    assert replies(session) == [{"op": "connected", "client_id": "c7", "user": "alice"}]


@pytest.mark.parametrize(
    ("batching", "asked", "batches"), [(True, True, True), (True, False, False), (False, True, False)]
)
def test_batches_when_the_client_asks_and_the_transport_batches(
    batching: bool, asked: bool, batches: bool
) -> None:
    session = ClientSession("c7", batching=batching)
    session.receive_text(json.dumps({"op": "connect", "batch": asked}))
    session.registered("alice")
    assert session.batches is batches
    expected = {"op": "connected", "client_id": "c7", "user": "alice"}
    assert replies(session) == [{**expected, "batch": True} if batches else expected]


def test_ping_is_answered_by_the_session() -> None:
    session = ready_session()
    assert session.receive_text('{"op":"ping","id":12}') is None
    assert replies(session) == [{"op": "pong", "id": 12}]


def test_subscribe_and_unsubscribe_go_to_the_hub() -> None:
    session = ready_session()
    assert session.receive_text('{"op":"subscribe","id":1,"topic":"/a"}') == Subscribe(id=1, topic="/a")
    assert session.receive_text('{"op":"unsubscribe","id":2,"topic":"/a"}') == Unsubscribe(id=2, topic="/a")
    assert not session.has_output


def test_bad_json_gets_an_error_with_the_id_when_readable() -> None:
    session = ready_session()
    session.receive_text('{"op":"subscribe","id":3,"topic":["/a"]}')
    [reply] = replies(session)
    assert (reply["op"], reply["id"], reply["code"]) == ("error", 3, "bad_request")
    assert session.bad_messages == 1
    assert session.state is State.READY


def test_message_over_the_limit_is_too_large() -> None:
    session = ready_session(EdgeLimits(max_message_bytes=32))
    session.receive_text('{"op":"ping","id":1,"pad":"' + "x" * 20 + '"}')
    [reply] = replies(session)
    assert (reply["code"], reply["id"]) == ("too_large", None)


@pytest.mark.parametrize("state", [State.AWAITING_CONNECT, State.REGISTERING, State.READY])
def test_binary_from_a_client_is_a_bad_request(state: State) -> None:
    session = ClientSession("c1")
    if state is not State.AWAITING_CONNECT:
        session.receive_text('{"op":"connect"}')
    if state is State.READY:
        session.registered("alice")
        session.data_to_send()
    session.receive_binary(b"\x01\x02")
    [reply] = replies(session)
    assert (reply["op"], reply["id"], reply["code"]) == ("error", None, "bad_request")
    assert session.state is state


def test_input_while_closing_is_ignored() -> None:
    session = ready_session()
    session.close(CloseCode.GOING_AWAY, "bye")
    session.data_to_send()
    assert session.receive_text('{"op":"ping","id":1}') is None
    session.receive_binary(b"x")
    assert session.data_to_send() == []
    assert session.bad_messages == 0


@settings(max_examples=scaled_examples(300))
@given(st.sampled_from([State.AWAITING_CONNECT, State.REGISTERING, State.READY]), client_texts | st.binary())
def test_random_input_only_ever_yields_a_rejection(state: State, message: str | bytes) -> None:
    session = ClientSession("c1", limits=EdgeLimits(max_message_bytes=64))
    if state is not State.AWAITING_CONNECT:
        session.receive_text('{"op":"connect"}')
    if state is State.READY:
        session.registered("alice")
        session.data_to_send()
    if isinstance(message, bytes):
        session.receive_binary(message)
        valid = False
    else:
        try:
            decode_client_message(message, 64)
            valid = True
        except ClientProtocolError:
            valid = False
        session.receive_text(message)
    out = replies(session)
    if not valid:
        assert len(out) == 1
        assert out[0]["op"] == "error"
        assert out[0]["code"] in REJECTION_CODES
        assert session.state is state
        assert session.bad_messages == 1


# ---------------------------------------------------------------- the outgoing queue


def test_control_goes_ahead_of_data_and_drain_swaps() -> None:
    session = ready_session()
    queue_frame(session, raw(b"d1", 1))
    session.send(Pong(id=1))
    queue_frame(session, raw(b"d2", 1))
    assert wire_forms(session.data_to_send()) == ['{"op":"pong","id":1}', b"d1", b"d2"]
    assert session.data_to_send() == []
    assert (session.queued_messages, session.queued_bytes) == (0, 0)


def test_queue_drops_oldest_by_count() -> None:
    session = ready_session(EdgeLimits(queue_max_messages=2))
    for offset, frame in enumerate([b"a", b"b", b"c"], start=1):
        assert queue_frame(session, raw(frame, 1, offset))
    skipped = encode_skipped_frame(1, SkipReason.QUEUE_FULL, 1, 1, 1)
    assert wire_forms(session.data_to_send()) == [skipped, b"b", b"c"]
    assert session.dropped == {"queue_full": 1}


def test_queue_drops_oldest_by_bytes() -> None:
    session = ready_session(EdgeLimits(queue_max_bytes=10))
    queue_frame(session, raw(b"aaaa", 1, 7))
    queue_frame(session, raw(b"bbbb", 1, 8))
    queue_frame(session, raw(b"cccccc", 1, 9))
    assert session.queued_bytes == 10
    skipped = encode_skipped_frame(1, SkipReason.QUEUE_FULL, 7, 7, 1)
    assert wire_forms(session.data_to_send()) == [skipped, b"bbbb", b"cccccc"]
    assert session.dropped == {"queue_full": 1}


def test_frame_larger_than_the_queue_is_dropped_alone() -> None:
    session = ready_session(EdgeLimits(queue_max_bytes=4))
    queue_frame(session, raw(b"ok", 1, 1))
    assert not queue_frame(session, raw(b"toolong", 1, 2))
    assert wire_forms(session.data_to_send()) == [b"ok"]
    assert session.dropped == {"oversize": 1}
    queue_frame(session, raw(b"go", 1, 3))
    skipped = encode_skipped_frame(1, SkipReason.QUEUE_FULL, 2, 2, 1)
    assert wire_forms(session.data_to_send()) == [skipped, b"go"]


def test_control_replies_are_never_dropped() -> None:
    session = ready_session(EdgeLimits(queue_max_messages=1, queue_max_bytes=1))
    for request_id in range(5):
        session.receive_text(f'{{"op":"ping","id":{request_id}}}')
    assert [reply["id"] for reply in replies(session)] == [0, 1, 2, 3, 4]


def test_too_many_unread_replies_close_the_client() -> None:
    session = ready_session(EdgeLimits(max_pending_replies=3))
    for request_id in range(4):
        session.receive_text(f'{{"op":"ping","id":{request_id}}}')
    assert session.state is State.CLOSING
    assert session.close_request == (CloseCode.POLICY_VIOLATION, "too many unread replies")
    out = replies(session)
    assert [reply["op"] for reply in out] == ["pong"] * 4 + ["closing"]
    assert out[-1] == {"op": "closing", "code": 1008, "reason": "too many unread replies"}


def test_purge_channel_keeps_the_others() -> None:
    session = ready_session()
    for channel, frame in [(1, b"a"), (2, b"bb"), (1, b"c"), (2, b"dd")]:
        queue_frame(session, raw(frame, channel))
    assert session.purge_channel(1) == 2
    assert session.purge_channel(7) == 0
    assert session.queued_bytes == 4
    assert wire_forms(session.data_to_send()) == [b"bb", b"dd"]
    assert session.dropped == {"unsubscribed": 2}


def test_close_drops_data_and_ends_with_closing() -> None:
    session = ready_session()
    session.send(Pong(id=1))
    queue_frame(session, raw(b"data", 1))
    session.close(CloseCode.DROPPED, "r" * 200)
    assert session.state is State.CLOSING
    assert session.close_request == (4002, "r" * 123)
    out = replies(session)
    assert out == [{"op": "pong", "id": 1}, {"op": "closing", "code": 4002, "reason": "r" * 123}]
    assert session.dropped == {"closed": 1}
    with pytest.raises(InvalidTransitionError):
        session.close(CloseCode.NORMAL, "again")


def test_connection_lost_discards_everything() -> None:
    session = ready_session()
    session.send(Pong(id=1))
    queue_frame(session, raw(b"data", 1))
    session.connection_lost()
    assert session.state is State.CLOSED
    assert session.data_to_send() == []
    assert session.dropped == {"closed": 1}
    with pytest.raises(InvalidTransitionError):
        session.connection_lost()


queue_ops = st.lists(
    st.one_of(
        st.tuples(st.just("push"), st.integers(0, 2), st.integers(0, 12)),
        st.tuples(st.just("purge"), st.integers(0, 2), st.just(0)),
        st.tuples(st.just("drain"), st.just(0), st.just(0)),
    ),
    max_size=40,
)


@settings(max_examples=scaled_examples(300))
@given(st.integers(1, 4), st.integers(1, 16), queue_ops)
def test_queue_bounds_and_accounting(
    max_messages: int, max_bytes: int, ops: list[tuple[str, int, int]]
) -> None:
    session = ready_session(EdgeLimits(queue_max_messages=max_messages, queue_max_bytes=max_bytes))
    pushed: list[Data] = []
    received: list[Data] = []
    for number, (op, channel, size) in enumerate(ops):
        if op == "push":
            frame = raw(bytes([channel]) + number.to_bytes(2, "big") + b"x" * size, channel, number)
            pushed.append(frame)
            queue_frame(session, frame)
        elif op == "purge":
            session.purge_channel(channel)
        else:
            out = session.data_to_send()
            received += [item for item in out if isinstance(item, Data) and any(item is f for f in pushed)]
        assert session.queued_messages <= max_messages
        assert session.queued_bytes <= max_bytes
        assert len(pushed) == len(received) + session.dropped.total() + session.queued_messages
    for channel in range(3):
        iterator = iter([frame for frame in pushed if frame.channel == channel])
        mine = [frame for frame in received if frame.channel == channel]
        assert all(any(frame is candidate for candidate in iterator) for frame in mine), (
            "order kept per channel"
        )


def test_replies_are_typed_and_subscriptions_are_announced() -> None:
    session = ready_session()
    subscribed = Subscribed(
        id=1, topic="/t", channel=3, epoch=1, offset=0, content_type="image/jpeg", policy="latest"
    )
    session.send(subscribed)
    session.send(ErrorReply(id=None, code="forbidden", message="no", topic="/t"))
    session.send(Unsubscribed(id=2, topic="/u"))
    session.send(ErrorReply(id=3, code="bad_request", message="no"))
    out = session.data_to_send()
    assert [type(item) for item in out] == [
        Reply,
        SubscriptionOpened,
        Reply,
        SubscriptionClosed,
        Reply,
        SubscriptionClosed,
        Reply,
    ]
    assert out[0] == Reply(subscribed, encode_server_message(subscribed))
    assert out[1] == SubscriptionOpened(3, "/t", "image/jpeg", "latest")
    assert (out[3], out[5]) == (SubscriptionClosed("/t"), SubscriptionClosed("/u"))
    assert session.pending_replies == 0


def test_a_decoded_connect_is_received_like_its_text() -> None:
    session = ClientSession("c1")
    assert session.receive(Connect(token="tok")) == Connect(token="tok")
    assert (session.state, session.token) == (State.REGISTERING, "tok")
    assert session.receive(Connect()) is None
    assert replies(session)[0]["code"] == "bad_request"


def test_limits_are_validated() -> None:
    assert EdgeLimits().max_message_bytes == 64 * 1024
    assert EdgeLimits().queue_max_bytes == 8 * 1024 * 1024
    with pytest.raises(ValueError, match="at least 1"):
        EdgeLimits(queue_max_messages=0)


# ---------------------------------------------------------------- request rate


RATED = EdgeLimits(max_requests_per_second=2.0, request_burst=3)


def test_messages_over_the_rate_are_answered_rate_limited_and_counted() -> None:
    session = ready_session(RATED)
    for index in range(4):
        session.receive_text(f'{{"op":"ping","id":{index}}}', now=10.0)
    session.receive_binary(b"x", now=10.0)
    assert [(r["op"], r.get("code"), r["id"]) for r in replies(session)] == [
        ("pong", None, 0),
        ("pong", None, 1),
        ("pong", None, 2),
        ("error", "rate_limited", 3),
        ("error", "rate_limited", None),
    ]
    assert (session.rate_limited, session.bad_messages) == (2, 0)
    session.receive_text('{"op":"ping","id":9}', now=10.5)
    assert replies(session) == [{"op": "pong", "id": 9}]


def test_acks_and_messages_without_a_clock_are_not_rated() -> None:
    session = ready_session(RATED)
    for _ in range(10):
        session.receive_text('{"op":"ack","channel":0,"offset":1}', now=1.0)
        session.receive_text('{"op":"ping","id":1}')
    assert session.rate_limited == 0
    assert len(replies(session)) == 10


def test_a_client_that_goes_on_past_the_burst_of_refusals_is_closed_with_4004() -> None:
    session = ready_session(RATED)
    for index in range(3 + 3 + 1):
        session.receive_text("not json", now=5.0 + index * 1e-3)
    out = replies(session)
    assert [r["code"] for r in out[:3]] == ["bad_request"] * 3
    assert [r["code"] for r in out[3:6]] == ["rate_limited"] * 3
    assert out[6] == {"op": "closing", "code": 4004, "reason": "too many requests"}
    assert session.close_request == (CloseCode.RATE_LIMITED, "too many requests")
    assert session.rate_limited == 4


@pytest.mark.parametrize("rate", [0.0, -1.0, float("inf"), float("nan")])
def test_the_request_rate_must_be_positive_and_finite(rate: float) -> None:
    with pytest.raises(ValueError, match="max_requests_per_second"):
        EdgeLimits(max_requests_per_second=rate)
