"""Which control connection speaks for which edge id, with no I/O.

An edge's id is public: it prefixes every client id and shows on the edge's ``/metrics``. So the id
alone proves nothing, and the router never lets a connection take an id that a live edge holds:

- **A live edge keeps its id.** A ``hello`` for the id of a live edge, from another connection, is
  refused (``edge_id_in_use``), unless it carries the ``session`` secret of that edge's last
  ``welcome``: then it is the same edge on a new connection (it recreated its socket) and takes over.
- **A gone edge's id is free.** Once the router has forgotten the edge (heartbeat timeout), any
  connection may claim the id: a restarted edge gets it back.
- **With Curve, an id belongs to a key.** The first Curve key to claim an id owns it for the
  router's lifetime; a ``hello`` for it from any other key is refused, live or not. Owners of
  forgotten edges are kept up to :data:`KEPT_OWNERS`, the oldest forgotten first to go.

A connection is the ROUTER socket's routing id of the peer (``peer``), not the edge id.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Final

from router.core.errors import ErrorCode, RefusedError

__all__ = ["KEPT_OWNERS", "EdgeClaims"]

KEPT_OWNERS: Final = 4_096
"""Key owners of forgotten edge ids kept, so a restarted edge's id stays its key's."""


class EdgeClaims:
    """Edge ids, the connections that speak for them, their ``welcome`` secrets and key owners."""

    def __init__(self, new_secret: Callable[[], str], kept_owners: int = KEPT_OWNERS) -> None:
        """``new_secret`` makes each ``welcome``'s secret: unguessable, from the process (the
        router gives 128 random bits)."""
        self._new_secret = new_secret
        self._kept_owners = kept_owners
        self._edge_of: dict[bytes, str] = {}
        self._peer_of: dict[str, bytes] = {}
        self._secret_of: dict[str, str] = {}
        self._owner_of: dict[str, str] = {}
        """Curve key (Z85) of each claimed id; ids of forgotten edges last, oldest first."""

    def edge_of(self, peer: bytes) -> str | None:
        """The edge id this connection speaks for, or ``None`` until its ``hello`` is welcomed."""
        return self._edge_of.get(peer)

    def peer_of(self, edge_id: str) -> bytes | None:
        """The connection that speaks for ``edge_id`` now, if any."""
        return self._peer_of.get(edge_id)

    def check(self, edge_id: str, peer: bytes, key: str | None, proof: str) -> None:
        """Raise ``edge_id_in_use`` (or ``bad_request``) unless ``peer`` may speak for ``edge_id``;
        changes nothing. ``key`` is the peer's Curve key, ``None`` without Curve; ``proof`` the
        ``session`` of its ``hello``."""
        owner = self._owner_of.get(edge_id)
        if key is not None and owner is not None and owner != key:
            raise RefusedError(ErrorCode.EDGE_ID_IN_USE, f"edge id {edge_id!r} belongs to another Curve key")
        holder = self._peer_of.get(edge_id)
        if holder is not None and holder != peer and not self._proves(edge_id, proof):
            raise RefusedError(
                ErrorCode.EDGE_ID_IN_USE,
                f"edge id {edge_id!r} is in use by a live edge; it is free again once the router"
                " forgets that edge (heartbeat_timeout)",
            )
        spoken_for = self._edge_of.get(peer)
        if spoken_for is not None and spoken_for != edge_id:
            raise RefusedError(ErrorCode.BAD_REQUEST, f"this connection speaks for edge {spoken_for!r}")

    def claim(self, edge_id: str, peer: bytes, key: str | None, proof: str) -> str:
        """Let ``peer`` speak for ``edge_id``, or raise as :meth:`check` does (nothing changed).
        Returns the secret for the ``welcome``, new at every claim. Call :meth:`release` when the
        router forgets the edge."""
        self.check(edge_id, peer, key, proof)
        holder = self._peer_of.get(edge_id)
        if holder is not None:
            del self._edge_of[holder]
        self._edge_of[peer] = edge_id
        self._peer_of[edge_id] = peer
        if key is not None:
            self._owner_of.pop(edge_id, None)
            self._owner_of[edge_id] = key
        secret = self._secret_of[edge_id] = self._new_secret()
        return secret

    def release(self, edge_id: str) -> None:
        """The router forgot ``edge_id``: any connection may claim it now (its key's, with Curve)."""
        peer = self._peer_of.pop(edge_id, None)
        if peer is None:
            return
        del self._edge_of[peer]
        del self._secret_of[edge_id]
        owner = self._owner_of.pop(edge_id, None)
        if owner is not None:
            self._owner_of[edge_id] = owner
            self._forget_old_owners()

    def _proves(self, edge_id: str, proof: str) -> bool:
        secret = self._secret_of.get(edge_id, "")
        return bool(proof) and hmac.compare_digest(proof.encode(), secret.encode())

    def _forget_old_owners(self) -> None:
        """Keep at most ``kept_owners`` owners of forgotten ids (live ones always stay)."""
        excess = len(self._owner_of) - len(self._peer_of) - self._kept_owners
        if excess <= 0:
            return
        for edge_id in list(self._owner_of):
            if excess <= 0:
                break
            if edge_id not in self._peer_of:
                del self._owner_of[edge_id]
                excess -= 1
