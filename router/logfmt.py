r"""Log line formats for every Switchboard process: ``text`` for people, ``json`` for collectors.

Structured ids go in ``extra`` (``log.info("client connected", extra={"client_id": ...})``). The
JSON format writes one object per line with ``time``, ``level``, ``logger``, ``message`` and every
extra key; the text format appends the extras as ``key=value`` after the message.

Both keep one record on one line whatever its fields hold, since many come from clients (a close
reason, a topic): the text format writes control characters as escapes (``\n``, ``\x1b``) and quotes
a value that holds spaces, ``=`` or quotes, so that no field can forge a line or another field.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Final

__all__ = ["LOG_FORMATS", "JsonFormatter", "TextFormatter", "add_log_arguments", "configure_logging"]

LOG_FORMATS: Final = ("text", "json")
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_ESCAPES: Final = {
    **{code: f"\\x{code:02x}" for code in (*range(0x20), *range(0x7F, 0xA0))},
    ord("\n"): "\\n",
    ord("\r"): "\\r",
    ord("\t"): "\\t",
    0x2028: "\\u2028",
    0x2029: "\\u2029",
}
"""Control characters (C0, DEL, C1) and Unicode's line and paragraph separators, as escapes."""
_PLAIN_VALUE: Final = re.compile(r'[^\s="\\\x00-\x1f\x7f-\x9f]+')
"""A value written as it is after ``key=``; any other is quoted."""

_RECORD_FIELDS: Final = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


def escape(text: str) -> str:
    """``text`` on one line: its control characters and line separators as escapes."""
    return text.translate(_ESCAPES)


def text_value(value: object) -> str:
    """A field's value for ``key=value``: as it is when plain, else quoted and escaped."""
    text = str(value)
    if _PLAIN_VALUE.fullmatch(text):
        return text
    return '"' + escape(text.replace("\\", "\\\\").replace('"', '\\"')) + '"'


def extras(record: logging.LogRecord) -> dict[str, object]:
    """What the caller passed in ``extra``, in the order given."""
    return {key: value for key, value in record.__dict__.items() if key not in _RECORD_FIELDS}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in extras(record).items():
            line.setdefault(key, value)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """The classic line (:data:`TEXT_FORMAT`), then the extras as ``key=value``, every field
    escaped (an exception's traceback still follows on lines of its own)."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        line = f"{record.asctime} {record.levelname} {escape(record.name)}: {escape(record.message)}"
        fields = extras(record)
        if not fields:
            return line
        return line + " " + " ".join(f"{escape(key)}={text_value(value)}" for key, value in fields.items())


def configure_logging(level: str = "info", log_format: str = "text") -> None:
    """Send every log record at ``level`` or above to stderr in ``log_format``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def add_log_arguments(parser: argparse.ArgumentParser, *, defaults: bool = True) -> None:
    """``--log-level`` and ``--log-format``. Without ``defaults`` an option left out sets nothing,
    so a subcommand may repeat its parent's options without overriding them."""
    unset = argparse.SUPPRESS
    parser.add_argument("--log-level", choices=LOG_LEVELS, default="info" if defaults else unset)
    parser.add_argument(
        "--log-format", choices=LOG_FORMATS, default="text" if defaults else unset, help="text or json lines"
    )
