"""Topic names, declared topics and patterns, and the metadata that goes with them.

A topic is a UTF-8 path: ``/`` followed by one or more segments separated by ``/``. A segment is
made of letters and digits of any script and the characters ``_ . - ~ : @ + =``. A topic is at
most :data:`MAX_TOPIC_BYTES` bytes once encoded.

Patterns name many topics at once: a ``*`` segment matches exactly one segment, and a final ``**``
segment matches one or more. When several declarations match, the most specific wins: an exact
topic first, then the pattern with the most literal segments, then ``*`` over ``**``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec

from router.core.errors import ErrorCode, RefusedError
from router.core.policy import DEFAULT_POLICY, DeliveryPolicy

MAX_TOPIC_BYTES = 255
_RESOLVED_CACHE_SIZE = 4096
_SEGMENT = r"[\w.~:@+=-]+"
_TOPIC_RE = re.compile(rf"(?:/{_SEGMENT})+")
_PATTERN_SEGMENT_RE = re.compile(rf"{_SEGMENT}|\*|\*\*")


def topic_error(topic: str) -> str | None:
    """Why ``topic`` is not a valid topic name, or ``None`` when it is."""
    if not topic.startswith("/"):
        return "a topic starts with '/'"
    if len(topic.encode("utf-8", "surrogatepass")) > MAX_TOPIC_BYTES:
        return f"a topic is at most {MAX_TOPIC_BYTES} bytes"
    if not _TOPIC_RE.fullmatch(topic) or not topic.isprintable():
        return "a topic is '/'-separated segments of letters, digits and _ . - ~ : @ + ="
    return None


def check_topic(topic: str) -> str:
    """Return ``topic`` unchanged, or raise :class:`RefusedError` ``bad_topic``."""
    reason = topic_error(topic)
    if reason is not None:
        raise RefusedError(ErrorCode.BAD_TOPIC, f"{topic[:80]!r}: {reason}")
    return topic


def decode_topic(raw: bytes) -> str:
    """Decode and check a topic frame from the wire."""
    try:
        topic = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise RefusedError(ErrorCode.BAD_TOPIC, "a topic must be UTF-8") from None
    return check_topic(topic)


class TopicSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A declared topic or pattern and its metadata."""

    pattern: str
    content_type: str = "application/octet-stream"
    description: str = ""
    max_subscribers: int | None = None
    max_payload_bytes: int | None = None
    policy: DeliveryPolicy = DEFAULT_POLICY

    def __post_init__(self) -> None:
        check_pattern(self.pattern)


def check_pattern(pattern: str) -> None:
    """Raise ``ValueError`` unless ``pattern`` is a topic or a pattern of the grammar above."""
    segments = pattern.split("/")
    if segments[0] != "" or len(segments) < 2:
        raise ValueError(f"pattern {pattern!r} must start with '/'")
    for index, segment in enumerate(segments[1:], start=1):
        if not _PATTERN_SEGMENT_RE.fullmatch(segment):
            raise ValueError(f"pattern {pattern!r} has a bad segment {segment!r}")
        if segment == "**" and index != len(segments) - 1:
            raise ValueError(f"pattern {pattern!r}: '**' may only be the last segment")


def _specificity(pattern: str) -> tuple[int, int, int]:
    segments = pattern.split("/")[1:]
    literal = sum(1 for s in segments if s not in ("*", "**"))
    return (literal, 0 if segments[-1] == "**" else 1, len(segments))


def pattern_matches(pattern: str, topic: str) -> bool:
    """Whether ``topic`` is one of the topics that ``pattern`` names."""
    wanted = pattern.split("/")[1:]
    have = topic.split("/")[1:]
    if wanted and wanted[-1] == "**":
        head = wanted[:-1]
        return len(have) > len(head) and _segments_match(head, have[: len(head)])
    return len(wanted) == len(have) and _segments_match(wanted, have)


def _segments_match(wanted: list[str], have: list[str]) -> bool:
    return all(w in ("*", h) for w, h in zip(wanted, have, strict=True))


OPEN_SPEC = TopicSpec(pattern="/**", description="any topic (open registry)")


class TopicRegistry:
    """Which topics may exist, and their metadata.

    With ``allow_undeclared`` a valid topic that no declaration matches is still accepted, with
    default metadata; without it such a topic is refused as ``unknown_topic``.
    """

    def __init__(self, specs: Iterable[TopicSpec] = (), *, allow_undeclared: bool = True) -> None:
        self.allow_undeclared = allow_undeclared
        self._exact: dict[str, TopicSpec] = {}
        self._patterns: list[TopicSpec] = []
        self._resolved: dict[str, TopicSpec | None] = {}
        for spec in specs:
            self.declare(spec)

    @classmethod
    def open(cls) -> TopicRegistry:
        """A registry that accepts every valid topic: the default for local use."""
        return cls(allow_undeclared=True)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TopicRegistry:
        """Build from the ``[topics]`` table of a config file (see ``docs/operations.md``)."""
        declared = msgspec.convert(config.get("declare", []), list[TopicSpec])
        return cls(declared, allow_undeclared=bool(config.get("allow_undeclared", True)))

    def declare(self, spec: TopicSpec) -> None:
        """Add or replace a declaration."""
        if "*" in spec.pattern:
            self._patterns = [p for p in self._patterns if p.pattern != spec.pattern] + [spec]
            self._patterns.sort(key=lambda p: _specificity(p.pattern), reverse=True)
        else:
            check_topic(spec.pattern)
            self._exact[spec.pattern] = spec
        self._resolved.clear()

    def declarations(self) -> list[TopicSpec]:
        """Every declaration, exact topics first."""
        return [*self._exact.values(), *self._patterns]

    def resolve(self, topic: str) -> TopicSpec:
        """The metadata of a valid topic; raises ``bad_topic`` or ``unknown_topic``."""
        check_topic(topic)
        try:
            spec = self._resolved[topic]
        except KeyError:
            if len(self._resolved) >= _RESOLVED_CACHE_SIZE:
                self._resolved.clear()
            spec = self._resolved[topic] = self._lookup(topic)
        if spec is None:
            raise RefusedError(ErrorCode.UNKNOWN_TOPIC, f"{topic!r} is not a declared topic")
        return spec

    def _lookup(self, topic: str) -> TopicSpec | None:
        exact = self._exact.get(topic)
        if exact is not None:
            return exact
        for spec in self._patterns:
            if pattern_matches(spec.pattern, topic):
                return spec
        if self.allow_undeclared:
            return TopicSpec(pattern=topic)
        return None
