"""A producer for a cluster that sends each message straight to the router serving its topic.

``ClusterProducer("redis://127.0.0.1:6379").publish(topic, payload)`` reads the routers and the
shard leases from the cluster's Redis (``docs/cluster.md``, Keys), at most every ``refresh``
seconds, and keeps one PUSH socket per router. A message of a shard with no owner it knows goes to
any router, which passes it on. Compared with a PUSH socket connected to one router, nothing takes
a second hop; the cost is a Redis read now and then.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from types import TracebackType

import zmq
from redis import Redis
from redis.exceptions import RedisError

from router.core.shards import shard_of
from router.curve import CurveClient
from router.producer import check_once, send_message

DEFAULT_REFRESH = 0.5


class ClusterUnreadableError(RuntimeError):
    """The cluster's Redis could not be read, or names no router."""


class ClusterProducer:
    """PUSHes each message to its shard's owner, or, when the owner is down or its queue full
    (``ZMQ_IMMEDIATE`` on every socket), to another router, which passes it on. ``publish`` blocks
    only while no router can take the message (``block=False``: returns ``False`` instead)."""

    def __init__(
        self,
        redis_url: str,
        *,
        prefix: str = "switchboard",
        refresh: float = DEFAULT_REFRESH,
        sndhwm: int = 10_000,
        curve: CurveClient | None = None,
        timeout: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis: Redis = Redis.from_url(redis_url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self._prefix = prefix
        self._refresh = refresh
        self._timeout = timeout
        self._sndhwm = sndhwm
        self._curve = curve
        self._clock = clock
        self._context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._sockets: dict[str, zmq.Socket[bytes]] = {}
        """PUSH sockets by the router's PULL endpoint."""
        self._owners: list[str | None] = []
        """Each shard's owner's PULL endpoint."""
        self._read_at = -float("inf")
        self._checked: set[str] = set()
        self.shards = 0
        self._read()

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        content_type: str | None = None,
        timestamp: int | None = None,
        block: bool = True,
    ) -> bool:
        check_once(self._checked, topic)
        if self._clock() - self._read_at >= self._refresh:
            self._read_quietly()
        while True:
            for endpoint in self._candidates(topic):
                sock = self._sockets[endpoint]
                if send_message(sock, topic, payload, content_type, timestamp, block=False):
                    return True
            if not block:
                return False
            self._wait_for_room()

    def _wait_for_room(self) -> None:
        """Wait until some router's socket can take a message, reading the cluster again now and
        then (a router may have come back under another endpoint)."""
        poller = zmq.Poller()
        for sock in self._sockets.values():
            poller.register(sock, zmq.POLLOUT)
        if not poller.poll(timeout=round(self._refresh * 1000)):
            self._read_quietly()

    def _candidates(self, topic: str) -> list[str]:
        """The owner's PULL first, then every other router's (which passes the message on): a
        router that is down or full is passed over rather than waited for."""
        owner = self.owner_endpoint(topic)
        others = [endpoint for endpoint in self._sockets if endpoint != owner]
        return [owner, *others] if owner is not None else others

    def owner_endpoint(self, topic: str) -> str | None:
        """The PULL endpoint a message of ``topic`` goes to straight, if its owner is known."""
        return self._owners[shard_of(topic.encode(), self.shards)]

    def _read_quietly(self) -> None:
        """Read again; on failure keep what was read before (the routers pass messages on)."""
        try:
            self._read()
        except ClusterUnreadableError:
            self._read_at = self._clock()

    def _read(self) -> None:
        key = self._prefix.__add__
        leases: list[bytes | None]
        try:
            shards = int(self._redis.get(key(":shards")) or 0)
            ids = sorted(member.decode() for member in self._redis.smembers(key(":routers")))  # type: ignore[union-attr]
            announced = self._redis.mget([key(f":router:{router_id}") for router_id in ids]) if ids else []
            keys = [key(f":lease:{shard}") for shard in range(shards)]
            leases = self._redis.mget(keys) if shards else []  # type: ignore[assignment]
        except (RedisError, OSError) as error:
            raise ClusterUnreadableError(f"cannot read the cluster from Redis: {error}") from None
        pulls = {
            router_id: json.loads(info)["pull"]
            for router_id, info in zip(ids, announced, strict=True)
            if info is not None and "pull" in json.loads(info)
        }
        if not shards or not pulls:
            raise ClusterUnreadableError("no router of this cluster has announced itself in Redis")
        self.shards = shards
        self._owners = [pulls.get(lease.decode().split(" ")[0]) if lease else None for lease in leases]
        new = [endpoint for endpoint in pulls.values() if endpoint not in self._sockets]
        for endpoint in new:
            self._sockets[endpoint] = self._connect(endpoint)
        self._wait_connected([self._sockets[endpoint] for endpoint in new])
        self._read_at = self._clock()

    def _wait_connected(self, sockets: list[zmq.Socket[bytes]]) -> None:
        """Give new sockets up to ``timeout`` to connect, so that the first messages go straight
        to their owner rather than to whichever router was connected first."""
        deadline = self._clock() + self._timeout
        for sock in sockets:
            left = deadline - self._clock()
            if left <= 0 or not sock.poll(round(left * 1000), zmq.POLLOUT):
                return

    def _connect(self, endpoint: str) -> zmq.Socket[bytes]:
        sock = self._context.socket(zmq.PUSH)
        sock.linger = 2_000
        sock.sndhwm = self._sndhwm
        sock.immediate = True
        if self._curve is not None:
            self._curve.secure(sock)
        sock.connect(endpoint)
        return sock

    def close(self) -> None:
        for sock in self._sockets.values():
            sock.close()
        self._context.term()
        self._redis.close()

    def __enter__(self) -> ClusterProducer:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()
