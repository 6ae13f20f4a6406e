"""Which router serves each topic, merged from the shard maps the routers of a cluster send. No I/O.

Rules of this module:

- A topic is in shard :func:`~router.core.shards.shard_of` (FNV-1a of its UTF-8 bytes, modulo the
  shard count).
- Each shard's owner is the one with the highest fencing token any map has shown. A router takes a
  lease only with a higher token than every holder before it, so a map showing a lower or equal
  token, or no owner (token 0), is older news and changes nothing. Maps from different routers may
  disagree for a moment; the merge gives the same view whatever order they arrive in.
- A map with another shard count than the view's replaces the view (the cluster was started again
  with another count): every shard changes owner.
- The routers to connect to are those the newest map of each sender lists, while that map counts:
  for :attr:`ShardView.keep_for` seconds after it arrived or its sender was last heard from
  (:meth:`ShardView.heard`; a router sends a map only when something changes). So a router stays
  listed while a live router lists it, and is dropped ``keep_for`` seconds after the last one did.
- The time comes from the caller: ``now`` (seconds of a monotonic clock).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, NamedTuple

from router.core.shards import shard_of
from router.wire import RouterEndpoints, ShardMap

__all__ = ["KEEP_FOR", "Owner", "ShardView"]

KEEP_FOR: Final = 10.0
"""Seconds a router stays listed after the last map that listed it stopped counting."""


class Owner(NamedTuple):
    """The router that serves a shard, and the fencing token of its lease."""

    router_id: str
    token: int


@dataclass(slots=True)
class _Listing:
    """One sender's newest list of routers, and when it last counted."""

    routers: dict[str, RouterEndpoints]
    at: float


class ShardView:
    """Each shard's owner and the routers of the cluster, as the maps received so far tell.

    Empty (``shards == 0``, no owner for anything) until the first map.
    """

    def __init__(self, keep_for: float = KEEP_FOR) -> None:
        self.keep_for = keep_for
        self.shards = 0
        self._owners: list[Owner | None] = []
        self._listings: dict[str, _Listing] = {}

    def __repr__(self) -> str:
        owned = sum(owner is not None for owner in self._owners)
        return f"<ShardView {owned}/{self.shards} shards owned, {len(self._listings)} senders>"

    # ------------------------------------------------------------ input

    def apply(self, sender: str, shard_map: ShardMap, now: float) -> list[int]:
        """Merge the map router ``sender`` sent, received at ``now``. Returns the shards whose
        owner changed (another router, or the same one under a new lease), in order.

        A map whose ``owners`` does not have one entry per shard changes no owner."""
        self._listings[sender] = _Listing(dict(shard_map.routers), now)
        shards = shard_map.shards
        if shards < 1 or len(shard_map.owners) != shards:
            return []
        reset = self.shards not in (0, shards)
        if shards != self.shards:
            self.shards = shards
            self._owners = [None] * shards
        changed = []
        for shard, (router_id, token) in enumerate(shard_map.owners):
            current = self._owners[shard]
            if router_id and token > (current.token if current is not None else 0):
                self._owners[shard] = Owner(router_id, token)
                changed.append(shard)
        return list(range(shards)) if reset else changed

    def heard(self, sender: str, now: float) -> None:
        """Router ``sender`` was heard from at ``now``: its newest map still counts."""
        listing = self._listings.get(sender)
        if listing is not None:
            listing.at = max(listing.at, now)

    # ------------------------------------------------------------ reading

    def owner(self, shard: int) -> Owner | None:
        """The shard's owner, or ``None`` while no map showed one."""
        return self._owners[shard] if 0 <= shard < self.shards else None

    def shard_of(self, topic: bytes) -> int:
        """The shard of a topic given as its UTF-8 bytes; 0 before the first map."""
        return shard_of(topic, self.shards) if self.shards else 0

    def owner_of(self, topic: bytes) -> str | None:
        """The router that serves the topic (its UTF-8 bytes), or ``None`` while none is known."""
        if not self.shards:
            return None
        owner = self._owners[shard_of(topic, self.shards)]
        return owner.router_id if owner is not None else None

    def owners(self) -> Iterator[tuple[int, Owner | None]]:
        """Every shard and its owner."""
        return enumerate(self._owners)

    def routers(self, now: float) -> dict[str, RouterEndpoints]:
        """Every router a map that counts at ``now`` lists, with its endpoints from the newest such
        map. Maps that stopped counting are forgotten."""
        for sender in [s for s, listing in self._listings.items() if now - listing.at > self.keep_for]:
            del self._listings[sender]
        found: dict[str, RouterEndpoints] = {}
        for listing in sorted(self._listings.values(), key=lambda listing: listing.at):
            found.update(listing.routers)
        return found
