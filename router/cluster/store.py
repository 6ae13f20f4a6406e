"""The cluster's shared state in Redis 7 or Valkey: announcements, shard leases and reliable history.

:class:`ClusterStore` is an I/O shell. It decides nothing: each method is one atomic operation, one
command or one Lua script (registered once, sent by its SHA), so one round trip, except
:meth:`ClusterStore.routers`, which needs two (below). Whoever calls it owns the policy: when to
renew, whom to take over from, what to do with a refusal.

Keys, all under a prefix ``{p}`` (``switchboard`` by default):

==========================  ===========  ========================================================
key                         type         value
==========================  ===========  ========================================================
``{p}:shards``              string       the cluster's shard count, set once (``SET NX``); a
                                         router started with another count must refuse to start
``{p}:routers``             set          the ids of the routers that announced themselves
``{p}:router:{id}``         string, TTL  a live router's announcement: a JSON object of strings
                                         (its endpoints: control, xpub, pull, xsub, admin...)
``{p}:lease:{shard}``       string, TTL  ``"{router_id} {token}"``: the router that owns the shard
``{p}:fence:{shard}``       counter      the shard's fencing token: one more at each acquisition,
                                         and never below Redis's clock in milliseconds
``{p}:history:{topic}``     stream       a reliable topic's newest messages: entry id
                                         ``{offset}-0`` (offsets start at 1), fields ``h`` (the
                                         producer's header, maybe empty) and ``p`` (the payload)
``{p}:epochs``              hash         topic -> its epoch (decimal), the first one proposed
``{p}:topics:{shard}``      set          the reliable topics of a shard
==========================  ===========  ========================================================

The rules this module keeps:

- **Fencing.** A lease names its holder and the token it got; only a write that shows both (and
  whose token is still the shard's fence) goes through. A router that lost its lease while it was
  paused or cut off cannot write history after another router took the shard over. A token is
  never below the server's clock in milliseconds, so tokens keep growing even across a restart of
  a Redis that kept no data: edges, which trust the highest token they have seen, follow the
  owners after it too.
- **A refused write writes nothing.** :meth:`ClusterStore.append` checks the lease and the fence
  before it touches any stream. Lua scripts are atomic but never roll back, so an entry that could
  fail (an offset not above the stream's last one) is added with ``redis.pcall`` and counted as
  skipped rather than aborting the batch half-way. Other errors abort it: they mean the data under
  the prefix is not ours.
- **Every key a script touches is in its ``KEYS``**, as servers that check scripts require. That is
  why :meth:`ClusterStore.routers` reads the set of ids first and then runs its script on the
  announcements it names.
- **Exact history bounds.** After a batch, each stream is trimmed with an exact ``XTRIM MAXLEN``,
  once per stream rather than on every ``XADD``. ``MAXLEN ~`` would keep up to a radix node more
  (100 entries by default), and the history's count bound, like the single router's, is exact.
  The script runs atomically, so nobody sees a stream above its bound.
- **Writing scripts start with ``#!lua``.** Redis then refuses such a script as a whole when it is
  over ``maxmemory`` or talking to a replica, before it writes anything. This needs Redis 7 (as
  does ``SET NX GET``). A script that only reads starts with ``#!lua flags=no-writes``, which
  Redis runs in those cases too.
- **Unavailability is one exception.** Connection errors, timeouts, a server still loading its
  data, a replica that will not take writes, and any refusal the server answers with (a wrong
  password, protected mode, out of memory) raise :class:`StoreUnavailable`, naming the server and
  saying what it answered, but never a password. Each connection waits at most ``timeout`` to
  connect and to read a reply, and one that broke is retried once (the server may have
  restarted), so a call gives up within about twice ``timeout``.
- **Who is connected.** Every connection of a store is named ``switchboard-router-{router_id}``
  (again after a reconnection), so :meth:`ClusterStore.connected_routers` tells a router whose
  process died, and whose connections closed with it, before its leases run out.
"""

from __future__ import annotations

import contextlib
import json
import urllib.parse
from collections.abc import Awaitable, Sequence
from typing import Any, NamedTuple, TypeVar

from redis.asyncio import Redis
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MasterDownError, ReadOnlyError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from router.core.history import HistoryEntry
from router.core.shards import Holder

__all__ = [
    "CLIENT_NAME_PREFIX",
    "Append",
    "AppendResult",
    "ClusterStore",
    "Holder",
    "StoreUnavailable",
    "redacted",
]

T = TypeVar("T")

CLIENT_NAME_PREFIX = "switchboard-router-"
"""What each router's Redis connections are named: this and its id."""

_UNAVAILABLE = (
    RedisConnectionError,
    RedisTimeoutError,
    ReadOnlyError,
    MasterDownError,
    ResponseError,
    OSError,
)


class StoreUnavailable(RuntimeError):  # noqa: N818 - the name says what the caller learns
    """Redis could not be reached or did not answer in time; nothing is known about the operation."""


class Append(NamedTuple):
    """Entries for one topic's history, which then keeps its newest ``max_messages``."""

    topic: str
    entries: Sequence[HistoryEntry]
    max_messages: int


class AppendResult(NamedTuple):
    """``accepted``: the writer held the lease, and every entry not skipped was written.
    ``skipped``: entries whose offset was not above their stream's last one."""

    accepted: bool
    skipped: int


# ----------------------------------------------------------------------------------------------
# Scripts

_ANNOUNCE = """#!lua
-- KEYS: the router's announcement, the set of routers. ARGV: its id, its announcement, ttl (ms)
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('SADD', KEYS[2], ARGV[1])
return 1
"""

_LEAVE = """#!lua
-- KEYS: the router's announcement, the set of routers. ARGV: its id
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
return 1
"""

_LIVE_ROUTERS = """#!lua
-- KEYS[1]: the set of routers; KEYS[1 + i]: the announcement of the router whose id is ARGV[i].
-- Returns id, announcement, id, announcement... of those still announced; forgets the others.
local live = {}
for i = 1, #ARGV do
  local announcement = redis.call('GET', KEYS[i + 1])
  if announcement then
    live[#live + 1] = ARGV[i]
    live[#live + 1] = announcement
  else
    redis.call('SREM', KEYS[1], ARGV[i])
  end
end
return live
"""

_ACQUIRE = """#!lua
-- KEYS: the lease, the fence. ARGV: router id, ttl (ms), the lease value of the holder being
-- replaced ('' for none). Returns the new token, or nil when someone else holds the lease.
local current = redis.call('GET', KEYS[1])
if current and current ~= ARGV[3] then
  return false
end
local token = redis.call('INCR', KEYS[2])
local now = redis.call('TIME')
local floor = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
if token < floor then
  token = floor
  redis.call('SET', KEYS[2], string.format('%d', token))
end
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. string.format('%d', token), 'PX', ARGV[2])
return token
"""

_RENEW = """#!lua
-- KEYS: leases. ARGV[1]: ttl (ms); ARGV[1 + i]: the value KEYS[i] must still hold.
local renewed = {}
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[i + 1] then
    redis.call('PEXPIRE', KEYS[i], ARGV[1])
    renewed[i] = 1
  else
    renewed[i] = 0
  end
end
return renewed
"""

_RELEASE = """#!lua
-- KEYS: the lease. ARGV: the value it must still hold.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

_LEASE_TTLS = """#!lua flags=no-writes
-- KEYS: leases. Returns each one's value ('' for none) and milliseconds to live (PTTL), in turn.
local found = {}
for i = 1, #KEYS do
  found[2 * i - 1] = redis.call('GET', KEYS[i]) or ''
  found[2 * i] = redis.call('PTTL', KEYS[i])
end
return found
"""

_EPOCH = """#!lua
-- KEYS: the epochs, the shard's topics. ARGV: the topic, the epoch proposed.
redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[1])
return redis.call('HGET', KEYS[1], ARGV[1])
"""

_SET_POLICY = """#!lua
-- KEYS: the policies, their version. ARGV: the topic, its policy (JSON). Returns the new version.
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return redis.call('INCR', KEYS[2])
"""

_POLICIES = """#!lua
-- KEYS: the policies, their version. Returns {version, the hash's fields and values}.
return {tonumber(redis.call('GET', KEYS[2]) or '0'), redis.call('HGETALL', KEYS[1])}
"""

_APPEND = """#!lua
-- KEYS[1]: the lease, KEYS[2]: the fence, KEYS[2 + i]: the i-th topic's stream.
-- ARGV[1]: the lease value of the writer, ARGV[2]: its token; then, for each stream: its number
-- of entries n, the entries it keeps, and n times an entry id, header and payload.
-- Returns {1, skipped}, or {0, 0} when the writer no longer holds the lease.
if redis.call('GET', KEYS[1]) ~= ARGV[1] or redis.call('GET', KEYS[2]) ~= ARGV[2] then
  return {0, 0}
end
local skipped = 0
local at = 3
for i = 3, #KEYS do
  local count = tonumber(ARGV[at])
  local keep = ARGV[at + 1]
  at = at + 2
  for _ = 1, count do
    local added = redis.pcall('XADD', KEYS[i], ARGV[at], 'h', ARGV[at + 1], 'p', ARGV[at + 2])
    if type(added) == 'table' and added.err then
      if not string.find(added.err, 'equal or smaller', 1, true) then
        return redis.error_reply(added.err)
      end
      skipped = skipped + 1
    end
    at = at + 3
  end
  redis.call('XTRIM', KEYS[i], 'MAXLEN', keep)
end
return {1, skipped}
"""


class ClusterStore:
    """One router's connection to the cluster's Redis. Make it with :meth:`open`; :meth:`close` it."""

    def __init__(
        self, client: Redis, *, router_id: str, prefix: str, where: str, sentinel: Sentinel | None = None
    ) -> None:
        """Use :meth:`open`. ``where``: how messages name the server (no password)."""
        self.router_id = router_id
        self.prefix = prefix
        self._redis = client
        self._where = where
        self._sentinel = sentinel
        self._announce = client.register_script(_ANNOUNCE)
        self._leave = client.register_script(_LEAVE)
        self._live_routers = client.register_script(_LIVE_ROUTERS)
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._lease_ttls = client.register_script(_LEASE_TTLS)
        self._epoch = client.register_script(_EPOCH)
        self._append = client.register_script(_APPEND)
        self._set_policy = client.register_script(_SET_POLICY)
        self._policies = client.register_script(_POLICIES)

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        router_id: str,
        prefix: str = "switchboard",
        timeout: float = 1.0,  # noqa: ASYNC109 - a socket timeout, applied to every later call
        sentinels: Sequence[tuple[str, int]] = (),
        sentinel_service: str = "",
    ) -> ClusterStore:
        """Connect to ``url`` (``redis://``, ``rediss://`` or ``unix://``) and check that the
        server answers.

        With ``sentinels``, the master of ``sentinel_service`` is asked of them instead, and of
        ``url`` only its user name, password and database are used. ``timeout`` (seconds) bounds
        each connection attempt and each reply. Raises :class:`StoreUnavailable` when the server
        does not answer, and :class:`ValueError` for a ``router_id`` Redis cannot name a
        connection after (empty, or with spaces or characters other than printable ASCII).
        """
        if not router_id or not all("!" <= c <= "~" for c in router_id):
            raise ValueError(f"router id {router_id!r}: printable ASCII without spaces, please")
        options: dict[str, Any] = {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "client_name": CLIENT_NAME_PREFIX + router_id,
            "decode_responses": False,
            "retry": Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        }
        sentinel: Sentinel | None = None
        if sentinels:
            if not sentinel_service:
                raise ValueError("sentinels need the name of the service they watch")
            credentials = parse_url(url) if url else {}
            for name in ("username", "password", "db"):
                if name in credentials:
                    options[name] = credentials[name]
            shared = ("socket_timeout", "socket_connect_timeout", "retry")
            sentinel = Sentinel(list(sentinels), sentinel_kwargs={key: options[key] for key in shared})
            client = sentinel.master_for(sentinel_service, redis_class=Redis, **options)
            hosts = ",".join(f"{host}:{port}" for host, port in sentinels)
            where = f"sentinel service {sentinel_service!r} via {hosts}"
        else:
            client = Redis.from_url(url, **options)
            where = redacted(url)
        store = cls(client, router_id=router_id, prefix=prefix, where=where, sentinel=sentinel)
        try:
            await store._do(client.ping())
        except StoreUnavailable:
            await store.close()
            raise
        return store

    async def close(self) -> None:
        """Close every connection; the router's name leaves ``CLIENT LIST`` with them."""
        with contextlib.suppress(*_UNAVAILABLE):
            await self._redis.aclose()
            if self._sentinel is not None:
                for sentinel in self._sentinel.sentinels:
                    await sentinel.aclose()

    async def _do(self, call: Awaitable[T]) -> T:
        try:
            return await call
        except _UNAVAILABLE as error:
            raise StoreUnavailable(f"Redis at {self._where}: {error}") from error

    @property
    def where(self) -> str:
        """The server, as messages name it: its URL without a password, or the Sentinels'."""
        return self._where

    def _key(self, *parts: object) -> str:
        return ":".join((self.prefix, *map(str, parts)))

    # ------------------------------------------------------------------------------------------
    # The cluster and its routers

    async def check_shards(self, shards: int) -> int:
        """The cluster's shard count: ``shards`` if this call set it, else the one set before,
        which a router with another count must not run with."""
        before = await self._do(self._redis.set(self._key("shards"), shards, nx=True, get=True))
        return shards if before is None else _as_int(before)

    async def announce(self, router_id: str, info: dict[str, str], ttl_ms: int) -> None:
        """Announce (or announce again) ``router_id`` for ``ttl_ms``, with its endpoints ``info``."""
        announcement = json.dumps(info, separators=(",", ":"), sort_keys=True)
        keys = [self._key("router", router_id), self._key("routers")]
        await self._do(self._announce(keys=keys, args=[router_id, announcement, ttl_ms]))

    async def routers(self) -> dict[str, dict[str, str]]:
        """The routers whose announcement has not expired, by id; the others are forgotten.

        Two round trips: the ids first, so that the script can declare the keys it reads. A
        router that announces itself in between is seen by the next call.
        """
        ids = sorted(_text(member) for member in await self._do(self._redis.smembers(self._key("routers"))))
        if not ids:
            return {}
        keys = [self._key("routers"), *(self._key("router", router_id) for router_id in ids)]
        flat = await self._do(self._live_routers(keys=keys, args=ids))
        return {
            _text(flat[i]): _announcement(self._key("router", _text(flat[i])), flat[i + 1])
            for i in range(0, len(flat), 2)
        }

    async def leave(self, router_id: str) -> None:
        """Withdraw ``router_id``'s announcement at once (a clean shutdown)."""
        keys = [self._key("router", router_id), self._key("routers")]
        await self._do(self._leave(keys=keys, args=[router_id]))

    async def connected_routers(self) -> set[str]:
        """The ids of the routers that have a connection to Redis open right now (this one too)."""
        clients = await self._do(self._redis.client_list(_type="normal"))
        names = (str(client.get("name", "")) for client in clients)
        prefix = CLIENT_NAME_PREFIX
        return {name.removeprefix(prefix) for name in names if name.startswith(prefix)}

    # ------------------------------------------------------------------------------------------
    # Shard leases

    async def holders(self, shards: int) -> list[Holder | None]:
        """Who holds the lease of each shard ``0 .. shards - 1``; ``None`` for a shard nobody holds."""
        if shards <= 0:
            return []
        keys = [self._key("lease", shard) for shard in range(shards)]
        values = await self._do(self._redis.mget(keys))
        return [_holder(key, value) for key, value in zip(keys, values, strict=True)]

    async def lease_ttls(self, shards: int) -> list[tuple[Holder, int] | None]:
        """Who holds the lease of each shard ``0 .. shards - 1`` and how many milliseconds it has
        left, read together; ``None`` for a shard nobody holds (or whose lease has no time to live)."""
        if shards <= 0:
            return []
        keys = [self._key("lease", shard) for shard in range(shards)]
        flat = await self._do(self._lease_ttls(keys=keys))
        found: list[tuple[Holder, int] | None] = []
        for key, value, ttl in zip(keys, flat[::2], flat[1::2], strict=True):
            holder = _holder(key, value or None)
            found.append(None if holder is None or _as_int(ttl) < 0 else (holder, _as_int(ttl)))
        return found

    async def acquire(
        self, shard: int, router_id: str, ttl_ms: int, *, replacing: Holder | None = None
    ) -> int | None:
        """Take ``shard``'s lease for ``ttl_ms`` if nobody holds it or, with ``replacing``, if
        that holder (known to be dead) still does. Returns the new fencing token, or ``None``."""
        keys = [self._key("lease", shard), self._key("fence", shard)]
        replaced = "" if replacing is None else _lease_value(*replacing)
        token = await self._do(self._acquire(keys=keys, args=[router_id, ttl_ms, replaced]))
        return None if token is None else _as_int(token)

    async def renew(self, router_id: str, leases: Sequence[tuple[int, int]], ttl_ms: int) -> list[bool]:
        """Extend to ``ttl_ms`` each lease, given as ``(shard, token)``, that ``router_id`` still
        holds with that token. Returns, for each, whether it was renewed: one that was not is lost."""
        if not leases:
            return []
        keys = [self._key("lease", shard) for shard, _ in leases]
        values = [_lease_value(router_id, token) for _, token in leases]
        renewed = await self._do(self._renew(keys=keys, args=[ttl_ms, *values]))
        return [_as_int(flag) == 1 for flag in renewed]

    async def release(self, shard: int, router_id: str, token: int) -> bool:
        """Give ``shard``'s lease up if ``router_id`` still holds it with ``token``."""
        keys = [self._key("lease", shard)]
        released = await self._do(self._release(keys=keys, args=[_lease_value(router_id, token)]))
        return _as_int(released) == 1

    # ------------------------------------------------------------------------------------------
    # Policies set at run time, shared by every router

    async def set_policy(self, topic: str, policy: bytes) -> int:
        """Store ``topic``'s runtime ``policy`` (JSON) for every router; returns the new version
        of the policies."""
        keys = [self._key("policies"), self._key("policies", "version")]
        return _as_int(await self._do(self._set_policy(keys=keys, args=[topic, policy])))

    async def policies_version(self) -> int:
        """A number that grows with every :meth:`set_policy`; 0 before the first."""
        version: bytes | str | None = await self._do(self._redis.get(self._key("policies", "version")))
        return 0 if version is None else _as_int(version)

    async def policies(self) -> tuple[int, dict[str, bytes]]:
        """The version and every runtime policy (topic: JSON), read at once."""
        keys = [self._key("policies"), self._key("policies", "version")]
        version, flat = await self._do(self._policies(keys=keys))
        pairs = iter(flat)
        return _as_int(version), {
            _text(topic): _bytes(policy) for topic, policy in zip(pairs, pairs, strict=False)
        }

    # ------------------------------------------------------------------------------------------
    # Reliable topics' history

    async def epoch(self, topic: str, shard: int, proposed: int) -> int:
        """``topic``'s epoch: the first one ever proposed, which every owner of its shard must use.
        Also records the topic among ``shard``'s reliable topics."""
        keys = [self._key("epochs"), self._key("topics", shard)]
        return _as_int(await self._do(self._epoch(keys=keys, args=[topic, proposed])))

    async def append(self, shard: int, router_id: str, token: int, batch: Sequence[Append]) -> AppendResult:
        """Add ``batch`` to the histories of ``shard``'s topics, in one script, if ``router_id``
        still holds the shard's lease with ``token`` and ``token`` is still its fence; otherwise
        write nothing and return ``accepted=False``: the writer has been fenced off.

        An entry whose offset is not above its stream's last one is skipped and counted. Each
        topic then keeps its newest ``max_messages`` entries.
        """
        keys = [self._key("lease", shard), self._key("fence", shard)]
        args: list[str | int | bytes] = [_lease_value(router_id, token), token]
        for append in batch:
            if append.max_messages < 1:
                raise ValueError(f"{append.topic}: max_messages must be at least 1")
            keys.append(self._key("history", append.topic))
            args += [len(append.entries), append.max_messages]
            for entry in append.entries:
                if entry.offset < 1:
                    raise ValueError(f"{append.topic}: offsets start at 1, not {entry.offset}")
                args += [f"{entry.offset}-0", entry.header, entry.payload]
        accepted, skipped = await self._do(self._append(keys=keys, args=args))
        return AppendResult(_as_int(accepted) == 1, _as_int(skipped))

    async def last_offset(self, topic: str) -> int:
        """The offset of ``topic``'s newest entry; 0 when it has none."""
        newest = await self._do(self._redis.xrevrange(self._key("history", topic), count=1))
        return _offset(newest[0][0]) if newest and newest[0][0] is not None else 0

    async def read(self, topic: str, after: int, max_messages: int) -> list[HistoryEntry]:
        """``topic``'s entries with an offset above ``after``, oldest first, at most ``max_messages``."""
        if max_messages < 1:
            return []
        entries = await self._do(
            self._redis.xrange(self._key("history", topic), min=f"{after + 1}-0", count=max_messages)
        )
        return [
            HistoryEntry(_offset(entry_id), _bytes(fields.get(b"h", b"")), _bytes(fields.get(b"p", b"")))
            for entry_id, fields in entries or ()
            if entry_id is not None and fields is not None
        ]

    async def shard_topics(self, shard: int) -> list[str]:
        """The reliable topics of ``shard`` (those :meth:`epoch` was asked about), sorted."""
        members = await self._do(self._redis.smembers(self._key("topics", shard)))
        return sorted(_text(member) for member in members)


# ----------------------------------------------------------------------------------------------
# Parsing replies: bytes or int, whatever the server or the client made of them


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def _as_int(value: bytes | str | int) -> int:
    return value if isinstance(value, int) else int(value)


def _offset(entry_id: bytes | str) -> int:
    return int(_text(entry_id).partition("-")[0])


def _lease_value(router_id: str, token: int) -> str:
    return f"{router_id} {token}"


def _holder(key: str, value: bytes | str | None) -> Holder | None:
    if value is None:
        return None
    router_id, _, token = _text(value).rpartition(" ")
    if not router_id or not token.isdigit():
        raise ValueError(f"{key}: not a lease: {value!r}")
    return Holder(router_id, int(token))


def _announcement(key: str, value: bytes | str) -> dict[str, str]:
    info = json.loads(value)
    if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
        raise ValueError(f"{key}: not a JSON object of strings: {value!r}")
    return info


def redacted(url: str) -> str:
    """``url`` without its password (in the address or as a ``password`` query parameter)."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        user = parts.username or ""
        netloc = f"{user}:***@{netloc.rpartition('@')[2]}"
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    if netloc == parts.netloc and not any(name.lower() == "password" for name, _ in query):
        return url
    hidden = [(name, "***" if name.lower() == "password" else value) for name, value in query]
    return urllib.parse.urlunsplit(
        parts._replace(netloc=netloc, query=urllib.parse.urlencode(hidden, safe="*"))
    )
