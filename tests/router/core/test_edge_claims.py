"""Who may speak for an edge id (``router/core/edge_claims.py``), driven through the control plane
by hypothesis against a model with three rules: a live edge keeps its id against any connection
without its last ``welcome`` secret; a forgotten edge's id is free; with Curve, an id is its first
key's for good."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import note, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from router.core import ConnectionManager, RefusedError
from router.core.control import ControlPlane, ToEdge, ToPeer
from router.core.edge_claims import EdgeClaims
from router.wire import Error, Heartbeat, Hello, Welcome, encode_control
from tests.strategies import scaled_examples

TIMEOUT = 3.0
PEERS = [b"p1", b"p2", b"p3"]
EDGES = ["e1", "e2"]
KEYS = ["K1", "K2"]


class EdgeIdentities(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        secrets = (f"secret-{n}" for n in itertools.count())
        self.plane = ControlPlane(
            ConnectionManager(), 1.0, TIMEOUT, router_id="r", new_secret=lambda: next(secrets)
        )
        self.now = 0.0
        self.curve: bool | None = None
        self.holder: dict[str, bytes] = {}
        """Model: the connection of each live edge."""
        self.heard: dict[str, float] = {}
        self.secret: dict[str, str] = {}
        self.owner: dict[str, str] = {}
        self.key_of: dict[bytes, str | None] = {}
        """Each peer's Curve key: one per connection, for its life."""

    @rule(
        peer=st.sampled_from(PEERS),
        edge=st.sampled_from(EDGES),
        key=st.sampled_from(KEYS),
        proof=st.sampled_from(["none", "right", "stale"]),
        curve=st.booleans(),
    )
    def hello(self, peer: bytes, edge: str, key: str, proof: str, curve: bool) -> None:
        if self.curve is None:
            self.curve = curve
        peer_key = self.key_of.setdefault(peer, key if self.curve else None)
        session = {"none": "", "right": self.secret.get(edge, ""), "stale": "secret-stale"}[proof]
        body = encode_control(Hello(edge_id=edge, protocol="test", session=session))
        out = self.plane.handle(peer, body, self.now, key=peer_key)
        allowed = self._model_allows(peer, edge, peer_key, session)
        note(f"hello {peer!r} {edge} key={peer_key} proof={proof}: {out}")
        if allowed:
            assert isinstance(out[-1], ToEdge)
            assert isinstance(out[-1].message, Welcome)
            old = self.holder.get(edge)
            if old is not None and old != peer:
                del self.holder[edge]
            self.holder[edge] = peer
            self.heard[edge] = self.now
            self.secret[edge] = out[-1].message.session
            if peer_key is not None:
                self.owner.setdefault(edge, peer_key)
        else:
            assert len(out) == 1
            assert isinstance(out[0], ToPeer | ToEdge)
            assert isinstance(out[0].message, Error)
            assert out[0].message.code in ("edge_id_in_use", "bad_request")

    def _model_allows(self, peer: bytes, edge: str, key: str | None, session: str) -> bool:
        if key is not None and self.owner.get(edge, key) != key:
            return False
        holder = self.holder.get(edge)
        if holder is not None and holder != peer and session != self.secret[edge]:
            return False
        speaks_for = [e for e, p in self.holder.items() if p == peer]
        return speaks_for in ([], [edge])

    @rule(peer=st.sampled_from(PEERS))
    def heartbeat(self, peer: bytes) -> None:
        out = self.plane.handle(peer, encode_control(Heartbeat()), self.now)
        speaks_for = [e for e, p in self.holder.items() if p == peer]
        if speaks_for:
            assert out == []
            self.heard[speaks_for[0]] = self.now
        else:
            assert len(out) == 1
            assert isinstance(out[0], ToPeer)

    @rule(seconds=st.sampled_from([0.5, 2.0, TIMEOUT + 0.5]))
    def tick(self, seconds: float) -> None:
        self.now += seconds
        self.plane.tick(self.now)
        for edge in [e for e, heard in self.heard.items() if heard < self.now - TIMEOUT]:
            del self.heard[edge]
            self.holder.pop(edge, None)

    @invariant()
    def same_holders(self) -> None:
        claims: EdgeClaims = self.plane.claims
        assert {e: claims.peer_of(e) for e in EDGES if claims.peer_of(e)} == self.holder
        assert sorted(self.plane.manager.edge_ids()) == sorted(self.holder)
        for edge, peer in self.holder.items():
            assert claims.edge_of(peer) == edge


EdgeIdentities.TestCase.settings = settings(max_examples=scaled_examples(300), stateful_step_count=30)
TestEdgeIdentities = EdgeIdentities.TestCase


def test_owners_of_forgotten_ids_are_bounded_and_live_ones_kept() -> None:
    secrets = (f"s{n}" for n in itertools.count())
    claims = EdgeClaims(lambda: next(secrets), kept_owners=2)
    claims.claim("live", b"p-live", "K-live", "")
    for n in range(5):
        claims.claim(f"gone-{n}", f"p{n}".encode(), f"K{n}", "")
        claims.release(f"gone-{n}")
    claims.claim("gone-0", b"q0", "K-other", "")
    for edge_id in ("gone-3", "gone-4", "live"):
        with pytest.raises(RefusedError, match="another Curve key"):
            claims.claim(edge_id, b"q", "K-other", "")
