"""The wire formats: every message survives a round trip, and bad bytes only ever raise WireError."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, get_args

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.core import ClientFigures, DeliveryPolicy, EdgeTotals
from router.wire import (
    CONTROL_VERSION,
    DATA_META_SIZE,
    MAX_CONTROL_BYTES,
    MAX_HEADER_BYTES,
    MAX_RECOVERED_BYTES,
    MAX_ROUTER_MESSAGE_BYTES,
    DataMeta,
    DropClient,
    EdgeMessage,
    EdgeStatsReport,
    Error,
    Heartbeat,
    Hello,
    PolicyUpdate,
    ProducerHeader,
    ProducerMessage,
    Recover,
    Recovered,
    Refreshed,
    RefreshToken,
    RegisterClient,
    Registered,
    RouterEndpoints,
    RouterMessage,
    ShardMap,
    Stats,
    StatsRequest,
    Subscribe,
    SubscribeOk,
    UnregisterClient,
    Unsubscribe,
    Unsubscribed,
    Welcome,
    WireError,
    data_frame_head,
    decode_edge_message,
    decode_producer_header,
    decode_router_message,
    encode_control,
    parse_data_head,
    parse_producer_frames,
)
from tests.strategies import policies, related_topics, scaled_examples, valid_topics

FUZZ = settings(max_examples=scaled_examples(300), deadline=None)

# ---------------------------------------------------------------- strategies

texts = st.text(max_size=40)
ids = st.text(max_size=24)
request_ids = st.integers(min_value=-(2**63), max_value=2**64 - 1)
seconds = st.floats(allow_nan=False)
epochs = st.integers(min_value=0, max_value=2**32 - 1)
offsets = st.integers(min_value=0, max_value=2**64 - 1)

msgpack_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
msgpack_values = st.recursive(
    msgpack_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)

EDGE_STRATEGIES: dict[type[Any], st.SearchStrategy[Any]] = {
    Hello: st.builds(Hello, edge_id=ids, protocol=texts, version=request_ids),
    Heartbeat: st.builds(Heartbeat, router_id=ids),
    RegisterClient: st.builds(
        RegisterClient,
        request_id=request_ids,
        client_id=ids,
        protocol=texts,
        remote=texts,
        token=st.none() | texts,
    ),
    RefreshToken: st.builds(RefreshToken, request_id=request_ids, client_id=ids, token=texts),
    UnregisterClient: st.builds(UnregisterClient, client_id=ids),
    Subscribe: st.builds(
        Subscribe,
        request_id=request_ids,
        client_id=ids,
        topic=texts,
        resume_epoch=st.none() | epochs,
        resume_offset=st.none() | offsets,
    ),
    Unsubscribe: st.builds(Unsubscribe, request_id=request_ids, client_id=ids, topic=texts),
    Recover: st.builds(
        Recover,
        request_id=request_ids,
        topic=texts,
        epoch=epochs,
        from_offset=offsets,
        to_offset=st.none() | offsets,
    ),
    StatsRequest: st.builds(StatsRequest, request_id=request_ids),
    EdgeStatsReport: st.builds(
        EdgeStatsReport,
        totals=st.builds(
            EdgeTotals,
            clients=offsets,
            delivered=offsets,
            queued_messages=offsets,
            queued_bytes=offsets,
            dropped=st.dictionaries(ids, offsets, max_size=4),
        ),
        topic_drops=st.dictionaries(texts, offsets, max_size=4),
        clients=st.lists(st.builds(ClientFigures, ids, offsets, offsets, offsets), max_size=4),
    ),
}
ROUTER_STRATEGIES: dict[type[Any], st.SearchStrategy[Any]] = {
    Welcome: st.builds(
        Welcome,
        router_id=ids,
        version=request_ids,
        heartbeat_interval=seconds,
        heartbeat_timeout=seconds,
    ),
    Heartbeat: EDGE_STRATEGIES[Heartbeat],
    Registered: st.builds(Registered, request_id=request_ids, client_id=ids, user=texts),
    Refreshed: st.builds(
        Refreshed,
        request_id=request_ids,
        client_id=ids,
        user=texts,
        expires_at=st.none() | seconds,
        revoked=st.lists(texts, max_size=3),
    ),
    SubscribeOk: st.builds(
        SubscribeOk,
        request_id=request_ids,
        client_id=ids,
        topic=texts,
        epoch=epochs,
        offset=offsets,
        content_type=texts,
        policy=policies,
        resume=st.sampled_from(["none", "ok", "history_exceeded", "epoch_changed", "not_reliable"]) | texts,
        resume_from=offsets,
        resume_to=offsets,
    ),
    Recovered: st.builds(
        Recovered,
        request_id=request_ids,
        topic=texts,
        epoch=epochs,
        messages=st.lists(st.tuples(offsets, st.binary(max_size=20), st.binary(max_size=60)), max_size=5),
        more=st.booleans(),
    ),
    Unsubscribed: st.builds(Unsubscribed, request_id=request_ids, client_id=ids, topic=texts),
    Error: st.builds(Error, request_id=request_ids, code=texts, message=texts, client_id=ids),
    PolicyUpdate: st.builds(PolicyUpdate, topic=texts, policy=policies),
    DropClient: st.builds(DropClient, client_id=ids, reason=texts, code=st.integers(0, 2**16)),
    Stats: st.builds(
        Stats, request_id=request_ids, stats=st.dictionaries(st.text(max_size=12), msgpack_values, max_size=6)
    ),
    ShardMap: st.builds(
        ShardMap,
        shards=st.integers(1, 1024),
        owners=st.lists(st.tuples(ids, offsets), max_size=8),
        routers=st.dictionaries(ids, st.builds(RouterEndpoints, control=texts, xpub=texts), max_size=3),
    ),
}
edge_messages = st.one_of(*EDGE_STRATEGIES.values())
router_messages = st.one_of(*ROUTER_STRATEGIES.values())
ALL_TYPES = set(EDGE_STRATEGIES) | set(ROUTER_STRATEGIES)
TAGS = sorted({str(t.__struct_config__.tag) for t in ALL_TYPES})
FIELDS = sorted({name for t in ALL_TYPES for name in t.__struct_fields__})


def only_wire_errors(decode: Callable[[bytes], object], body: bytes) -> None:
    """Decoding ``body`` either succeeds or raises WireError; any other exception fails the test."""
    try:
        decode(body)
    except WireError as error:
        reason = error.reason
    else:
        return
    assert reason in {"bad_control", "bad_data", "bad_header", "bad_frames"}


DECODERS: list[Callable[[bytes], object]] = [
    decode_edge_message,
    decode_router_message,
    decode_producer_header,
    parse_data_head,
]

# ---------------------------------------------------------------- control messages


def test_every_control_message_type_has_a_strategy() -> None:
    assert set(EDGE_STRATEGIES) == set(get_args(EdgeMessage))
    assert set(ROUTER_STRATEGIES) == set(get_args(RouterMessage))


@given(edge_messages)
def test_edge_messages_round_trip(message: EdgeMessage) -> None:
    assert decode_edge_message(encode_control(message)) == message


@given(router_messages)
def test_router_messages_round_trip(message: RouterMessage) -> None:
    assert decode_router_message(encode_control(message)) == message


@given(edge_messages.filter(lambda m: not isinstance(m, Heartbeat)))
def test_an_edge_message_is_not_a_router_message(message: EdgeMessage) -> None:
    with pytest.raises(WireError) as refused:
        decode_router_message(encode_control(message))
    assert refused.value.reason == "bad_control"


@given(router_messages.filter(lambda m: not isinstance(m, Heartbeat)))
def test_a_router_message_is_not_an_edge_message(message: RouterMessage) -> None:
    with pytest.raises(WireError) as refused:
        decode_edge_message(encode_control(message))
    assert refused.value.reason == "bad_control"


def test_hello_defaults_to_the_current_version_and_unknown_fields_are_skipped() -> None:
    body = msgspec.msgpack.encode({"type": "hello", "edge_id": "e", "protocol": "ws", "later": [1, 2]})
    assert decode_edge_message(body) == Hello(edge_id="e", protocol="ws", version=CONTROL_VERSION)


def test_a_message_missing_a_required_field_is_refused() -> None:
    body = msgspec.msgpack.encode({"type": "subscribe", "request_id": 1, "client_id": "c"})
    with pytest.raises(WireError, match="topic"):
        decode_edge_message(body)


def test_an_invalid_policy_inside_a_message_is_a_wire_error() -> None:
    body = msgspec.msgpack.encode({"type": "policy", "topic": "/a", "policy": {"queue_max_messages": 0}})
    with pytest.raises(WireError):
        decode_router_message(body)


def test_control_messages_over_the_size_limit_are_refused_before_decoding() -> None:
    body = encode_control(Subscribe(request_id=1, client_id="c", topic="/" + "a" * MAX_CONTROL_BYTES))
    assert len(body) > MAX_CONTROL_BYTES
    with pytest.raises(WireError, match="over"):
        decode_edge_message(body)


def test_old_peers_subscribe_and_subscribed_decode_with_the_resume_defaults() -> None:
    """Messages written before resume existed: the new fields take their defaults."""
    subscribe = {"type": "subscribe", "request_id": 2, "client_id": "c", "topic": "/a"}
    assert decode_edge_message(msgspec.msgpack.encode(subscribe)) == Subscribe(
        request_id=2, client_id="c", topic="/a", resume_epoch=None, resume_offset=None
    )
    policy = msgspec.to_builtins(DeliveryPolicy())
    subscribed = {
        **subscribe,
        "type": "subscribed",
        "epoch": 9,
        "offset": 4,
        "content_type": "x",
        "policy": policy,
    }
    decoded = decode_router_message(msgspec.msgpack.encode(subscribed))
    assert isinstance(decoded, SubscribeOk)
    assert (decoded.resume, decoded.resume_from, decoded.resume_to) == ("none", 0, 0)


def test_recovered_messages_are_offset_header_payload_arrays_of_exact_bytes() -> None:
    payload = bytes(range(256))
    message = Recovered(
        request_id=3, topic="/a", epoch=7, messages=[(41, b"", payload), (42, b"\x80", b"")], more=True
    )
    raw = msgspec.msgpack.decode(encode_control(message))
    assert raw == {
        "type": "recovered",
        "request_id": 3,
        "topic": "/a",
        "epoch": 7,
        "messages": [[41, b"", payload], [42, b"\x80", b""]],
        "more": True,
    }
    assert decode_router_message(encode_control(message)) == message


def test_recover_leaves_to_offset_out_by_default() -> None:
    body = msgspec.msgpack.encode(
        {"type": "recover", "request_id": 1, "topic": "/a", "epoch": 5, "from_offset": 0}
    )
    assert decode_edge_message(body) == Recover(
        request_id=1, topic="/a", epoch=5, from_offset=0, to_offset=None
    )


def test_a_full_recovered_reply_is_a_router_message_but_never_an_edge_message() -> None:
    big = Recovered(request_id=1, topic="/a", epoch=1, messages=[(1, b"", bytes(MAX_RECOVERED_BYTES))])
    body = encode_control(big)
    assert MAX_CONTROL_BYTES < len(body) <= MAX_ROUTER_MESSAGE_BYTES
    assert decode_router_message(body) == big
    with pytest.raises(WireError, match="over"):
        decode_edge_message(body)
    with pytest.raises(WireError, match="over"):
        decode_router_message(bytes(MAX_ROUTER_MESSAGE_BYTES + 1))


# ---------------------------------------------------------------- data frames

nul_free_bytes = st.binary(min_size=1, max_size=300).filter(lambda b: b"\0" not in b)
topic_bytes = valid_topics.map(str.encode) | nul_free_bytes


@given(topic=topic_bytes, epoch=epochs, offset=offsets, header=st.binary(max_size=200))
def test_data_head_round_trips(topic: bytes, epoch: int, offset: int, header: bytes) -> None:
    head = data_frame_head(topic, epoch, offset, header)
    assert len(head) == len(topic) + 1 + DATA_META_SIZE + len(header)
    assert head.startswith(topic + b"\0")
    assert parse_data_head(head) == DataMeta(topic, epoch, offset, header)


@given(data=st.data(), topics=related_topics() | st.lists(valid_topics, min_size=2, max_size=2, unique=True))
def test_a_subscription_prefix_matches_exactly_one_topic(data: st.DataObject, topics: list[str]) -> None:
    """What the edges rely on for exact topics over zmq's prefix matching, at the byte level."""
    a, b = data.draw(st.permutations(topics))[:2]
    header = data.draw(st.binary(max_size=20))
    head = data_frame_head(a.encode(), data.draw(epochs), data.draw(offsets), header)
    assert head.startswith(a.encode() + b"\0")
    assert not head.startswith(b.encode() + b"\0")


def test_without_the_terminator_a_shorter_topic_would_match() -> None:
    head = data_frame_head(b"/video/main_camera", 1, 1)
    assert head.startswith(b"/video/main")
    assert not head.startswith(b"/video/main\0")


@pytest.mark.parametrize(
    ("head", "why"),
    [
        (b"", "no NUL"),
        (b"/a", "no NUL"),
        (b"\0" + bytes(DATA_META_SIZE), "no NUL"),
        (b"/a\0" + bytes(DATA_META_SIZE - 1), "shorter"),
        (b"/a\0" + bytes([2]) + bytes(DATA_META_SIZE - 1), "version 2"),
    ],
)
def test_bad_data_heads_are_refused(head: bytes, why: str) -> None:
    with pytest.raises(WireError, match=why) as refused:
        parse_data_head(head)
    assert refused.value.reason == "bad_data"


# ---------------------------------------------------------------- producer frames


@given(topic=st.binary(max_size=50), payload=st.binary(max_size=100))
def test_two_frames_are_topic_and_payload(topic: bytes, payload: bytes) -> None:
    assert parse_producer_frames([topic, payload]) == ProducerMessage(topic, b"", payload)
    assert parse_producer_frames([topic, b"", payload]) == ProducerMessage(topic, b"", payload)


FIELDS_OF_HEADER = set(ProducerHeader.__struct_fields__)
producer_headers = st.builds(
    ProducerHeader,
    content_type=st.none() | texts,
    timestamp=st.none() | st.integers(min_value=-(2**63), max_value=2**64 - 1),
    key=st.none() | texts,
)


@given(header=producer_headers, extra=st.dictionaries(st.text(max_size=8), msgpack_values, max_size=3))
def test_three_frames_carry_the_header_verbatim(header: ProducerHeader, extra: dict[str, Any]) -> None:
    fields = {k: v for k, v in msgspec.structs.asdict(header).items() if v is not None}
    raw = msgspec.msgpack.encode({**{k: v for k, v in extra.items() if k not in FIELDS_OF_HEADER}, **fields})
    message = parse_producer_frames([b"/t", raw, b"payload"])
    assert message == ProducerMessage(b"/t", raw, b"payload")
    assert decode_producer_header(raw) == header


@pytest.mark.parametrize(
    "header",
    [
        msgspec.msgpack.encode([1, 2]),
        msgspec.msgpack.encode({"timestamp": "yesterday"}),
        msgspec.msgpack.encode({"content_type": 5}),
        b"\xc1",
        msgspec.msgpack.encode({"key": "k" * MAX_HEADER_BYTES}),
    ],
)
def test_bad_headers_are_refused(header: bytes) -> None:
    with pytest.raises(WireError) as refused:
        parse_producer_frames([b"/t", header, b""])
    assert refused.value.reason == "bad_header"


@pytest.mark.parametrize("count", [0, 1, 4, 5])
def test_other_frame_counts_are_refused(count: int) -> None:
    with pytest.raises(WireError) as refused:
        parse_producer_frames([b"/t"] * count)
    assert refused.value.reason == "bad_frames"


# ---------------------------------------------------------------- fuzz: only WireError


@FUZZ
@given(body=st.binary(max_size=300))
def test_random_bytes_raise_only_wire_errors(body: bytes) -> None:
    for decode in DECODERS:
        only_wire_errors(decode, body)


@FUZZ
@given(frames=st.lists(st.binary(max_size=60), max_size=6))
def test_random_frame_lists_raise_only_wire_errors(frames: list[bytes]) -> None:
    try:
        parse_producer_frames(frames)
    except WireError as error:
        reason = error.reason
    else:
        return
    assert reason in {"bad_frames", "bad_header"}


@FUZZ
@given(
    tag=st.sampled_from(TAGS) | texts | msgpack_scalars,
    fields=st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), msgpack_values, max_size=8),
)
def test_near_miss_control_maps_raise_only_wire_errors(tag: object, fields: dict[str, Any]) -> None:
    """Maps shaped like control messages, with any tag and fields of any type."""
    body = msgspec.msgpack.encode({"type": tag, **fields})
    for decode in DECODERS:
        only_wire_errors(decode, body)


@FUZZ
@given(message=edge_messages | router_messages, data=st.data())
def test_mutated_messages_raise_only_wire_errors(
    message: EdgeMessage | RouterMessage, data: st.DataObject
) -> None:
    body = bytearray(encode_control(message))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(body)))
        match data.draw(st.sampled_from(["flip", "cut", "insert"])):
            case "flip" if at < len(body):
                body[at] ^= data.draw(st.integers(1, 255))
            case "cut":
                del body[at:]
            case _:
                body[at:at] = data.draw(st.binary(min_size=1, max_size=4))
    for decode in DECODERS:
        only_wire_errors(decode, bytes(body))


def _nested(depth: int, leaf: bytes = b"\xc0") -> bytes:
    return b"\x91" * depth + leaf


@pytest.mark.parametrize("depth", [100, 5_000, MAX_CONTROL_BYTES - 100])
@pytest.mark.parametrize(
    "body",
    [
        lambda deep: deep,
        lambda deep: b"\x82\xa4type\xa9heartbeat\xa1x" + deep,
        lambda deep: b"\x83\xa4type\xa5stats\xaarequest_id\x01\xa5stats\x81\xa1a" + deep,
    ],
    ids=["bare", "unknown_field", "stats_value"],
)
def test_deeply_nested_input_is_a_wire_error(depth: int, body: Callable[[bytes], bytes]) -> None:
    """msgspec raises RecursionError on deep nesting; a decoder must turn it into WireError."""
    raw = body(_nested(depth))
    for decode in DECODERS:
        only_wire_errors(decode, raw)
    only_wire_errors(decode_producer_header, b"\x81\xa1x" + _nested(min(depth, MAX_HEADER_BYTES - 10)))
