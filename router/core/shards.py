"""Topic shards and the leases that give each one owner, with no I/O.

A topic belongs to one of a fixed number of shards: the FNV-1a 32-bit hash of its UTF-8 bytes,
modulo the shard count (:func:`shard_of`; ``docs/cluster.md`` shows it in C and JavaScript).

In cluster mode each shard has exactly one owner among the live routers, which holds a lease in
Redis. Taking a lease increments the shard's fencing token, so a newer owner always shows a higher
token than every owner before it. :class:`ShardLeases` is one router's side of this: the shell
reads the leases, the live routers and the routers whose Redis connection is open, hands them to
:meth:`ShardLeases.plan`, carries out the returned :class:`LeaseSteps` against Redis, and reports
each result back. The object answers which shards the router may serve at a given time, and how
long, at least, each shard's lease has left.

The rules:

- A shard's *preferred* owner is the live router that ranks it highest by rendezvous hashing, so
  every router computes the same placement from the same list, and a router joining or leaving
  moves only its own share of the shards.
- A router takes a free shard it prefers; a free shard nobody has taken for ``orphan_after``
  seconds, whoever prefers it; and the shard of a router that is not live any more (its Redis
  connection closed with its process, or its announcement ran out), replacing exactly that holder
  at once. After a reading that came half a lease time or more after the one before (Redis was
  unavailable, or restarted without its data), the routers live before still count for a lease
  time when it places free shards: they have not announced themselves again yet.
- It hands a shard over (stops serving it, then releases the lease) when another live router
  prefers it.
- It serves a shard only until ``safety`` of the lease time before the lease would run out without
  a renewal, counted from when it *asked*, so a router that was paused or cut off stops serving
  before Redis lets anyone else take the lease.
- A shard whose serving time ran out is *degraded*, not gone: with no token, nothing of it is
  written to history or delivered from history, but the router may go on delivering its other
  topics from memory (Redis down for everyone must not stop them; edges take a shard's data only
  from the highest token they know, so a router cut off alone is fenced off as soon as another
  takes the shard). It is lost for good once Redis shows another holder, and served again if this
  router takes the lease back.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, NamedTuple

FNV_OFFSET: Final = 0x811C9DC5
FNV_PRIME: Final = 0x01000193
DEFAULT_SHARDS: Final = 64


def shard_of(topic: bytes, shards: int) -> int:
    """The shard of a topic given as its UTF-8 bytes: FNV-1a 32-bit, modulo ``shards``."""
    value = FNV_OFFSET
    for byte in topic:
        value = ((value ^ byte) * FNV_PRIME) & 0xFFFFFFFF
    return value % shards


def preferred_owner(shard: int, routers: Iterable[str]) -> str | None:
    """The router that ranks ``shard`` highest (rendezvous hashing); ``None`` with no router."""
    best: tuple[bytes, str] | None = None
    for router_id in routers:
        rank = (hashlib.blake2b(f"{shard}/{router_id}".encode(), digest_size=8).digest(), router_id)
        if best is None or rank > best:
            best = rank
    return best[1] if best is not None else None


class Holder(NamedTuple):
    """Who holds a shard's lease, and the fencing token it got when it took it."""

    router_id: str
    token: int


class LeaseSteps(NamedTuple):
    """What the shell does against Redis after :meth:`ShardLeases.plan`."""

    renew: list[tuple[int, int]]
    """``(shard, token)`` of every lease held, to renew in one call."""
    acquire: list[tuple[int, Holder | None]]
    """Shards to take: free ones (``None``), or from exactly that holder, known dead."""
    release: list[tuple[int, int]]
    """``(shard, token)`` of leases handed over; the router has already stopped serving them."""


class Gained(NamedTuple):
    shard: int
    token: int


class Lost(NamedTuple):
    shard: int
    token: int
    reason: str
    """``handed_over``, ``taken`` (another router holds it), ``expired`` (not renewed in time)."""


Change = Gained | Lost
GAINED: Final = "gained"
HANDED_OVER: Final = "handed_over"
TAKEN: Final = "taken"
EXPIRED: Final = "expired"
CHANGES: Final = (GAINED, HANDED_OVER, TAKEN, EXPIRED)
"""How shard changes are counted and told: gained, or lost for one of three reasons."""


@dataclass(slots=True)
class _Lease:
    token: int
    serve_until: float


@dataclass
class ShardLeases:
    """One router's leases. ``now`` is a monotonic clock's seconds, passed in on every call."""

    router_id: str
    shards: int
    lease_time: float
    safety: float = 0.25
    """The share of ``lease_time`` the router stops early: room for clock drift and slow replies."""
    orphan_after: float = 0.0
    """How long a free shard waits for its preferred owner; 0: two lease times."""
    _held: dict[int, _Lease] = field(default_factory=dict)
    _degraded: dict[int, int] = field(default_factory=dict)
    """Shards whose serving time ran out, with the token they had."""
    _free_since: dict[int, float] = field(default_factory=dict)
    _view: list[Holder | None] = field(default_factory=list)
    _live: frozenset[str] = frozenset()
    _others_until: list[tuple[Holder, float] | None] = field(default_factory=list)
    _last_plan: float | None = None
    _remembered: frozenset[str] = frozenset()
    """The routers live before an outage, counted for free shards until ``_remember_until``."""
    _remember_until: float = 0.0

    def __post_init__(self) -> None:
        if self.shards < 1:
            raise ValueError("a cluster has at least one shard")
        if not 0 < self.safety < 1:
            raise ValueError("safety is a share of the lease time, between 0 and 1")
        self.orphan_after = self.orphan_after or 2 * self.lease_time
        self._view = [None] * self.shards
        self._others_until = [None] * self.shards

    # ------------------------------------------------------------ reading

    def token(self, shard: int, now: float) -> int | None:
        """The fencing token under which this router serves ``shard`` at ``now``, or ``None``."""
        lease = self._held.get(shard)
        if lease is None or now >= lease.serve_until:
            return None
        return lease.token

    def served(self, now: float) -> dict[int, int]:
        """Every shard this router serves at ``now``, with its token."""
        return {shard: lease.token for shard, lease in self._held.items() if now < lease.serve_until}

    def degraded(self) -> dict[int, int]:
        """Shards whose lease ran out without another holder known yet, with their last token."""
        return dict(self._degraded)

    def owners(self) -> list[Holder | None]:
        """Each shard's holder as last read from Redis, with this router's own leases over it."""
        return [self.holder(shard) for shard in range(self.shards)]

    def holder(self, shard: int) -> Holder | None:
        """:meth:`owners` of one shard."""
        lease = self._held.get(shard)
        return Holder(self.router_id, lease.token) if lease is not None else self._view[shard]

    def lease_left(self, shard: int, now: float) -> float | None:
        """Seconds, at least, before ``shard``'s lease runs out in Redis unless it is renewed.

        This router's own lease is counted from when it last asked for it; another router's from
        the last :meth:`ttls_read`, if the holder read then still holds it. ``None`` for a free
        shard, and for another's lease not read since it changed hands.
        """
        lease = self._held.get(shard)
        if lease is not None:
            return max(0.0, lease.serve_until + self.lease_time * self.safety - now)
        seen = self._others_until[shard]
        if seen is None or seen[0] != self._view[shard]:
            return None
        return max(0.0, seen[1] - now)

    @property
    def live(self) -> frozenset[str]:
        """The routers counted live at the last :meth:`plan`, this one included."""
        return self._live

    # ------------------------------------------------------------ planning

    def plan(
        self,
        announced: Iterable[str],
        holders: Sequence[Holder | None],
        now: float,
        connected: Iterable[str] | None = None,
    ) -> tuple[LeaseSteps, list[Change]]:
        """Decide the next steps from what Redis says now: the routers ``announced`` alive, each
        shard's lease holder, and (when known) the routers whose Redis connection is open.

        Returns the steps, and the changes already made: a shard held here that Redis shows held by
        another is lost, a shard another router prefers is handed over (so not served any more
        from this call on), and a shard whose serving time ran out is lost.
        """
        if len(holders) != self.shards:
            raise ValueError(f"{len(holders)} holders for {self.shards} shards")
        live = set(announced) | {self.router_id}
        if connected is not None:
            live &= set(connected) | {self.router_id}
        if self._last_plan is not None and now - self._last_plan >= self.lease_time / 2:
            self._remembered, self._remember_until = self._live, now + self.lease_time
        self._last_plan = now
        recent = live | self._remembered if now < self._remember_until else live
        self._live = frozenset(live)
        self._view = list(holders)
        changes: list[Change] = self.expire(now)
        changes += self._notice_taken(holders)
        steps = LeaseSteps([], [], [])
        for shard in range(self.shards):
            preferred = preferred_owner(shard, live)
            holder = holders[shard]
            if shard in self._degraded and holder == Holder(self.router_id, self._degraded[shard]):
                if preferred == self.router_id:
                    steps.renew.append((shard, holder.token))
                continue
            if shard in self._held:
                if preferred != self.router_id:
                    lost = self._hand_over(shard)
                    steps.release.append((shard, lost.token))
                    changes.append(lost)
                else:
                    steps.renew.append((shard, self._held[shard].token))
                continue
            if holder is None:
                self._plan_free(steps, shard, preferred_owner(shard, recent), now)
            else:
                self._free_since.pop(shard, None)
                if holder.router_id not in live and preferred == self.router_id:
                    steps.acquire.append((shard, holder))
        return steps, changes

    def _notice_taken(self, holders: Sequence[Holder | None]) -> list[Change]:
        changes: list[Change] = []
        for shard, token in list(self._degraded.items()):
            holder = holders[shard]
            if holder is not None and holder.router_id != self.router_id:
                del self._degraded[shard]
                changes.append(Lost(shard, token, TAKEN))
        for shard, lease in list(self._held.items()):
            holder = holders[shard]
            if holder is not None and holder != Holder(self.router_id, lease.token):
                changes.append(self._lose(shard, TAKEN))
        return changes

    def _plan_free(self, steps: LeaseSteps, shard: int, preferred: str | None, now: float) -> None:
        """A free shard goes to its preferred router, among those live before an outage too: after
        Redis restarted without its data, the other routers have not announced themselves again
        yet, and must not lose their shards to whichever router ticks first."""
        since = self._free_since.setdefault(shard, now)
        if preferred == self.router_id or now - since >= self.orphan_after:
            steps.acquire.append((shard, None))

    def _hand_over(self, shard: int) -> Lost:
        return self._lose(shard, HANDED_OVER)

    def _lose(self, shard: int, reason: str) -> Lost:
        lease = self._held.pop(shard)
        return Lost(shard, lease.token, reason)

    # ------------------------------------------------------------ results

    def acquired(self, shard: int, token: int, asked_at: float) -> list[Change]:
        """Redis gave this router ``shard`` under ``token``, for a request sent at ``asked_at``."""
        if shard in self._held:
            raise ValueError(f"shard {shard} is held already")
        self._held[shard] = _Lease(token, self._serve_until(asked_at))
        self._degraded.pop(shard, None)
        self._free_since.pop(shard, None)
        self._view[shard] = Holder(self.router_id, token)
        return [Gained(shard, token)]

    def renewed(self, results: Sequence[tuple[int, int, bool]], asked_at: float) -> list[Change]:
        """The answers to the renewal of ``(shard, token)`` pairs sent at ``asked_at``: a lease
        Redis renewed is served longer, one it refused is lost."""
        changes: list[Change] = []
        for shard, token, renewed in results:
            if renewed and self._degraded.get(shard) == token:
                del self._degraded[shard]
                self._held[shard] = _Lease(token, self._serve_until(asked_at))
                changes.append(Gained(shard, token))
                continue
            lease = self._held.get(shard)
            if lease is None or lease.token != token:
                continue
            if renewed:
                lease.serve_until = max(lease.serve_until, self._serve_until(asked_at))
            else:
                changes.append(self._lose(shard, TAKEN))
        return changes

    def ttls_read(self, ttls: Sequence[tuple[Holder, int] | None], asked_at: float) -> None:
        """Each shard's holder and the milliseconds its lease had left, or ``None`` (free, or no
        time to live), as Redis answered a request sent at ``asked_at``: what
        :meth:`lease_left` tells of other routers' leases."""
        if len(ttls) != self.shards:
            raise ValueError(f"{len(ttls)} lease times for {self.shards} shards")
        self._others_until = [None if seen is None else (seen[0], asked_at + seen[1] / 1000) for seen in ttls]

    def expire(self, now: float) -> list[Change]:
        """Degrade every shard whose serving time ran out (Redis slow or unreachable, the process
        paused): ``Lost(reason=expired)``, and the shard is :meth:`degraded` from now on."""
        changes: list[Change] = []
        for shard in [shard for shard, lease in self._held.items() if now >= lease.serve_until]:
            lost = self._lose(shard, EXPIRED)
            self._degraded[shard] = lost.token
            changes.append(lost)
        return changes

    def drop_all(self) -> list[Change]:
        """Stop serving everything (shutting down); the shell releases the returned leases.
        Degraded shards are lost too, with reason ``handed_over``."""
        degraded = [Lost(shard, token, HANDED_OVER) for shard, token in self._degraded.items()]
        self._degraded.clear()
        return [*degraded, *(self._hand_over(shard) for shard in list(self._held))]

    def _serve_until(self, asked_at: float) -> float:
        return asked_at + self.lease_time * (1 - self.safety)
