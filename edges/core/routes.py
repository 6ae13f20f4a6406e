"""Which router each of the edge's requests goes to, when it talks to a cluster of routers. No I/O.

Rules of this module:

- Registers, refreshes and unregisters go to every welcomed router: each one must know every
  client, since any of them may serve the client's next topic.
- A topic's subscribes, unsubscribes and recovers go to its *home*: the router all its local
  subscriptions were sent to, which was its shard's owner in the :class:`ShardView` then. A topic
  has no home while its owner is unknown, not welcomed, or answered ``not_owner`` (the topic is
  *blocked* at that router until the view changes or the next :meth:`Routes.unblock`); meanwhile
  its subscriptions wait, and the hub sends every one of them to the owner once it can
  (:meth:`Routes.target`).
- Data of a topic counts only when it comes from its shard's owner: :attr:`Routes.owners` maps each
  local topic's UTF-8 bytes to that router's id (``""`` while the shard has none), and the shell
  drops what another router sends.
"""

from __future__ import annotations

from edges.core.requests import BROADCAST, RouterRequest
from edges.core.shard_view import ShardView

__all__ = ["Routes"]


class Routes:
    """The shard view, the welcomed routers, and each local topic's home and owner."""

    def __init__(self, view: ShardView) -> None:
        self.view = view
        self.welcomed: set[str] = set()
        self.owners: dict[bytes, str] = {}
        """Each local topic's owner by the topic's UTF-8 bytes (``""``: none known)."""
        self._homes: dict[str, str] = {}
        self._blocked: dict[str, str] = {}
        """Topics a router answered ``not_owner`` for, and that router."""

    def __repr__(self) -> str:
        return f"<Routes {sorted(self.welcomed)} {len(self._homes)}/{len(self.owners)} topics at home>"

    # ------------------------------------------------------------ where requests go

    def destinations(self, request: RouterRequest) -> tuple[str, ...]:
        """Every welcomed router for a register or refresh; the topic's home for the others, while
        it has one that is welcomed; else nowhere for now."""
        if request.kind in BROADCAST:
            return self.everyone()
        home = self._homes.get(request.topic)
        return (home,) if home is not None and home in self.welcomed else ()

    def everyone(self) -> tuple[str, ...]:
        return tuple(sorted(self.welcomed))

    def owner(self, topic: str) -> str | None:
        """The router that serves ``topic`` as far as the edge knows."""
        return self.view.owner_of(topic.encode())

    def target(self, topic: str) -> str | None:
        """Where the topic's subscriptions can go now: its owner, if welcomed and not blocked."""
        owner = self.owner(topic)
        if owner is None or owner not in self.welcomed or self._blocked.get(topic) == owner:
            return None
        return owner

    # ------------------------------------------------------------ homes

    def home(self, topic: str) -> str | None:
        return self._homes.get(topic)

    def settle(self, topic: str, router: str) -> None:
        """Every subscription of ``topic`` is sent to ``router`` from now on."""
        self._homes[topic] = router

    def unsettle(self, topic: str) -> str | None:
        """The topic's subscriptions are no longer at its home (returned)."""
        return self._homes.pop(topic, None)

    def homed_at(self, router: str) -> list[str]:
        return [topic for topic, home in self._homes.items() if home == router]

    def block(self, topic: str, router: str) -> None:
        """``router`` answered that it does not serve ``topic``: not again before :meth:`unblock`."""
        self._blocked[topic] = router
        self._homes.pop(topic, None)

    def unblock(self) -> list[str]:
        """Ask again for every blocked topic; returns them."""
        topics, self._blocked = list(self._blocked), {}
        return topics

    # ------------------------------------------------------------ local topics

    def topic_added(self, topic: str) -> None:
        self.owners[topic.encode()] = self.owner(topic) or ""

    def topic_removed(self, topic: str) -> None:
        self.owners.pop(topic.encode(), None)
        self._homes.pop(topic, None)
        self._blocked.pop(topic, None)

    def view_changed(self) -> None:
        """The owners of local topics may have changed: look them up again."""
        owner_of = self.view.owner_of
        owners = self.owners
        for wire_topic in owners:
            owners[wire_topic] = owner_of(wire_topic) or ""
