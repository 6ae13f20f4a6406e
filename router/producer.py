"""A small producer for Python users: ``Producer("tcp://127.0.0.1:7750").publish(topic, payload)``."""

from __future__ import annotations

from types import TracebackType

import msgspec
import zmq

from router.config import DEFAULT_PULL
from router.core.topics import check_topic
from router.curve import CurveClient
from router.wire import ProducerHeader


class Producer:
    """PUSHes ``[topic, payload]`` (or ``[topic, header, payload]``) to the router's PULL socket.

    ``publish`` blocks while the router's queue is full (the PUSH high-water mark), which is how a
    producer feels backpressure; pass ``block=False`` to get ``False`` back instead. With ``curve``,
    the link is a Curve client of a router that has Curve on (``docs/security.md``).
    """

    def __init__(
        self, endpoint: str = DEFAULT_PULL, *, sndhwm: int = 10_000, curve: CurveClient | None = None
    ) -> None:
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.PUSH)
        self._socket.linger = 2_000
        self._socket.sndhwm = sndhwm
        if curve is not None:
            curve.secure(self._socket)
        self._socket.connect(endpoint)
        self._checked: set[str] = set()

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        content_type: str | None = None,
        timestamp: int | None = None,
        block: bool = True,
    ) -> bool:
        """Send one message; ``timestamp`` is nanoseconds since the Unix epoch."""
        check_once(self._checked, topic)
        return send_message(self._socket, topic, payload, content_type, timestamp, block)

    def close(self) -> None:
        self._socket.close()
        self._context.term()

    def __enter__(self) -> Producer:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()


def check_once(checked: set[str], topic: str) -> None:
    """Check a topic's grammar the first time a producer sends it (``checked`` remembers up to
    10,000 topics); raises :class:`RefusedError` (``bad_topic``) before anything is sent."""
    if topic not in checked:
        if len(checked) > 10_000:
            checked.clear()
        checked.add(check_topic(topic))


def send_message(
    sock: zmq.Socket[bytes],
    topic: str,
    payload: bytes,
    content_type: str | None,
    timestamp: int | None,
    block: bool,
) -> bool:
    """Send ``[topic, payload]``, or ``[topic, header, payload]`` with a header; ``False`` when
    ``block`` is off and the socket's queue is full."""
    frames = [topic.encode(), payload]
    if content_type is not None or timestamp is not None:
        header = ProducerHeader(content_type=content_type, timestamp=timestamp)
        frames.insert(1, msgspec.msgpack.encode(header))
    try:
        sock.send_multipart(frames, 0 if block else zmq.NOBLOCK)
    except zmq.Again:
        return False
    return True
