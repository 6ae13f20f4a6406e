"""Real keys and tokens for the JWT tests: key pairs made at test time, tokens signed by PyJWT."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from router.core.jwt_sessions import VerificationKey

NOW = 1_750_000_000.0
"""The tests' Unix time."""
SECRET = b"0123456789abcdef0123456789abcdef-test-secret"

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def private_key(algorithm: str, name: str = "main") -> PrivateKey:
    """One key pair per algorithm and name, made once per test run."""
    return _private_key(algorithm, name)


@functools.cache
def _private_key(algorithm: str, name: str) -> PrivateKey:
    if algorithm == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if algorithm == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(algorithm)


def public_pem(algorithm: str, name: str = "main") -> bytes:
    return (
        private_key(algorithm, name)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def verification_key(algorithm: str, name: str = "main", kid: str | None = None) -> VerificationKey:
    if algorithm == "HS256":
        return VerificationKey.from_secret(SECRET, kid)
    return VerificationKey.from_pem(algorithm, public_pem(algorithm, name), kid)


def claims(**changes: Any) -> dict[str, Any]:
    """Valid claims at :data:`NOW`; a change to ``None`` leaves the claim out."""
    base: dict[str, Any] = {
        "sub": "alice",
        "exp": int(NOW) + 600,
        "nbf": int(NOW) - 60,
        "iat": int(NOW) - 60,
        "topics": ["/video/*", "/telemetry/**"],
    }
    base.update(changes)
    return {key: value for key, value in base.items() if value is not None}


def token(algorithm: str = "RS256", name: str = "main", kid: str | None = None, **changes: Any) -> str:
    """A token signed with the named key of ``algorithm`` (HS256: :data:`SECRET`)."""
    key: Any = SECRET if algorithm == "HS256" else private_key(algorithm, name)
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(claims(**changes), key, algorithm=algorithm, headers=headers)


def token_with(changes: dict[str, Any], algorithm: str = "RS256") -> str:
    """:func:`token` for claims whose names are not Python identifiers, or come as a dict."""
    return token(algorithm, **changes)


def hand_signed(header: dict[str, Any], payload: dict[str, Any], secret: bytes | None) -> str:
    """A token built byte by byte: HMAC-SHA256 over it with ``secret``, or no signature at all.
    PyJWT refuses to make the forgeries this is for."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    signature = b"" if secret is None else hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
