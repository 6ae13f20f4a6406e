"""JWT sessions: clients present a JSON Web Token, verified with keys from the configuration.

Rules of this module:

- Every verification key is bound to one algorithm (HS256, RS256, ES256 or EdDSA) when it is
  made. A token is checked only with the algorithm of the key that verifies it, never with the one
  its header names, so ``alg: none`` and HS/RS confusion (an RSA public key used as an HMAC secret)
  cannot verify.
- A key with a ``kid`` verifies only tokens whose header names that ``kid``; a key without one
  verifies any token its algorithm fits.
- ``sub`` (the user), ``exp`` and the topics claim are required; ``nbf`` is checked when present;
  ``iss`` and ``aud`` are checked when configured, and a token with an ``aud`` is refused when no
  audience is configured (RFC 7519, 4.1.3).
- No clock is read: :meth:`JwtSessions.authenticate` takes ``now`` in seconds since the Unix epoch.
  A session lasts until the token's ``exp`` plus ``leeway`` (:attr:`Identity.expires_at`).
- Refusals are ``RefusedError(UNAUTHORIZED, reason)``; a reason never contains the token.
- Keys may also come from a JWKS URL, which the router fetches (this module never does I/O): the
  router hands each key set it fetched to :meth:`JwtSessions.keys_fetched`, and
  :class:`JwksSchedule` says when to fetch. A token whose ``kid`` no key has raises
  :class:`~router.core.sessions.DecisionPending` (:data:`KEYS_PENDING`) when a fetch is under way
  or may start now, so the request waits for it; otherwise it is refused as ``unknown key id``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt.algorithms import get_default_algorithms

from router.core.clients import ClientInfo
from router.core.errors import ErrorCode, RefusedError
from router.core.sessions import DecisionPending, Identity
from router.core.topics import check_pattern, pattern_matches

__all__ = [
    "ALGORITHMS",
    "KEYS_PENDING",
    "NOT_FETCHED_IN_TIME",
    "JwksSchedule",
    "JwtSessions",
    "VerificationKey",
    "keys_from_jwks",
    "signing_keys",
]

ALGORITHMS: Final = ("HS256", "RS256", "ES256", "EdDSA")
MIN_HMAC_SECRET_BYTES: Final = 32
MIN_RSA_BITS: Final = 2048
MAX_PATTERNS: Final = 1024
"""The most topic patterns one token may carry."""
_LATEST_TIME: Final = 1e13
"""Bounds ``exp`` and ``nbf``, which also refuses infinities and NaN."""
KEYS_PENDING: Final = "jwks"
"""The :class:`~router.core.sessions.DecisionPending` key of a token that waits for a JWKS fetch."""
UNKNOWN_KID: Final = "unknown key id"
NOT_FETCHED_IN_TIME: Final = "unknown key id: the key set could not be fetched in time"

_PUBLIC_KEY_TYPES: Final[Mapping[str, tuple[type, ...]]] = {
    "RS256": (rsa.RSAPublicKey,),
    "ES256": (ec.EllipticCurvePublicKey,),
    "EdDSA": (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey),
}


# ---------------------------------------------------------------- keys


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """A key that verifies tokens of exactly one algorithm. Make it with one of the constructors,
    which refuse (``ValueError``) a key that does not fit its algorithm."""

    algorithm: str
    key: Any
    """An HMAC secret (bytes) or a ``cryptography`` public key."""
    kid: str | None = None

    @classmethod
    def from_secret(cls, secret: bytes, kid: str | None = None) -> VerificationKey:
        """An HS256 key: a shared secret of at least 32 bytes."""
        if len(secret) < MIN_HMAC_SECRET_BYTES:
            raise ValueError(f"an HS256 secret has at least {MIN_HMAC_SECRET_BYTES} bytes")
        try:
            get_default_algorithms()["HS256"].prepare_key(secret)
        except jwt.InvalidKeyError:
            raise ValueError("an HS256 secret must not be a PEM key or certificate") from None
        return cls("HS256", secret, kid)

    @classmethod
    def from_pem(cls, algorithm: str, pem: bytes, kid: str | None = None) -> VerificationKey:
        """An RS256, ES256 or EdDSA key from a PEM public key (a private key is refused)."""
        try:
            key = load_pem_public_key(pem)
        except ValueError:
            raise ValueError(f"not a PEM public key (for {algorithm})") from None
        return cls.from_public_key(algorithm, key, kid)

    @classmethod
    def from_public_key(cls, algorithm: str, key: object, kid: str | None = None) -> VerificationKey:
        """An RS256, ES256 or EdDSA key from a ``cryptography`` public key object."""
        _check_public_key(algorithm, key)
        return cls(algorithm, key, kid)


def _check_public_key(algorithm: str, key: object) -> None:
    types = _PUBLIC_KEY_TYPES.get(algorithm)
    if types is None:
        raise ValueError(f"algorithm {algorithm!r} takes no public key; use one of {', '.join(ALGORITHMS)}")
    if not isinstance(key, types):
        raise ValueError(f"a {algorithm} key must be a {' or '.join(t.__name__ for t in types)}")
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        raise ValueError(f"an RS256 key has at least {MIN_RSA_BITS} bits")
    if isinstance(key, ec.EllipticCurvePublicKey) and not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("an ES256 key is on curve P-256")


def keys_from_jwks(text: str) -> list[VerificationKey]:
    """The signing keys of a JWKS document (``{"keys": [...]}``), each bound to the algorithm its
    ``alg`` names (or, without one, that its type implies). Keys marked ``"use": "enc"`` are left
    out; a key of another algorithm than :data:`ALGORITHMS` is an error, not skipped."""
    try:
        document = json.loads(text)
    except ValueError as error:
        raise ValueError(f"a JWKS file is JSON: {error}") from None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError('a JWKS file is a JSON object with a "keys" array')
    signing = [k for k in document["keys"] if not (isinstance(k, dict) and k.get("use") == "enc")]
    try:
        jwks = jwt.PyJWKSet(signing)
    except jwt.PyJWTError as error:
        raise ValueError(f"JWKS: {error}") from None
    return [_from_jwk(jwk) for jwk in jwks.keys]


def signing_keys(jwks: Iterable[jwt.PyJWK]) -> tuple[list[VerificationKey], list[str]]:
    """The keys of a fetched JWKS that can verify tokens here, and why each other key cannot.

    Unlike :func:`keys_from_jwks` (a file the operator wrote), a key of an algorithm outside
    :data:`ALGORITHMS`, or too weak, is left out rather than an error: an identity provider may
    publish keys for other relying parties beside the ones it signs these tokens with."""
    keys: list[VerificationKey] = []
    skipped: list[str] = []
    for jwk in jwks:
        try:
            keys.append(_from_jwk(jwk))
        except ValueError as error:
            skipped.append(str(error))
    return keys, skipped


def _from_jwk(jwk: jwt.PyJWK) -> VerificationKey:
    algorithm = jwk.algorithm_name
    if algorithm not in ALGORITHMS:
        raise ValueError(f"JWKS key {jwk.key_id!r}: algorithm {algorithm!r} is not one of {ALGORITHMS}")
    if algorithm == "HS256":
        return VerificationKey.from_secret(jwk.key, jwk.key_id)
    return VerificationKey.from_public_key(algorithm, jwk.key, jwk.key_id)


# ---------------------------------------------------------------- fetched keys


class JwksSchedule:
    """When the router fetches its JWKS URL, from the times it is given (seconds since the Unix
    epoch, as :meth:`JwtSessions.authenticate` is given).

    A fetch is due ``refresh`` seconds after the previous one ended, and at once when a token names
    a ``kid`` that no key has (:meth:`want`), unless a fetch ended less than ``cooldown`` seconds
    before: tokens with made-up ``kid`` values cause at most one fetch per ``cooldown``. Only one
    fetch is under way at a time. A clock that went back makes a fetch due.
    """

    def __init__(self, refresh: float = 300.0, cooldown: float = 10.0) -> None:
        if not 0 < cooldown <= refresh < math.inf:
            raise ValueError("the JWKS cooldown is more than 0 and at most the refresh interval")
        self.refresh = refresh
        self.cooldown = cooldown
        self.fetching = False
        self.wanted = False
        """A token waits for keys: the next fetch is due ``cooldown`` after the last one."""
        self.last_end: float | None = None
        self.fetches = 0
        """Fetches that ended, successful or not."""

    def next_due(self) -> float:
        """When the next fetch is due (``-inf``: now); ``inf`` while one is under way."""
        if self.fetching:
            return math.inf
        if self.last_end is None:
            return -math.inf
        return self.last_end + (self.cooldown if self.wanted else self.refresh)

    def due(self, now: float) -> bool:
        if self.fetching:
            return False
        return self.last_end is None or now < self.last_end or now >= self.next_due()

    def want(self, now: float) -> bool:
        """A token names a ``kid`` no key has: whether it should wait for a fetch (one is under way,
        or may start now, and is then due), rather than be refused at once."""
        if self.fetching:
            return True
        if self.last_end is None or not 0 <= now - self.last_end < self.cooldown:
            self.wanted = True
            return True
        return False

    def started(self) -> None:
        self.fetching = True
        self.wanted = False

    def ended(self, now: float) -> None:
        self.fetching = False
        self.last_end = now
        self.fetches += 1


# ---------------------------------------------------------------- sessions


class JwtSessions:
    """A :class:`~router.core.sessions.SessionManager` for JSON Web Tokens (module docstring)."""

    def __init__(
        self,
        keys: Iterable[VerificationKey],
        *,
        issuer: str | None = None,
        audience: str | None = None,
        leeway: float = 5.0,
        topics_claim: str = "topics",
        jwks: JwksSchedule | None = None,
    ) -> None:
        """``leeway``: seconds of clock difference with the token issuer that ``exp`` and ``nbf``
        tolerate. ``topics_claim``: the claim that lists the topic patterns the user may read.
        ``jwks``: keys also come from a JWKS URL, fetched on this schedule (module docstring);
        ``keys`` may then be empty until the first fetch."""
        self.configured = tuple(keys)
        """The keys of the configuration; they never change."""
        self.keys = self.configured
        """The keys in use: the configured ones, then those of the last successful fetch."""
        if not self.keys and jwks is None:
            raise ValueError("JWT sessions need at least one key")
        kids = [k.kid for k in self.keys if k.kid is not None]
        if len(kids) != len(set(kids)):
            raise ValueError("two keys have the same kid")
        self.jwks = jwks
        self._gave_up_at: float | None = None
        if not leeway >= 0:
            raise ValueError("leeway must be 0 or more")
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway
        self.topics_claim = topics_claim
        self._required = ["sub", "exp", topics_claim]
        self._required += [claim for claim, value in (("iss", issuer), ("aud", audience)) if value]

    def authenticate(self, client: ClientInfo, token: str | None, now: float) -> Identity:
        """The token's user, topic patterns and session end, or ``RefusedError(UNAUTHORIZED)``."""
        if not token:
            raise _refused("a token is required")
        claims = self._verified_claims(token, now)
        exp = _time_claim(claims, "exp")
        if now >= exp + self.leeway:
            raise _refused("token expired")
        if "nbf" in claims and now + self.leeway < _time_claim(claims, "nbf"):
            raise _refused("token not yet valid")
        user = claims["sub"]
        if not isinstance(user, str) or not user:
            raise _refused("the 'sub' claim must be a non-empty string")
        patterns = _patterns(claims[self.topics_claim], self.topics_claim)
        return Identity(user=user, allowed_patterns=patterns, expires_at=exp + self.leeway)

    def authorize(self, identity: Identity, topic: str) -> bool:
        return any(pattern_matches(pattern, topic) for pattern in identity.allowed_patterns)

    # ------------------------------------------------------------ fetched keys

    def fetch_started(self) -> None:
        """The router started fetching the JWKS URL."""
        assert self.jwks is not None
        self.jwks.started()

    def keys_fetched(self, fetched: Iterable[VerificationKey], now: float) -> None:
        """A fetch that ended at ``now`` gave these keys: they replace the previous fetch's. A
        configured key keeps its ``kid``: a fetched key with the same one is left out."""
        assert self.jwks is not None
        configured = {k.kid for k in self.configured if k.kid is not None}
        self.keys = self.configured + tuple(k for k in fetched if k.kid not in configured)
        self.jwks.ended(now)

    def fetch_failed(self, now: float) -> None:
        """A fetch that ended at ``now`` gave nothing: the keys in use stay."""
        assert self.jwks is not None
        self.jwks.ended(now)

    def fail(self, key: str, reason: str, now: float) -> None:
        """The wait for keys timed out: tokens with an unknown ``kid`` asked again at ``now`` are
        refused (:data:`NOT_FETCHED_IN_TIME`) instead of waiting again."""
        self._gave_up_at = now

    # ------------------------------------------------------------ verification

    def _verified_claims(self, token: str, now: float) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _refused("malformed token") from None
        candidates = self._candidates(header, now)
        refusal = _refused("bad signature")
        for key in candidates:
            try:
                return self._decode(token, key)
            except jwt.InvalidSignatureError:
                continue
            except jwt.PyJWTError as error:
                refusal = _refusal(error)
                break
        raise refusal

    def _candidates(self, header: dict[str, Any], now: float) -> list[VerificationKey]:
        """The keys that may verify a token with this (unverified) header, by ``kid`` then
        algorithm. The algorithm is only a filter: each key verifies with its own."""
        kid = header.get("kid")
        chosen = [k for k in self.keys if k.kid is not None and k.kid == kid]
        if not chosen:
            chosen = [k for k in self.keys if k.kid is None]
        if not chosen:
            self._wait_for_keys(kid, now)
            raise _refused(UNKNOWN_KID)
        fitting = [k for k in chosen if k.algorithm == header.get("alg")]
        if not fitting:
            accepted = ", ".join(sorted({k.algorithm for k in chosen}))
            raise _refused(f"the token's algorithm is not accepted (this key takes {accepted})")
        return fitting

    def _wait_for_keys(self, kid: object, now: float) -> None:
        """Raise :class:`DecisionPending` if a JWKS fetch may still bring ``kid``."""
        if self.jwks is None or not isinstance(kid, str):
            return
        if self._gave_up_at == now:
            raise _refused(NOT_FETCHED_IN_TIME)
        if self.jwks.want(now):
            raise DecisionPending(KEYS_PENDING)

    def _decode(self, token: str, key: VerificationKey) -> dict[str, Any]:
        options: Any = {
            "require": self._required,
            "verify_exp": False,
            "verify_nbf": False,
            "verify_iat": False,
            "verify_sub": False,
        }
        return jwt.decode(
            token,
            key.key,
            algorithms=[key.algorithm],
            audience=self.audience,
            issuer=self.issuer,
            options=options,
        )


def _refused(reason: str) -> RefusedError:
    return RefusedError(ErrorCode.UNAUTHORIZED, reason)


_REASONS: Final[tuple[tuple[type[jwt.PyJWTError], str], ...]] = (
    (jwt.InvalidSignatureError, "bad signature"),
    (jwt.InvalidAudienceError, "wrong audience"),
    (jwt.InvalidIssuerError, "wrong issuer"),
    (jwt.InvalidAlgorithmError, "the token's algorithm is not accepted"),
    (jwt.DecodeError, "malformed token"),
)


def _refusal(error: jwt.PyJWTError) -> RefusedError:
    if isinstance(error, jwt.MissingRequiredClaimError):
        return _refused(f"the token has no {error.claim!r} claim")
    for kind, reason in _REASONS:
        if isinstance(error, kind):
            return _refused(reason)
    return _refused("invalid token")


def _time_claim(claims: Mapping[str, Any], name: str) -> float:
    value = claims[name]
    if not isinstance(value, bool) and isinstance(value, int | float) and abs(value) < _LATEST_TIME:
        return float(value)
    raise _refused(f"the {name!r} claim must be a number of seconds")


def _patterns(claim: object, name: str) -> tuple[str, ...]:
    if not isinstance(claim, list) or not all(isinstance(p, str) for p in claim):
        raise _refused(f"the {name!r} claim must be a list of topic patterns")
    if len(claim) > MAX_PATTERNS:
        raise _refused(f"the {name!r} claim has over {MAX_PATTERNS} patterns")
    for pattern in claim:
        try:
            check_pattern(pattern)
        except ValueError as error:
            raise _refused(f"the {name!r} claim: {error}"[:200]) from None
    return tuple(claim)
