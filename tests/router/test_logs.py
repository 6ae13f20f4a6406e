"""ThrottledLog (router/logs.py) and the log line formats (router/logfmt.py)."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from router.logfmt import JsonFormatter, TextFormatter
from router.logs import ThrottledLog


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records]


def test_a_flood_gives_one_line_then_a_count(caplog: pytest.LogCaptureFixture) -> None:
    throttled = ThrottledLog(logging.getLogger("test.throttle"), interval=5.0)
    with caplog.at_level(logging.INFO, logger="test.throttle"):
        for n in range(1000):
            throttled.warning("bad_topic", "dropped %s", "x", now=100.0 + n / 1000)
        throttled.warning("bad_topic", "dropped %s", "y", now=105.0)
    assert messages(caplog) == ["dropped x", "dropped y (and 999 more like it since the last report)"]
    assert caplog.records[-1].__dict__["suppressed"] == 999


def test_kinds_are_throttled_apart_and_burst_allows_several(caplog: pytest.LogCaptureFixture) -> None:
    throttled = ThrottledLog(logging.getLogger("test.throttle"), interval=5.0, burst=3)
    with caplog.at_level(logging.INFO, logger="test.throttle"):
        for n in range(10):
            throttled.info("a", "a%d", n, now=100.0)
            throttled.info("b", "b%d", n, now=100.0)
    assert messages(caplog) == ["a0", "b0", "a1", "b1", "a2", "b2"]
    assert {record.levelno for record in caplog.records} == {logging.INFO}


def test_extra_reaches_the_record(caplog: pytest.LogCaptureFixture) -> None:
    throttled = ThrottledLog(logging.getLogger("test.throttle"))
    with caplog.at_level(logging.INFO, logger="test.throttle"):
        throttled.warning("k", "refused", now=0.0, extra={"client_id": "c1", "topic": "/t"})
    record = caplog.records[0]
    assert (record.__dict__["client_id"], record.__dict__["topic"]) == ("c1", "/t")


def test_a_clock_that_goes_back_starts_a_new_window(caplog: pytest.LogCaptureFixture) -> None:
    throttled = ThrottledLog(logging.getLogger("test.throttle"), interval=5.0)
    with caplog.at_level(logging.INFO, logger="test.throttle"):
        for now in (100.0, 101.0, 50.0, 51.0, 55.0):
            throttled.info("k", "at %s", now, now=now)
    assert messages(caplog) == [
        "at 100.0",
        "at 50.0 (and 1 more like it since the last report)",
        "at 55.0 (and 1 more like it since the last report)",
    ]


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("switchboard.edge", logging.WARNING, __file__, 1, message, args, None)
    made.__dict__.update(extra)
    return made


def test_json_lines_carry_the_ids() -> None:
    line = JsonFormatter().format(
        record("client %s lost %d", "c1", 3, client_id="c1", edge_id="e", reason="x")
    )
    parsed = json.loads(line)
    assert "\n" not in line
    assert parsed.pop("time").endswith("+00:00")
    assert parsed == {
        "level": "warning",
        "logger": "switchboard.edge",
        "message": "client c1 lost 3",
        "client_id": "c1",
        "edge_id": "e",
        "reason": "x",
    }


def test_json_keeps_the_exception_and_odd_values() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        made = record("failed", where=object())
        made.exc_info = sys.exc_info()
    parsed = json.loads(JsonFormatter().format(made))
    assert "ValueError: boom" in parsed["exception"]
    assert parsed["where"].startswith("<object")


def test_text_lines_append_the_ids() -> None:
    line = TextFormatter().format(record("client connected", client_id="c1", edge_id="e"))
    assert line.endswith("WARNING switchboard.edge: client connected client_id=c1 edge_id=e")
    assert TextFormatter().format(record("plain")).endswith("switchboard.edge: plain")


def test_text_lines_escape_what_could_forge_a_line_or_a_field() -> None:
    forged = "bye\n2026-01-01 00:00:00,000 ERROR switchboard.router: forged\r\u2028\x1b[31m"
    line = TextFormatter().format(record(forged, reason=forged, topic='a b="c"', code=4000))
    assert not set(line) & {"\n", "\r", "\u2028", "\x1b"}
    assert line.endswith(
        "switchboard.edge: bye\\n2026-01-01 00:00:00,000 ERROR switchboard.router: forged\\r\\u2028\\x1b[31m"
        ' reason="bye\\n2026-01-01 00:00:00,000 ERROR switchboard.router: forged\\r\\u2028\\x1b[31m"'
        ' topic="a b=\\"c\\"" code=4000'
    )


def test_text_values_quote_only_when_they_must() -> None:
    line = TextFormatter().format(record("m", plain="c1.7", empty="", slash="a\\b", spaced="a b"))
    assert line.endswith('m plain=c1.7 empty="" slash="a\\\\b" spaced="a b"')
