"""Topic grammar, pattern matching and the topic registry."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.core import ErrorCode, RefusedError, TopicRegistry, TopicSpec, check_topic, topic_error
from router.core.policy import DeliveryPolicy
from router.core.topics import MAX_TOPIC_BYTES, decode_topic, pattern_matches
from tests.strategies import invalid_topics, related_topics, segments, valid_topics

# ---------------------------------------------------------------- grammar


@pytest.mark.parametrize(
    "topic",
    [
        "/a",
        "/video/main_camera",
        "/video/main/sub",
        "/a.b~c:d@e+f=g-h_i",
        "/1/2/3",
        "/ünïcödé/日本語/Ελληνικά/٣",
        "/" + "a" * (MAX_TOPIC_BYTES - 1),
        "/" + "é" * ((MAX_TOPIC_BYTES - 1) // 2),
    ],
)
def test_valid_topics(topic: str) -> None:
    assert topic_error(topic) is None
    assert check_topic(topic) == topic
    assert decode_topic(topic.encode()) == topic


@pytest.mark.parametrize(
    "topic",
    [
        "",
        "/",
        "a",
        "a/b",
        "//a",
        "/a/",
        "/a//b",
        "/a b",
        " /a",
        "/a\0",
        "/a\0b",
        "/a\tb",
        "/a\nb",
        "/a#b",
        "/a?b",
        "/a%20b",
        "/a*",
        "/*",
        "/a/**",
        "/a\\b",
        "/a\u200bb",
        "/a\u00a0b",
        "/a\ud800",
        "/" + "a" * MAX_TOPIC_BYTES,
        "/" + "é" * (MAX_TOPIC_BYTES // 2 + 1),
    ],
)
def test_invalid_topics(topic: str) -> None:
    assert topic_error(topic) is not None
    with pytest.raises(RefusedError) as refused:
        check_topic(topic)
    assert refused.value.code is ErrorCode.BAD_TOPIC


@pytest.mark.parametrize(
    "raw",
    [
        b"/\xff",
        b"/a\x80b",
        b"/\xc0\xaf",
        b"/\xed\xa0\x80",
        b"/\xe6\x97",
        b"/a\x00b",
        b"",
    ],
)
def test_decode_topic_refuses_bad_bytes(raw: bytes) -> None:
    with pytest.raises(RefusedError) as refused:
        decode_topic(raw)
    assert refused.value.code is ErrorCode.BAD_TOPIC


@given(valid_topics)
def test_generated_valid_topics_are_accepted(topic: str) -> None:
    assert len(topic.encode()) <= MAX_TOPIC_BYTES
    assert topic_error(topic) is None
    assert decode_topic(topic.encode()) == topic


@given(invalid_topics())
def test_generated_invalid_topics_are_refused(topic: str) -> None:
    with pytest.raises(RefusedError) as refused:
        check_topic(topic)
    assert refused.value.code is ErrorCode.BAD_TOPIC


@given(valid_topics)
def test_no_valid_topic_contains_nul(topic: str) -> None:
    """The data frame's exact-match terminator relies on this."""
    assert "\0" not in topic
    assert topic_error(topic[:1] + "\0" + topic[1:]) is not None


# ---------------------------------------------------------------- patterns


@pytest.mark.parametrize(
    ("pattern", "topic", "matches"),
    [
        ("/a/*", "/a/b", True),
        ("/a/*", "/a", False),
        ("/a/*", "/a/b/c", False),
        ("/*/b", "/x/b", True),
        ("/*/b", "/x/c", False),
        ("/a/**", "/a/b", True),
        ("/a/**", "/a/b/c/d", True),
        ("/a/**", "/a", False),
        ("/a/**", "/ab/c", False),
        ("/**", "/anything", True),
        ("/**", "/any/thing", True),
        ("/a/b", "/a/b", True),
        ("/a/b", "/a/b/c", False),
        ("/video/main", "/video/main_camera", False),
        ("/video/main/**", "/video/main_camera", False),
        ("/video/*", "/video/main_camera", True),
    ],
)
def test_pattern_matching(pattern: str, topic: str, matches: bool) -> None:
    assert pattern_matches(pattern, topic) is matches


@given(parts=st.lists(segments, min_size=1, max_size=6), data=st.data())
def test_wildcards_in_place_of_segments_match(parts: list[str], data: st.DataObject) -> None:
    topic = "/" + "/".join(parts)
    stars = data.draw(st.lists(st.booleans(), min_size=len(parts), max_size=len(parts)))
    starred = "/" + "/".join("*" if star else part for part, star in zip(parts, stars, strict=True))
    assert pattern_matches(starred, topic)
    keep = data.draw(st.integers(0, len(parts) - 1))
    tail = "/" + "/".join([*parts[:keep], "**"])
    assert pattern_matches(tail, topic)
    assert not pattern_matches("/" + "/".join([*parts, "**"]), topic)
    assert not pattern_matches(starred + "/*", topic)


@pytest.mark.parametrize(
    ("topic", "winner"),
    [
        ("/video/main", "/video/main"),
        ("/video/other", "/video/*"),
        ("/video/a/b", "/video/**"),
        ("/video/a/x", "/video/*/x"),
        ("/x/main", "/*/main"),
        ("/x/y", "/**"),
        ("/a/b/c", "/a/*/c"),
        ("/a/b/d", "/a/b/**"),
        ("/a/z/d", "/a/*/*"),
    ],
)
def test_the_most_specific_declaration_wins(topic: str, winner: str) -> None:
    patterns = [
        "/**",
        "/video/**",
        "/video/*",
        "/*/main",
        "/video/*/x",
        "/a/*/*",
        "/a/b/**",
        "/a/*/c",
        "/video/main",
    ]
    for order in (patterns, patterns[::-1]):
        registry = TopicRegistry([TopicSpec(pattern=p, description=p) for p in order])
        assert registry.resolve(topic).pattern == winner


_PATTERN_SEGMENTS = st.sampled_from(["a", "b", "*"])


@st.composite
def _patterns(draw: st.DrawFn) -> str:
    parts = draw(st.lists(_PATTERN_SEGMENTS, min_size=1, max_size=3))
    if draw(st.booleans()):
        parts.append("**")
    return "/" + "/".join(parts)


def _rank(pattern: str) -> tuple[bool, int, bool]:
    """Reference order: exact first, then more literal segments, then ``*`` over ``**``."""
    parts = pattern.split("/")[1:]
    exact = "*" not in pattern
    return (exact, sum(p not in ("*", "**") for p in parts), parts[-1] != "**")


@given(
    patterns=st.lists(_patterns(), min_size=1, max_size=6, unique=True),
    topic=st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=4).map(lambda p: "/" + "/".join(p)),
)
def test_resolve_agrees_with_a_brute_force_ranking(patterns: list[str], topic: str) -> None:
    registry = TopicRegistry([TopicSpec(pattern=p) for p in patterns], allow_undeclared=False)
    matching = [p for p in patterns if pattern_matches(p, topic)]
    if not matching:
        with pytest.raises(RefusedError) as refused:
            registry.resolve(topic)
        assert refused.value.code is ErrorCode.UNKNOWN_TOPIC
        return
    best = max(_rank(p) for p in matching)
    assert _rank(registry.resolve(topic).pattern) == best
    assert registry.resolve(topic).pattern in matching


# ---------------------------------------------------------------- registry


def test_a_closed_registry_refuses_undeclared_topics() -> None:
    registry = TopicRegistry([TopicSpec(pattern="/video/**")], allow_undeclared=False)
    assert registry.resolve("/video/main").pattern == "/video/**"
    with pytest.raises(RefusedError) as refused:
        registry.resolve("/audio/main")
    assert refused.value.code is ErrorCode.UNKNOWN_TOPIC
    with pytest.raises(RefusedError) as refused:
        registry.resolve("/video")
    assert refused.value.code is ErrorCode.UNKNOWN_TOPIC


def test_an_open_registry_gives_undeclared_topics_default_metadata() -> None:
    registry = TopicRegistry.open()
    spec = registry.resolve("/anything/at/all")
    assert spec == TopicSpec(pattern="/anything/at/all")
    assert spec.max_subscribers is None


@pytest.mark.parametrize("allow_undeclared", [True, False])
def test_bad_topics_are_refused_before_the_registry_is_asked(allow_undeclared: bool) -> None:
    registry = TopicRegistry([TopicSpec(pattern="/**")], allow_undeclared=allow_undeclared)
    with pytest.raises(RefusedError) as refused:
        registry.resolve("/a//b")
    assert refused.value.code is ErrorCode.BAD_TOPIC


@given(related_topics())
def test_declarations_do_not_leak_to_topics_sharing_a_prefix(topics: list[str]) -> None:
    base, glued, child = topics
    registry = TopicRegistry([TopicSpec(pattern=base, max_subscribers=1)], allow_undeclared=False)
    assert registry.resolve(base).max_subscribers == 1
    for other in (glued, child):
        with pytest.raises(RefusedError) as refused:
            registry.resolve(other)
        assert refused.value.code is ErrorCode.UNKNOWN_TOPIC


def test_declaring_again_replaces_and_is_seen_after_a_cached_resolve() -> None:
    registry = TopicRegistry([TopicSpec(pattern="/a/*", content_type="text/plain")])
    assert registry.resolve("/a/b").content_type == "text/plain"
    registry.declare(TopicSpec(pattern="/a/*", content_type="application/json"))
    assert registry.resolve("/a/b").content_type == "application/json"
    registry.declare(TopicSpec(pattern="/a/b", content_type="image/png"))
    assert registry.resolve("/a/b").content_type == "image/png"
    assert [s.pattern for s in registry.declarations()] == ["/a/b", "/a/*"]


def test_an_undeclared_topic_resolved_before_a_declaration_gets_the_declaration() -> None:
    registry = TopicRegistry.open()
    assert registry.resolve("/late").max_subscribers is None
    registry.declare(TopicSpec(pattern="/late", max_subscribers=3))
    assert registry.resolve("/late").max_subscribers == 3


@pytest.mark.parametrize(
    "pattern", ["", "a", "a/b", "/", "/a//b", "/a/**/b", "/**x", "/a b", "/a/***", "/a/", "/a\0"]
)
def test_bad_patterns_are_refused(pattern: str) -> None:
    with pytest.raises(ValueError, match="pattern"):
        TopicSpec(pattern=pattern)


def test_from_config_reads_declarations_and_policies() -> None:
    registry = TopicRegistry.from_config(
        {
            "allow_undeclared": False,
            "declare": [
                {"pattern": "/video/**", "max_subscribers": 2, "policy": {"kind": "latest", "priority": 3}},
                {"pattern": "/events", "content_type": "application/json"},
            ],
        }
    )
    assert registry.resolve("/video/main").policy == DeliveryPolicy(kind="latest", priority=3)
    assert registry.resolve("/video/main").max_subscribers == 2
    assert registry.resolve("/events").content_type == "application/json"
    with pytest.raises(RefusedError):
        registry.resolve("/other")
