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
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt.algorithms import get_default_algorithms

from router.core.clients import ClientInfo
from router.core.errors import ErrorCode, RefusedError
from router.core.sessions import Identity
from router.core.topics import check_pattern, pattern_matches

__all__ = ["ALGORITHMS", "JwtSessions", "VerificationKey", "keys_from_jwks"]

ALGORITHMS: Final = ("HS256", "RS256", "ES256", "EdDSA")
MIN_HMAC_SECRET_BYTES: Final = 32
MIN_RSA_BITS: Final = 2048
MAX_PATTERNS: Final = 1024
"""The most topic patterns one token may carry."""
_LATEST_TIME: Final = 1e13
"""Bounds ``exp`` and ``nbf``, which also refuses infinities and NaN."""

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


def _from_jwk(jwk: jwt.PyJWK) -> VerificationKey:
    algorithm = jwk.algorithm_name
    if algorithm not in ALGORITHMS:
        raise ValueError(f"JWKS key {jwk.key_id!r}: algorithm {algorithm!r} is not one of {ALGORITHMS}")
    if algorithm == "HS256":
        return VerificationKey.from_secret(jwk.key, jwk.key_id)
    return VerificationKey.from_public_key(algorithm, jwk.key, jwk.key_id)


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
    ) -> None:
        """``leeway``: seconds of clock difference with the token issuer that ``exp`` and ``nbf``
        tolerate. ``topics_claim``: the claim that lists the topic patterns the user may read."""
        self.keys = tuple(keys)
        if not self.keys:
            raise ValueError("JWT sessions need at least one key")
        kids = [k.kid for k in self.keys if k.kid is not None]
        if len(kids) != len(set(kids)):
            raise ValueError("two keys have the same kid")
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
        claims = self._verified_claims(token)
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

    # ------------------------------------------------------------ verification

    def _verified_claims(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _refused("malformed token") from None
        candidates = self._candidates(header)
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

    def _candidates(self, header: dict[str, Any]) -> list[VerificationKey]:
        """The keys that may verify a token with this (unverified) header, by ``kid`` then
        algorithm. The algorithm is only a filter: each key verifies with its own."""
        kid = header.get("kid")
        chosen = [k for k in self.keys if k.kid is not None and k.kid == kid]
        if not chosen:
            chosen = [k for k in self.keys if k.kid is None]
        if not chosen:
            raise _refused("unknown key id")
        fitting = [k for k in chosen if k.algorithm == header.get("alg")]
        if not fitting:
            accepted = ", ".join(sorted({k.algorithm for k in chosen}))
            raise _refused(f"the token's algorithm is not accepted (this key takes {accepted})")
        return fitting

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
