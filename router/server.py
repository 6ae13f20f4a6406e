"""The router process: ZeroMQ sockets around the sans-I/O core.

One coroutine per socket role. Ingest sockets (PULL, XSUB) use the drain pattern: wait for
readiness once, then receive without blocking until the socket is empty or a batch is full, so the
event loop costs nothing per message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import zmq
import zmq.asyncio

from router.config import RouterConfig
from router.control import ControlPlane, Outbound, ToEdge, Upstream
from router.core import ConnectionManager, RefusedError
from router.logs import ThrottledLog
from router.wire import (
    MAX_CONTROL_BYTES,
    WireError,
    data_frame_head,
    encode_control,
    parse_producer_frames,
)

log = logging.getLogger("switchboard.router")


class RouterServer:
    """Binds the router's four sockets and runs until :meth:`stop`."""

    def __init__(
        self,
        config: RouterConfig,
        manager: ConnectionManager | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.manager = manager or ConnectionManager(config.registry(), limits=config.limits)
        self.control = ControlPlane(
            self.manager, config.router.heartbeat_interval, config.router.edge_timeout
        )
        self.endpoints: dict[str, str] = {}
        self._clock = clock
        self._context = zmq.asyncio.Context()
        self._sockets: list[zmq.asyncio.Socket] = []
        self._stopped = asyncio.Event()
        self._drop_log = ThrottledLog(log)

    # ------------------------------------------------------------ lifecycle

    def bind(self) -> dict[str, str]:
        """Bind every socket; returns the endpoints actually bound (``:0`` or ``*`` ports resolved)."""
        section = self.config.router
        frame_cap = 2 * self.config.limits.max_payload_bytes
        self.pull = self._socket(
            zmq.PULL, "pull", section.pull, rcvhwm=section.ingest_hwm, maxmsgsize=frame_cap
        )
        self.xsub = self._socket(
            zmq.XSUB, "xsub", section.xsub, rcvhwm=section.ingest_hwm, maxmsgsize=frame_cap
        )
        self.xpub = self._socket(zmq.XPUB, "xpub", section.xpub, sndhwm=section.fanout_hwm)
        self.router = self._socket(
            zmq.ROUTER, "control", section.control, router_handover=1, maxmsgsize=2 * MAX_CONTROL_BYTES
        )
        self._router_sync: zmq.Socket[bytes] = zmq.Socket.shadow(self.router.underlying)
        self._xsub_sync: zmq.Socket[bytes] = zmq.Socket.shadow(self.xsub.underlying)
        return dict(self.endpoints)

    def _socket(self, kind: int, name: str, endpoint: str, **options: int) -> zmq.asyncio.Socket:
        sock = self._context.socket(kind)
        sock.linger = 0
        for option, value in options.items():
            sock.setsockopt(getattr(zmq, option.upper()), value)
        sock.bind(endpoint[:-2] + ":*" if endpoint.endswith(":0") else endpoint)
        self.endpoints[name] = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._sockets.append(sock)
        return sock

    async def serve(self) -> None:
        """Run every role until :meth:`stop` is called; binds first if :meth:`bind` was not."""
        if not self._sockets:
            self.bind()
        tasks = [
            asyncio.create_task(self._ingest(self.pull), name="ingest-pull"),
            asyncio.create_task(self._ingest(self.xsub), name="ingest-xsub"),
            asyncio.create_task(self._drain_fanout_subscriptions(), name="xpub"),
            asyncio.create_task(self._control_loop(), name="control"),
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
        ]
        log.info("router listening: %s", self.endpoints)
        try:
            await self._stopped.wait()
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            for sock in self._sockets:
                sock.close(linger=0)
            self._context.term()

    def stop(self) -> None:
        self._stopped.set()

    # ------------------------------------------------------------ data

    async def _ingest(self, sock: zmq.asyncio.Socket) -> None:
        """Producer messages in, data frames out on XPUB (only for watched topics)."""
        receive = zmq.Socket.shadow(sock.underlying).recv_multipart
        send = zmq.Socket.shadow(self.xpub.underlying).send_multipart
        route = self.manager.route_wire
        batch = self.config.router.max_batch
        while True:
            await sock.poll(zmq.POLLIN)
            for _ in range(batch):
                try:
                    frames = receive(zmq.NOBLOCK)
                except zmq.Again:
                    break
                try:
                    topic, header, payload = parse_producer_frames(frames)
                    epoch_offset = route(topic, payload)
                except (WireError, RefusedError) as error:
                    self._count_bad_input(error)
                    continue
                if epoch_offset.clients:
                    head = data_frame_head(topic, epoch_offset.epoch, epoch_offset.offset, header)
                    send((head, payload), zmq.NOBLOCK)
            else:
                await asyncio.sleep(0)

    def _count_bad_input(self, error: WireError | RefusedError) -> None:
        if isinstance(error, WireError):
            self.manager.count_drop(error.reason)
            reason = error.reason
        else:
            reason = error.code.value
        self._drop_log.warning(reason, "dropped a producer message: %s", error)

    async def _drain_fanout_subscriptions(self) -> None:
        """Edges' SUB subscriptions reach XPUB as messages; read them so they never pile up."""
        receive = zmq.Socket.shadow(self.xpub.underlying).recv
        while True:
            await self.xpub.poll(zmq.POLLIN)
            with contextlib.suppress(zmq.Again):
                while True:
                    receive(zmq.NOBLOCK)

    # ------------------------------------------------------------ control

    async def _control_loop(self) -> None:
        receive = zmq.Socket.shadow(self.router.underlying).recv_multipart
        while True:
            await self.router.poll(zmq.POLLIN)
            for _ in range(self.config.router.max_batch):
                try:
                    frames = receive(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if len(frames) != 2:
                    self.manager.count_drop("bad_control")
                    self._drop_log.warning("bad_control", "control message of %d frames", len(frames))
                    continue
                self._send(self.control.handle(frames[0], frames[1], self._clock()))
            else:
                await asyncio.sleep(0)

    async def _heartbeat_loop(self) -> None:
        interval = self.config.router.heartbeat_interval
        while True:
            await asyncio.sleep(interval)
            self._send(self.control.tick(self._clock()))

    def _send(self, outbound: list[Outbound]) -> None:
        for item in outbound:
            try:
                match item:
                    case ToEdge(edge_id, message):
                        frames = [edge_id.encode(), encode_control(message)]
                        self._router_sync.send_multipart(frames, zmq.NOBLOCK)
                    case Upstream(topic, watched):
                        self._xsub_sync.send((b"\x01" if watched else b"\x00") + topic.encode(), zmq.NOBLOCK)
            except zmq.ZMQError as error:
                self.manager.count_drop("control_send_failed")
                self._drop_log.warning("control_send", "could not send %s: %s", type(item).__name__, error)
