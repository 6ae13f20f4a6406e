"""What every ``scripts/bench cluster`` part shares: a redis-server of the bench's own, router
configurations and commands, and what Redis says about the cluster (each router's id and endpoints,
each shard's owner), read as ``docs/cluster.md`` "Keys" describes it."""

from __future__ import annotations

import json
import shutil
import socket
import time
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import redis

from benchlib.procs import Child, ChildError, Children, python_module
from router.admin.client import AdminClient, AdminError
from router.core.shards import DEFAULT_SHARDS, preferred_owner, shard_of

PREFIX = "switchboard"
SHARDS = DEFAULT_SHARDS
RELIABLE_PATTERN = "/bench/**"
"""Every topic under it is declared ``reliable`` in a configuration made with ``reliable=True``."""
SOCKETS = ("pull", "xsub", "xpub", "control")
LOOPBACK_ANY_PORT = "tcp://127.0.0.1:0"
START_TIMEOUT = 20.0
PLACEMENT_TIMEOUT = 20.0
POLL = 0.02
FAST_POLL = 0.002


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listened on a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass(frozen=True)
class RedisChild:
    """A redis-server on 127.0.0.1 with nothing saved, and a client of the bench's own to it."""

    child: Child
    port: int
    client: redis.Redis

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        return self.child.pid


def start_redis(children: Children, directory: Path) -> RedisChild:
    """A fresh redis-server on a port picked now; returns once it answers PING."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise ChildError("redis-server is not installed: run SWITCHBOARD_CLUSTER_DEPS=1 scripts/setup")
    port = free_port()
    args = [
        binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
        "--dir", str(directory), "--logfile", str(directory / f"redis-{port}.log"), "--loglevel", "warning",
    ]  # fmt: skip
    child = children.start("redis-server", args)
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1.0)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        try:
            client.ping()
            return RedisChild(child, port, client)
        except redis.ConnectionError:
            if child.process.poll() is not None:
                raise ChildError(f"redis-server exited with {child.process.returncode}") from None
            time.sleep(POLL)
    raise ChildError(f"redis-server did not answer PING within {START_TIMEOUT:.0f} s")


def write_config(
    path: Path,
    redis_url: str | None,
    *,
    reliable: bool = False,
    lease_time: float | None = None,
    tick: float | None = None,
    max_pending_messages: int | None = None,
) -> Path:
    """A router TOML: cluster mode on ``redis_url`` (in memory with ``None``), with
    :data:`RELIABLE_PATTERN` declared reliable if asked."""
    lines: list[str] = []
    if redis_url is not None:
        lines += ["[cluster]", f'url = "{redis_url}"']
        settings = {"lease_time": lease_time, "tick": tick, "max_pending_messages": max_pending_messages}
        lines += [f"{key} = {value}" for key, value in settings.items() if value is not None]
    if reliable:
        lines += ["[[topics.declare]]", f'pattern = "{RELIABLE_PATTERN}"', "[topics.declare.policy]"]
        lines.append('kind = "reliable"')
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def router_command(config: Path, endpoints: dict[str, str] | None = None) -> list[str]:
    """``python -m router`` with ``config``, on ``endpoints`` (a restart on the same ports) or on
    ports picked at bind time."""
    wanted = endpoints or dict.fromkeys(SOCKETS, LOOPBACK_ANY_PORT)
    options = [word for name in SOCKETS for word in (f"--{name}", wanted[name])]
    admin = endpoints["admin"].removeprefix("http://") if endpoints else "127.0.0.1:0"
    return python_module("router", "--announce", "--config", str(config), "--admin", admin, *options)


def router_drops(endpoints: dict[str, str]) -> dict[str, int]:
    """The router's drop counters, by reason, from its admin API."""
    try:
        drops: dict[str, int] = AdminClient(endpoints["admin"], None).get("/api/stats")["drops"]
    except AdminError as error:
        raise ChildError(
            f"the router at {endpoints['admin']} did not give its drop counters: {error}"
        ) from None
    return drops


def start_router(children: Children, name: str, config: Path) -> tuple[Child, dict[str, str]]:
    """A router and the endpoints it bound."""
    router = children.start(name, router_command(config))
    ready = router.expect("ready", START_TIMEOUT)
    return router, {key: str(value) for key, value in ready.items() if key != "event"}


class ClusterWatch:
    """The cluster as its Redis keys show it."""

    def __init__(self, client: redis.Redis, shards: int = SHARDS, prefix: str = PREFIX) -> None:
        self.client = client
        self.shards = shards
        self.prefix = prefix

    def routers(self) -> dict[str, dict[str, str]]:
        """Every announced router's endpoints, by id."""
        found: dict[str, dict[str, str]] = {}
        for key in self.client.scan_iter(match=f"{self.prefix}:router:*", count=1000):
            value = self.client.get(key)
            if value is not None:
                found[_text(key).rsplit(":", 1)[1]] = json.loads(value)
        return found

    def router_id(self, pull: str, dead: Collection[str] = (), timeout: float = START_TIMEOUT) -> str:
        """The id of the router that announced the PULL endpoint ``pull``, other than those in
        ``dead`` (routers killed on the same endpoint, whose announcements may not have expired)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for router_id, endpoints in self.routers().items():
                if endpoints.get("pull") == pull and router_id not in dead:
                    return router_id
            time.sleep(POLL)
        raise ChildError(f"no router announced {pull} in Redis within {timeout:.0f} s")

    def owners(self) -> list[str | None]:
        """The id of the router holding each shard's lease, ``None`` for a shard nobody holds."""
        keys = [f"{self.prefix}:lease:{shard}" for shard in range(self.shards)]
        return [None if value is None else _text(value).split(" ", 1)[0] for value in self.client.mget(keys)]

    def wait_placed(self, router_ids: Sequence[str], timeout: float = PLACEMENT_TIMEOUT) -> list[str]:
        """Wait until every shard is held by the router among ``router_ids`` that prefers it (the
        placement every router computes once they all see each other); returns the owners."""
        wanted = placement(router_ids, self.shards)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.owners() == wanted:
                return wanted
            time.sleep(POLL)
        owners = self.owners()
        held = Counter(owner or "nobody" for owner in owners)
        misplaced = sum(owner != want for owner, want in zip(owners, wanted, strict=True))
        raise ChildError(
            f"the shards were not placed on routers {', '.join(router_ids)} within {timeout:.0f} s: "
            f"{misplaced} of {self.shards} elsewhere; held by {dict(held)}; "
            f"announced: {', '.join(sorted(self.routers()))}"
        )

    def wait_taken(self, topics: Sequence[str], dead: str, timeout: float) -> int | None:
        """``time.monotonic_ns()`` when every shard of ``topics`` was held by a router other than
        ``dead``; ``None`` if that did not happen within ``timeout`` seconds."""
        shards = {shard_of(topic.encode(), self.shards) for topic in topics}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            owners = self.owners()
            if all(owners[shard] not in (None, dead) for shard in shards):
                return time.monotonic_ns()
            time.sleep(FAST_POLL)
        return None


def placement(router_ids: Sequence[str], shards: int) -> list[str]:
    """Each shard's owner once ``router_ids`` are the live routers."""
    owners = [preferred_owner(shard, router_ids) for shard in range(shards)]
    if None in owners:
        raise ValueError("no router to place shards on")
    return [owner for owner in owners if owner is not None]


def topic_of(router_id: str, owners: Sequence[str | None], prefix: str, avoid: Sequence[str] = ()) -> str:
    """A topic ``prefix/tN`` whose shard ``router_id`` owns, in none of the shards of ``avoid``."""
    taken = {shard_of(topic.encode(), len(owners)) for topic in avoid}
    for n in range(100 * len(owners)):
        topic = f"{prefix}/t{n}"
        shard = shard_of(topic.encode(), len(owners))
        if owners[shard] == router_id and shard not in taken:
            return topic
    raise ValueError(f"no topic under {prefix} in a shard of {router_id}")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
