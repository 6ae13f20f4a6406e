"""Logging that a flood of bad input cannot turn into a flood of log lines."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

Extra = Mapping[str, object] | None


class ThrottledLog:
    """Logs up to ``burst`` events of each kind per ``interval`` seconds; later ones only add to a
    count, which the next line that goes out reports.

    ``extra`` goes to the log record as with :meth:`logging.Logger.log` (``docs/operations.md``,
    "Logs": the structured ids); a line that reports suppressed events also carries
    ``suppressed`` there.
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 5.0,
        burst: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.burst = burst
        self._clock = clock
        self._window: dict[str, tuple[float, int]] = {}
        """kind -> when its current window started, and the lines logged in it."""
        self._suppressed: dict[str, int] = {}

    def warning(self, kind: str, message: str, *args: object, extra: Extra = None) -> None:
        self.log(logging.WARNING, kind, message, *args, extra=extra)

    def info(self, kind: str, message: str, *args: object, extra: Extra = None) -> None:
        self.log(logging.INFO, kind, message, *args, extra=extra)

    def log(self, level: int, kind: str, message: str, *args: object, extra: Extra = None) -> None:
        if not self._admit(kind):
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return
        suppressed = self._suppressed.pop(kind, 0)
        if suppressed:
            message += f" (and {suppressed} more like it since the last report)"
            extra = {**(extra or {}), "suppressed": suppressed}
        self.logger.log(level, message, *args, extra=extra)

    def _admit(self, kind: str) -> bool:
        """Whether one more line of ``kind`` may go out now, counting it if so."""
        now = self._clock()
        started, lines = self._window.get(kind, (-self.interval, 0))
        if now - started >= self.interval:
            started, lines = now, 0
        if lines >= self.burst:
            return False
        self._window[kind] = (started, lines + 1)
        return True
