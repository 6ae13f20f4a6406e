"""Hypothesis strategies shared by the core tests: topics, ids, policies, and example budgets.

Valid topics are built from the grammar in ``router/core/topics.py`` independently of its regular
expression, so a test that feeds them to the parser checks the parser against the documentation.
"""

from __future__ import annotations

import os
import string
from typing import get_args

from hypothesis import strategies as st

from router.core.policy import DeliveryPolicy, PolicyKind, SlowClientAction
from router.core.topics import MAX_TOPIC_BYTES

__all__ = [
    "SEGMENT_PUNCTUATION",
    "client_ids",
    "edge_ids",
    "invalid_topics",
    "policies",
    "related_topics",
    "scaled_examples",
    "segments",
    "valid_topics",
]

DEFAULT_FUZZ_EXAMPLES = 200


def scaled_examples(default: int) -> int:
    """``default`` scaled by ``SWITCHBOARD_FUZZ_EXAMPLES`` (the state machine's budget, 200 unless set).

    ``SWITCHBOARD_FUZZ_EXAMPLES=20000`` makes every fuzz test run 100 times longer.
    """
    wanted = int(os.environ.get("SWITCHBOARD_FUZZ_EXAMPLES", DEFAULT_FUZZ_EXAMPLES))
    return max(1, default * wanted // DEFAULT_FUZZ_EXAMPLES)


# ---------------------------------------------------------------- topics

SEGMENT_PUNCTUATION = "_.-~:@+="

_ascii_segment_char = st.sampled_from(string.ascii_letters + string.digits + SEGMENT_PUNCTUATION)
_any_segment_char = st.characters(categories=("L", "N")) | st.sampled_from(SEGMENT_PUNCTUATION)

segments = st.text(alphabet=_ascii_segment_char | _any_segment_char, min_size=1, max_size=12)
"""One topic segment: letters and digits of any script and ``_ . - ~ : @ + =``."""

_short_topics = st.lists(segments, min_size=1, max_size=5).map(lambda parts: "/" + "/".join(parts))


@st.composite
def _long_topics(draw: st.DrawFn) -> str:
    """Topics of 200 to exactly MAX_TOPIC_BYTES bytes, with multi-byte characters near the end."""
    size = draw(st.integers(200, MAX_TOPIC_BYTES))
    tail = draw(st.sampled_from(["", "é", "日", "\U0001d538"]))
    head = draw(st.text(alphabet=_ascii_segment_char, min_size=1, max_size=20))
    body = (head * size)[: size - 1 - len(tail.encode())]
    return "/" + body + tail


valid_topics = _short_topics | _long_topics()
"""Topics that the grammar accepts (every one is at most MAX_TOPIC_BYTES bytes)."""


@st.composite
def related_topics(draw: st.DrawFn) -> list[str]:
    """Distinct topics where one is a byte prefix of the others: ``/a/b``, ``/a/b_x`` and ``/a/b/y``."""
    base = "/" + "/".join(draw(st.lists(segments, min_size=1, max_size=3)))
    glued = base + draw(segments)
    child = base + "/" + draw(segments)
    return [base, glued, child]


_FORBIDDEN_CHARS = " \0\t\n\r#?%*&\\,;!\"'<>[]{}|^`$()\x7f\u00a0\u200b\u2028\ud800"
_forbidden_char = st.sampled_from(_FORBIDDEN_CHARS) | st.characters(
    categories=("Zs", "Zl", "Zp", "Cc", "Cf", "Cs", "Co", "Sm", "Sc", "Sk", "So", "Mn", "Me"),
    exclude_characters=SEGMENT_PUNCTUATION,
)


@st.composite
def invalid_topics(draw: st.DrawFn) -> str:
    """Strings the grammar refuses: no leading ``/``, empty segments, forbidden characters, too long."""
    topic = draw(_short_topics)
    kind = draw(st.sampled_from(["no_slash", "empty", "empty_segment", "bad_char", "too_long"]))
    if kind == "no_slash":
        return topic[1:]
    if kind == "empty":
        return draw(st.sampled_from(["", "/", "//", "///"]))
    if kind == "empty_segment":
        return draw(
            st.sampled_from(["/" + topic, topic + "/", topic.replace("/", "//", draw(st.integers(1, 5)))])
        )
    if kind == "bad_char":
        at = draw(st.integers(1, len(topic)))
        return topic[:at] + draw(_forbidden_char) + topic[at:]
    unit = draw(st.sampled_from(["a", "é", "日", "\U0001d538"]))
    count = MAX_TOPIC_BYTES // len(unit.encode()) + draw(st.integers(1, 10))
    return "/" + unit * count


# ---------------------------------------------------------------- ids and policies

_id_chars = st.sampled_from(string.ascii_letters + string.digits + "-_.:")
client_ids = st.text(alphabet=_id_chars, min_size=1, max_size=16) | st.uuids().map(str)
edge_ids = st.text(alphabet=_id_chars, min_size=1, max_size=16)

_counts = st.integers(min_value=0, max_value=2**31)
_positive_counts = st.integers(min_value=1, max_value=2**31)

policies = st.builds(
    DeliveryPolicy,
    kind=st.sampled_from(get_args(PolicyKind)),
    priority=st.integers(-1000, 1000),
    max_rate=st.none() | st.floats(min_value=1e-3, max_value=1e9),
    queue_max_messages=_positive_counts,
    queue_max_bytes=_positive_counts,
    slow_client=st.sampled_from(get_args(SlowClientAction)),
    history_max_messages=_counts,
    history_max_bytes=_counts,
    history_max_age=st.floats(min_value=0.0, max_value=1e9),
)
"""Every valid delivery policy, with each field drawn independently."""
