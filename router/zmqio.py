"""Waiting for ZeroMQ sockets from asyncio without pyzmq's per-call poller.

``zmq.asyncio``'s ``await sock.poll()`` builds a poller and futures on every call (tens of
microseconds). :class:`Readable` instead registers one reader on the socket's notification FD for
the socket's whole life and checks ``ZMQ_EVENTS``, so a busy loop pays for a wake-up only when the
socket is really empty.
"""

from __future__ import annotations

import asyncio
import contextlib

import zmq

_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
NOBLOCK = int(zmq.NOBLOCK)
SNDMORE_NOBLOCK = int(zmq.SNDMORE) | int(zmq.NOBLOCK)
RECHECK_EVERY = 0.25


class Readable:
    """Await :meth:`wait` until ``sock`` has a message to receive.

    The notification FD is edge-triggered: it only says "look at ZMQ_EVENTS again", so every wait
    starts by asking ZMQ_EVENTS, and the caller must receive until ``zmq.Again`` before waiting.
    A send on the same socket can swallow that edge, so code that sends on it calls
    :meth:`recheck`; as a safety net, an idle wait also looks again every :data:`RECHECK_EVERY`
    seconds.
    """

    def __init__(self, sock: zmq.Socket[bytes]) -> None:
        self._sock = sock
        self._fd: int = sock.fileno()
        self._signal = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._fd, self._signal.set)

    async def wait(self) -> None:
        while not self._sock.get(_EVENTS) & _POLLIN:  # type: ignore[operator]
            self._signal.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RECHECK_EVERY):
                    await self._signal.wait()

    def recheck(self) -> None:
        """Make a pending :meth:`wait` look at ZMQ_EVENTS again (after a send on the socket)."""
        self._signal.set()

    def close(self) -> None:
        self._loop.remove_reader(self._fd)
