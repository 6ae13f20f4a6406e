"""An edge's link to the router: a DEALER for control and a SUB for data.

The protocol (hello, heartbeats both ways, noticing that the router is gone or has restarted, and
sending what :attr:`RouterLink.resync` returns after each welcome, so delivery resumes without
anyone's help) is :class:`~edges.core.link_state.LinkProtocol`'s. :class:`RouterLink` only moves
bytes: it feeds that object what the DEALER receives and the time, sends what it returns, and
drains the SUB socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Final

import zmq

from edges.core.link_state import LinkProtocol
from edges.core.output import Payload
from router.config import DEFAULT_CONTROL, DEFAULT_XPUB
from router.curve import CLIENT_HINTS, HANDSHAKE_FAILURES, CurveClient, handshake_failure
from router.logs import ThrottledLog
from router.wire import EdgeMessage, Hello, RouterMessage, encode_control
from router.zmqio import NOBLOCK, Readable

log = logging.getLogger("switchboard.edge")

DataBatch = list[tuple[bytes, Payload]]
"""Data messages as ``(head, payload)`` pairs, in the order the SUB socket received them."""
VIEW_FROM: Final = 16 * 1024
"""While payloads are this large on average, those of at least this many bytes are handed on as a
view of the ZeroMQ frame they arrived in, so the edge writes them to its clients without copying
them; smaller ones cost less as bytes.
It is above libzmq's 8 KiB receive batch: such a frame has a buffer of its own, so a view held in
a client's queue never keeps other messages' memory alive."""


MAX_QUEUED_CONTROL: Final = 200_000
"""Control messages an edge holds while the router reads slower than the edge sends (such as the
registers and subscribes of every client after a welcome), by default."""
TURN_BUDGET: Final = 0.02
"""Seconds of fan-out the data loop aims at between two yields to the event loop."""
FLUSH_RETRY: Final = 0.005
"""Seconds between tries to hand held control messages to the socket while it is full."""


def new_edge_id(protocol: str) -> str:
    return f"{protocol}-{secrets.token_hex(6)}"


class RouterLink:
    """Control and data to and from the router, for one edge process.

    Hook the callbacks before :meth:`run`: ``on_message`` gets every router message that is not a
    reply awaited through :meth:`request`, ``on_data`` gets each drained batch of data messages
    (:data:`DataBatch`), ``resync`` returns the messages to send after each welcome,
    and ``report`` the edge's figures (``edge_stats``), sent after each heartbeat.
    With ``curve``, both sockets are Curve clients of a router that has Curve on.
    """

    def __init__(
        self,
        *,
        protocol: str,
        control: str = DEFAULT_CONTROL,
        xpub: str = DEFAULT_XPUB,
        edge_id: str | None = None,
        heartbeat_interval: float = 1.0,
        max_batch: int = 1_000,
        max_batch_bytes: int = 1 << 20,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
        curve: CurveClient | None = None,
        max_queued_control: int = MAX_QUEUED_CONTROL,
    ) -> None:
        self._link = LinkProtocol(edge_id or new_edge_id(protocol), protocol, heartbeat_interval)
        self.protocol = protocol
        self.edge_id = self._link.edge_id
        self.max_batch = max_batch
        self.max_batch_bytes = max_batch_bytes
        self.on_message: Callable[[RouterMessage], None] = lambda message: None
        self.on_data: Callable[[DataBatch], None] = lambda batch: None
        self.on_lost: Callable[[], None] = lambda: None
        """Called when the router that welcomed this edge is known to be lost (the link says hello
        again)."""
        self.welcomed = asyncio.Event()
        """Set while the router has welcomed this edge and is not known to be lost."""
        self.data_messages = 0
        """Data messages received on the SUB socket, and their payload bytes."""
        self.data_bytes = 0
        self.malformed_data = 0
        """Data messages dropped as malformed: not two frames (head, payload), or a head that does
        not parse (the shell counts those)."""
        self._malformed = ThrottledLog(log)
        self._views = False
        """Whether payloads are received as frames (see :meth:`_drain`)."""
        self._batch_limit = max_batch
        """Messages drained at most before yielding: :attr:`max_batch`, or fewer while fanning
        one message out costs much (see :meth:`_data_loop`)."""
        self._context = context or zmq.Context.instance()
        self._waiters: dict[int, asyncio.Future[RouterMessage]] = {}
        self.max_queued_control = max_queued_control
        self._held: deque[bytes] = deque()
        """Control messages the socket had no room for yet, oldest first: sent before any newer."""
        self._holding = asyncio.Event()
        self.control_held_peak = 0
        self.control_refused = 0
        """Control messages refused because :attr:`max_queued_control` were held already."""
        self._held_log = ThrottledLog(log, interval=60.0)
        self._control_endpoint = control
        self._curve = curve
        self._refusals = ThrottledLog(log, interval=60.0)
        self._new_connection_log = ThrottledLog(log, interval=60.0)
        self._dealer, self._handshakes = self._open_dealer()
        self.new_connections = 0
        """Control sockets replaced because the router was silent past the heartbeat timeout."""
        self._sub = self._context.socket(zmq.SUB)
        self._sub.linger = 0
        if curve is not None:
            curve.secure(self._sub)
        self._sub.connect(xpub)
        self._readable: dict[zmq.Socket[bytes], Readable] = {}
        self._tasks: asyncio.TaskGroup | None = None
        self._control_task: asyncio.Task[None] | None = None

    def _open_dealer(self) -> tuple[zmq.Socket[bytes], zmq.Socket[bytes] | None]:
        """A new control socket, connected, and with Curve its handshake monitor.

        It sets no routing id: the router names each connection itself, and the ``hello`` says
        which edge speaks (``router/core/edge_claims.py``)."""
        dealer = self._context.socket(zmq.DEALER)
        dealer.linger = 0
        dealer.setsockopt(zmq.IMMEDIATE, 1)
        handshakes = None
        if self._curve is not None:
            self._curve.secure(dealer)
            handshakes = dealer.get_monitor_socket(HANDSHAKE_FAILURES)
        dealer.connect(self._control_endpoint)
        return dealer, handshakes

    # ------------------------------------------------------------ the protocol's state

    @property
    def resync(self) -> Callable[[], Sequence[EdgeMessage]]:
        """What to send after each welcome (see :attr:`LinkProtocol.resync`)."""
        return self._link.resync

    @resync.setter
    def resync(self, resync: Callable[[], Sequence[EdgeMessage]]) -> None:
        self._link.resync = resync

    @property
    def report(self) -> Callable[[], Sequence[EdgeMessage]]:
        """What to send after each heartbeat (see :attr:`LinkProtocol.report`)."""
        return self._link.report

    @report.setter
    def report(self, report: Callable[[], Sequence[EdgeMessage]]) -> None:
        self._link.report = report

    @property
    def router_id(self) -> str:
        return self._link.router_id

    @property
    def welcomes(self) -> int:
        return self._link.welcomes

    @property
    def heartbeat_interval(self) -> float:
        return self._link.heartbeat_interval

    @property
    def heartbeat_timeout(self) -> float:
        return self._link.heartbeat_timeout

    @property
    def silent_for(self) -> float:
        """Seconds since the router was last heard (any control message counts)."""
        return self._link.silent_for(time.monotonic())

    def next_request_id(self) -> int:
        return self._link.next_request_id()

    # ------------------------------------------------------------ outgoing

    @property
    def control_held(self) -> int:
        """Control messages waiting for room in the socket now."""
        return len(self._held)

    def send(self, message: EdgeMessage) -> bool:
        """Send now, or hold the message until the socket has room; ``False`` only when
        :attr:`max_queued_control` messages are held already (counted and logged, and the link
        starts over once the router has caught up, so nothing stays lost).

        Only a welcomed link holds messages. Before the ``welcome`` (the router away, or not
        answering yet) a message the socket cannot take is dropped, as ``False`` says: the
        ``welcome`` brings every client and subscription again (``docs/protocol.md`` 3.3 rule 2),
        and a ``hello`` drops what was held before it for the same reason.
        """
        if isinstance(message, Hello):
            self._held.clear()
        body = encode_control(message)
        if not self._link.connected:
            return self._try_send(body)
        if not self._held and self._try_send(body):
            return True
        if len(self._held) >= self.max_queued_control:
            self.control_refused += 1
            self._link.start_over_when_caught_up()
            self._held_log.warning(
                "control_full",
                "%d control messages wait for the router; refused one (%d so far): the edge will"
                " register its clients again once the router catches up",
                len(self._held),
                self.control_refused,
                now=time.monotonic(),
            )
            return False
        self._held.append(body)
        self.control_held_peak = max(self.control_held_peak, len(self._held))
        self._holding.set()
        return True

    def _try_send(self, body: bytes) -> bool:
        try:
            self._dealer.send(body, NOBLOCK)
        except zmq.Again:
            return False
        finally:
            self._recheck(self._dealer)
        return True

    async def _flush_held(self) -> None:
        """Hand held control messages to the socket, oldest first, as it makes room."""
        while True:
            await self._holding.wait()
            while self._held:
                if self._try_send(self._held[0]):
                    self._held.popleft()
                else:
                    await asyncio.sleep(FLUSH_RETRY)
            self._holding.clear()
            if self._link.caught_up():
                self._flush()

    async def request(self, message: EdgeMessage) -> RouterMessage:
        """Send a message that has a ``request_id`` and wait for the reply that echoes it.

        Wrap the call in ``asyncio.timeout`` to bound the wait.
        """
        request_id: int = getattr(message, "request_id")  # noqa: B009 - every request has one
        future: asyncio.Future[RouterMessage] = asyncio.get_running_loop().create_future()
        self._waiters[request_id] = future
        try:
            if not self.send(message):
                why = "too many control messages wait" if self._link.connected else "no router welcomed it"
                raise ConnectionError(f"the router link cannot take it now: {why}")
            return await future
        finally:
            self._waiters.pop(request_id, None)

    def watch(self, topic: str) -> None:
        """Receive data for exactly ``topic`` (the NUL makes the prefix match exact)."""
        self._sub.setsockopt(zmq.SUBSCRIBE, topic.encode() + b"\0")
        self._recheck(self._sub)

    def unwatch(self, topic: str) -> None:
        self._sub.setsockopt(zmq.UNSUBSCRIBE, topic.encode() + b"\0")
        self._recheck(self._sub)

    def _recheck(self, sock: zmq.Socket[bytes]) -> None:
        readable = self._readable.get(sock)
        if readable is not None:
            readable.recheck()

    # ------------------------------------------------------------ running

    async def run(self) -> None:
        """Run control, heartbeats and data until cancelled."""
        try:
            async with asyncio.TaskGroup() as group:
                self._tasks = group
                self._control_task = group.create_task(self._control())
                group.create_task(self._heartbeat_loop())
                group.create_task(self._data_loop())
                group.create_task(self._flush_held())
        finally:
            self.close()

    def close(self) -> None:
        self._link.close()
        for waiter in self._waiters.values():
            waiter.cancel()
        self._close_dealer()
        self._sub.close(linger=0)

    def _close_dealer(self) -> None:
        if self._handshakes is not None:
            self._handshakes.close(linger=0)
        self._dealer.close(linger=0)

    async def _control(self) -> None:
        """Read the control socket, and with Curve its handshake failures, until cancelled."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._control_loop(self._dealer))
            if self._handshakes is not None:
                group.create_task(self._watch_handshakes(self._handshakes))

    async def _new_connection(self) -> None:
        """Replace the control socket: stop reading the old one, close it, open and read a new one.
        Requests awaiting a reply on the old one get none (their callers' timeouts end them); the
        ``hello`` that follows rebuilds the edge's state at the router."""
        task, group = self._control_task, self._tasks
        if task is None or group is None:
            return
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        self._close_dealer()
        self._held.clear()
        self._dealer, self._handshakes = self._open_dealer()
        self.new_connections += 1
        self._new_connection_log.warning(
            "new_connection",
            "router silent for %.1f s: opened a new control connection (%d so far)",
            self.silent_for,
            self.new_connections,
            now=time.monotonic(),
        )
        self._control_task = group.create_task(self._control())

    async def _watch_handshakes(self, monitor: zmq.Socket[bytes]) -> None:
        """Log why the router turned this edge away: with Curve, nothing else would say."""
        readable = Readable(monitor)
        try:
            while True:
                await readable.wait()
                with contextlib.suppress(zmq.Again):
                    while True:
                        reason, _ = handshake_failure(monitor.recv_multipart(NOBLOCK))
                        self._refusals.warning(reason, CLIENT_HINTS[reason], now=time.monotonic())
        finally:
            readable.close()

    async def _heartbeat_loop(self) -> None:
        while (due := self._link.tick(time.monotonic())) is not None:
            if self._link.take_new_connection():
                await self._new_connection()
            self._flush()
            await asyncio.sleep(max(0.0, due - time.monotonic()))

    def _flush(self) -> None:
        """Send what the protocol has for the router, then show its state in :attr:`welcomed`."""
        for message in self._link.data_to_send():
            self.send(message)
        if self._link.connected:
            self.welcomed.set()
        elif self.welcomed.is_set():
            self.welcomed.clear()
            self.on_lost()

    async def _control_loop(self, dealer: zmq.Socket[bytes]) -> None:
        readable = self._readable[dealer] = Readable(dealer)
        try:
            while True:
                await readable.wait()
                with contextlib.suppress(zmq.Again):
                    while True:
                        self._on_control(dealer.recv(NOBLOCK))
        finally:
            readable.close()
            del self._readable[dealer]

    def _on_control(self, body: bytes) -> None:
        message = self._link.receive(body, time.monotonic())
        self._flush()
        if message is not None:
            self._dispatch(message)

    def _dispatch(self, message: RouterMessage) -> None:
        waiter = self._waiters.get(getattr(message, "request_id", 0))
        if waiter is not None and not waiter.done():
            waiter.set_result(message)
        else:
            self.on_message(message)

    async def _data_loop(self) -> None:
        """Drain the SUB socket in batches that each cost about :data:`TURN_BUDGET` seconds of
        fan-out at most, yielding between them: however many clients a message goes to, and
        however far the edge is behind, heartbeats and control replies wait one batch at most."""
        readable = self._readable[self._sub] = Readable(self._sub)
        try:
            while True:
                await readable.wait()
                batch, size, full = self._drain()
                if batch:
                    self.data_messages += len(batch)
                    self.data_bytes += size
                    started = time.monotonic()
                    self.on_data(batch)
                    self._fit_batch(len(batch), time.monotonic() - started)
                if full:
                    await asyncio.sleep(0)
        finally:
            readable.close()

    def _fit_batch(self, messages: int, seconds: float) -> None:
        """Size the next batch so that handing it on takes about :data:`TURN_BUDGET`."""
        if seconds > TURN_BUDGET:
            self._batch_limit = max(1, int(messages * TURN_BUDGET / seconds))
        elif messages >= self._batch_limit:
            self._batch_limit = min(self.max_batch, 2 * self._batch_limit)

    def _drain(self) -> tuple[DataBatch, int, bool]:
        """Receive until the SUB socket is empty or a batch is full (malformed messages count
        towards its bound): the batch, its payload bytes, and whether it stopped full. Payloads
        are received as views while the last batch's payloads averaged :data:`VIEW_FROM` or more,
        and copied otherwise: a frame object costs a small message more than its copy."""
        batch: DataBatch = []
        size = 0
        receive = self._receive_views if self._views else self._receive_copies
        try:
            for _ in range(self._batch_limit):
                message = receive()
                if message is not None:
                    batch.append(message)
                    size += len(message[1])
                    if size >= self.max_batch_bytes:
                        break
        except zmq.Again:
            return batch, size, False
        finally:
            if batch:
                self._views = size >= VIEW_FROM * len(batch)
        return batch, size, True

    def _receive_copies(self) -> tuple[bytes, Payload] | None:
        """One data message as bytes, or ``None`` if it was not head + payload (counted and
        dropped). Raises :class:`zmq.Again` when there is none."""
        frames = self._sub.recv_multipart(NOBLOCK)
        if len(frames) != 2:
            self._drop_malformed(len(frames))
            return None
        return frames[0], frames[1]

    def _receive_views(self) -> tuple[bytes, Payload] | None:
        """As :meth:`_receive_copies`, but a payload of :data:`VIEW_FROM` bytes or more stays in
        the frame it arrived in, handed on as a view."""
        frames = self._sub.recv_multipart(NOBLOCK, copy=False)
        if len(frames) != 2:
            self._drop_malformed(len(frames))
            return None
        head, payload = frames
        return head.bytes, payload.buffer if len(payload) >= VIEW_FROM else payload.bytes

    def _drop_malformed(self, frames: int) -> None:
        """Count and log a data message of ``frames`` frames; it is dropped."""
        self.malformed_data += 1
        self._malformed.warning(
            "malformed_data",
            "dropped a data message of %d frames from the router (expected 2)",
            frames,
            now=time.monotonic(),
        )
