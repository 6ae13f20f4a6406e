"""Logging that a flood of bad input cannot turn into a flood of log lines."""

from __future__ import annotations

import logging
from collections.abc import Mapping

Extra = Mapping[str, object] | None


class ThrottledLog:
    """Logs up to ``burst`` events of each kind per ``interval`` seconds; later ones only add to a
    count, which the next line that goes out reports.

    The caller gives the time of each event as ``now``, in seconds of any clock: this object reads
    none. A clock that goes back starts a new window.

    ``extra`` goes to the log record as with :meth:`logging.Logger.log` (``docs/operations.md``,
    "Logs": the structured ids); a line that reports suppressed events also carries
    ``suppressed`` there.
    """

    def __init__(self, logger: logging.Logger, interval: float = 5.0, burst: int = 1) -> None:
        self.logger = logger
        self.interval = interval
        self.burst = burst
        self._window: dict[str, tuple[float, int]] = {}
        """kind -> when its current window started, and the lines logged in it."""
        self._suppressed: dict[str, int] = {}

    def warning(self, kind: str, message: str, *args: object, now: float, extra: Extra = None) -> None:
        self.log(logging.WARNING, kind, message, *args, now=now, extra=extra)

    def info(self, kind: str, message: str, *args: object, now: float, extra: Extra = None) -> None:
        self.log(logging.INFO, kind, message, *args, now=now, extra=extra)

    def log(
        self, level: int, kind: str, message: str, *args: object, now: float, extra: Extra = None
    ) -> None:
        if not self._admit(kind, now):
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return
        suppressed = self._suppressed.pop(kind, 0)
        if suppressed:
            message += f" (and {suppressed} more like it since the last report)"
            extra = {**(extra or {}), "suppressed": suppressed}
        self.logger.log(level, message, *args, extra=extra)

    def _admit(self, kind: str, now: float) -> bool:
        """Whether one more line of ``kind`` may go out at ``now``, counting it if so."""
        started, lines = self._window.get(kind, (now, 0))
        if not 0 <= now - started < self.interval:
            started, lines = now, 0
        if lines >= self.burst:
            return False
        self._window[kind] = (started, lines + 1)
        return True
