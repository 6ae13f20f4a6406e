"""The router's DEALER socket to an external session service (``docs/session-service.md``).

:class:`SessionServiceLink` sends what the :class:`~router.core.session_gate.SessionGate` asks, feeds it
the replies and the deadlines, and hands whatever the gate decides to the router's ``send``. It
never waits for the service: a request that cannot be sent at once (no connection) is refused.
With Curve on, the DEALER is a Curve client of the service, and a failed handshake is logged: a
service that turns the router away is otherwise only seen as ``session service unavailable``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import zmq

from router.core.control import Outbound
from router.core.external_sessions import ExternalSessions
from router.core.session_gate import SessionGate
from router.curve import HANDSHAKE_FAILURES, SERVICE_HINTS, CurveClient, handshake_failure
from router.logs import ThrottledLog
from router.zmqio import NOBLOCK, RECHECK_EVERY, Readable

log = logging.getLogger("switchboard.router")

MAX_REPLY_BYTES = 1 << 20
QUEUED_REQUESTS = 1_000
"""The send high-water mark: requests queued while the service is connected but slow."""
HANDSHAKE_LOG_INTERVAL = 60.0
"""Seconds between two log lines about failed handshakes of one kind (the DEALER retries about
ten times a second)."""


class SessionServiceLink:
    """One DEALER connected to the service; :meth:`run` reads its replies until cancelled."""

    def __init__(
        self,
        context: zmq.Context[zmq.Socket[bytes]],
        endpoint: str,
        gate: SessionGate,
        sessions: ExternalSessions,
        send: Callable[[list[Outbound]], None],
        clock: Callable[[], float] = time.monotonic,
        curve: CurveClient | None = None,
    ) -> None:
        """``curve``: the router's key pair and the service's public key, with Curve on."""
        self.gate = gate
        self.sessions = sessions
        self._send_out = send
        self._clock = clock
        self._log = ThrottledLog(log)
        self.sock = context.socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.immediate = 1
        self.sock.sndhwm = QUEUED_REQUESTS
        self.sock.maxmsgsize = MAX_REPLY_BYTES
        self.handshakes: zmq.Socket[bytes] | None = None
        """With Curve on: a monitor of the DEALER's failed handshakes."""
        if curve is not None:
            curve.secure(self.sock)
            self.handshakes = self.sock.get_monitor_socket(HANDSHAKE_FAILURES)
        self.sock.connect(endpoint)
        self._readable: Readable | None = None

    def flush(self) -> None:
        """Send the gate's queued requests; one that cannot be sent is refused at once."""
        out: list[Outbound] = []
        for key, body in self.sessions.requests_to_send():
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

    async def watch_handshakes(self) -> None:
        """Log why the service turned the router away, until cancelled (with Curve on only)."""
        assert self.handshakes is not None
        readable = Readable(self.handshakes)
        refusals = ThrottledLog(log, interval=HANDSHAKE_LOG_INTERVAL)
        try:
            while True:
                await readable.wait()
                with contextlib.suppress(zmq.Again):
                    while True:
                        reason, _ = handshake_failure(self.handshakes.recv_multipart(NOBLOCK))
                        refusals.warning(reason, SERVICE_HINTS[reason], now=self._clock())
        finally:
            readable.close()

    def close(self) -> None:
        """Close the sockets (after :meth:`run` ended, or if it never started)."""
        if self.handshakes is not None:
            self.handshakes.close(linger=0)
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
                unix_time = time.time()
                key = self.sessions.answer(frames[-1], unix_time)
                out += self.gate.decided(key, self._clock(), unix_time)
        return out
