"""The router's DEALER socket to an external session service (``docs/session-service.md``).

:class:`SessionServiceLink` sends what the :class:`~router.core.session_gate.SessionGate` asks, feeds it
the replies and the deadlines, and hands whatever the gate decides to the router's ``send``. It
never waits for the service: a request that cannot be sent at once (no connection) is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import zmq

from router.core.control import Outbound
from router.core.session_gate import SessionGate
from router.logs import ThrottledLog
from router.zmqio import NOBLOCK, RECHECK_EVERY, Readable

log = logging.getLogger("switchboard.router")

MAX_REPLY_BYTES = 1 << 20
QUEUED_REQUESTS = 1_000
"""The send high-water mark: requests queued while the service is connected but slow."""


class SessionServiceLink:
    """One DEALER connected to the service; :meth:`run` reads its replies until cancelled."""

    def __init__(
        self,
        context: zmq.Context[zmq.Socket[bytes]],
        endpoint: str,
        gate: SessionGate,
        send: Callable[[list[Outbound]], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.gate = gate
        self._send_out = send
        self._clock = clock
        self._log = ThrottledLog(log)
        self.sock = context.socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.immediate = 1
        self.sock.sndhwm = QUEUED_REQUESTS
        self.sock.maxmsgsize = MAX_REPLY_BYTES
        self.sock.connect(endpoint)
        self._readable: Readable | None = None

    def flush(self) -> None:
        """Send the gate's queued requests; one that cannot be sent is refused at once."""
        out: list[Outbound] = []
        for key, body in self.gate.requests_to_send():
            try:
                self.sock.send_multipart([b"", body], NOBLOCK)
            except zmq.ZMQError as error:
                now = self._clock()
                self._log.warning("session_service_send", "session service: cannot send: %s", error, now=now)
                out += self.gate.unavailable(key, now, time.time())
        if self._readable is not None:
            self._readable.recheck()
        self._send_out(out)

    async def run(self) -> None:
        self._readable = Readable(self.sock)
        try:
            while True:
                await self._wait()
                out = self._receive() + self.gate.expire(self._clock(), time.time())
                self._send_out(out)
                self.flush()
        finally:
            self._readable.close()

    def close(self) -> None:
        """Close the socket (after :meth:`run` ended, or if it never started)."""
        self.sock.close(linger=0)

    async def _wait(self) -> None:
        """Until a reply arrives or the next deadline passes."""
        assert self._readable is not None
        deadline = self.gate.next_deadline()
        delay = RECHECK_EVERY if deadline is None else max(0.0, deadline - self._clock())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._readable.wait()

    def _receive(self) -> list[Outbound]:
        out: list[Outbound] = []
        with contextlib.suppress(zmq.Again):
            while True:
                frames = self.sock.recv_multipart(NOBLOCK)
                out += self.gate.answered(frames[-1], self._clock(), time.time())
        return out
