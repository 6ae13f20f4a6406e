"""JwtSessions with real tokens: what it accepts, what it refuses and why."""

from __future__ import annotations

import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from router.core import ClientInfo, ErrorCode, RefusedError
from router.core.jwt_sessions import JwtSessions, VerificationKey, keys_from_jwks
from tests.tokens import (
    NOW,
    SECRET,
    claims,
    hand_signed,
    private_key,
    public_pem,
    token,
    token_with,
    verification_key,
)

CLIENT = ClientInfo(client_id="ws-1/1", edge_id="ws-1")
ASYMMETRIC = ["RS256", "ES256", "EdDSA"]


def sessions(*keys: VerificationKey, **options: Any) -> JwtSessions:
    return JwtSessions(keys or [verification_key("RS256")], **options)


def refusal(manager: JwtSessions, presented: str | None, now: float = NOW) -> str:
    """The reason ``manager`` refuses ``presented``; it must be ``unauthorized`` and never echo it."""
    with pytest.raises(RefusedError) as refused:
        manager.authenticate(CLIENT, presented, now)
    assert refused.value.code is ErrorCode.UNAUTHORIZED
    assert not presented or presented not in str(refused.value)
    return refused.value.detail


# ---------------------------------------------------------------- accepted


@pytest.mark.parametrize("algorithm", ["HS256", *ASYMMETRIC])
def test_a_valid_token_gives_its_user_topics_and_session_end(algorithm: str) -> None:
    manager = sessions(verification_key(algorithm), leeway=5.0)
    identity = manager.authenticate(CLIENT, token(algorithm), NOW)
    assert identity.user == "alice"
    assert identity.allowed_patterns == ("/video/*", "/telemetry/**")
    assert identity.expires_at == NOW + 600 + 5.0


def test_nbf_and_iat_are_optional() -> None:
    identity = sessions().authenticate(CLIENT, token(nbf=None, iat=None), NOW)
    assert identity.user == "alice"


def test_leeway_accepts_a_token_just_past_exp_or_just_before_nbf() -> None:
    manager = sessions(leeway=10.0)
    assert manager.authenticate(CLIENT, token(exp=int(NOW) - 5), NOW).expires_at == NOW + 5
    assert manager.authenticate(CLIENT, token(nbf=int(NOW) + 5), NOW).user == "alice"


def test_issuer_and_audience_when_configured() -> None:
    manager = sessions(issuer="https://id.example", audience="switchboard")
    good = token(iss="https://id.example", aud=["other", "switchboard"])
    assert manager.authenticate(CLIENT, good, NOW).user == "alice"


def test_topic_patterns_are_enforced() -> None:
    manager = sessions()
    identity = manager.authenticate(CLIENT, token(topics=["/video/*", "/telemetry/**", "/alerts"]), NOW)
    allowed = ["/video/main", "/telemetry/gps", "/telemetry/a/b", "/alerts"]
    forbidden = ["/video", "/video/main/thumb", "/telemetry", "/alerts/x", "/audio/main"]
    assert all(manager.authorize(identity, topic) for topic in allowed)
    assert not any(manager.authorize(identity, topic) for topic in forbidden)


def test_an_empty_topics_claim_allows_nothing() -> None:
    manager = sessions()
    identity = manager.authenticate(CLIENT, token(topics=[]), NOW)
    assert not manager.authorize(identity, "/video/main")


def test_another_topics_claim_can_be_configured() -> None:
    manager = sessions(topics_claim="switchboard/topics")
    identity = manager.authenticate(CLIENT, token_with({"switchboard/topics": ["/a"]}), NOW)
    assert identity.allowed_patterns == ("/a",)


# ---------------------------------------------------------------- refused


def test_no_token() -> None:
    assert refusal(sessions(), None) == "a token is required"
    assert refusal(sessions(), "") == "a token is required"


def test_garbage() -> None:
    assert refusal(sessions(), "not.a.jwt") == "malformed token"
    assert refusal(sessions(), "x" * 100) == "malformed token"


def test_expired() -> None:
    assert refusal(sessions(leeway=0), token(exp=int(NOW) - 1)) == "token expired"
    assert refusal(sessions(leeway=0), token(exp=int(NOW))) == "token expired"
    assert refusal(sessions(leeway=5), token(exp=int(NOW) - 5)) == "token expired"


def test_not_yet_valid() -> None:
    assert refusal(sessions(leeway=0), token(nbf=int(NOW) + 1)) == "token not yet valid"
    assert refusal(sessions(leeway=5), token(nbf=int(NOW) + 6)) == "token not yet valid"


@pytest.mark.parametrize("algorithm", ASYMMETRIC)
def test_signed_by_another_key(algorithm: str) -> None:
    manager = sessions(verification_key(algorithm))
    assert refusal(manager, token(algorithm, name="intruder")) == "bad signature"


def test_hs256_with_another_secret() -> None:
    manager = sessions(VerificationKey.from_secret(b"another secret of thirty-two bytes or more"))
    assert refusal(manager, token("HS256")) == "bad signature"


def test_a_tampered_payload() -> None:
    header, _, signature = token().split(".")
    forged = hand_signed({}, claims(sub="mallory"), None).split(".")[1]
    assert refusal(sessions(), f"{header}.{forged}.{signature}") == "bad signature"


def test_wrong_audience() -> None:
    manager = sessions(audience="switchboard")
    assert refusal(manager, token(aud="another-service")) == "wrong audience"
    assert refusal(manager, token()) == "the token has no 'aud' claim"


def test_an_audience_nobody_configured_is_refused() -> None:
    assert refusal(sessions(), token(aud="switchboard")) == "wrong audience"


def test_wrong_issuer() -> None:
    manager = sessions(issuer="https://id.example")
    assert refusal(manager, token(iss="https://evil.example")) == "wrong issuer"
    assert refusal(manager, token()) == "the token has no 'iss' claim"


def test_alg_none() -> None:
    unsigned = jwt.encode(claims(), "", algorithm="none")
    assert "not accepted" in refusal(sessions(), unsigned)
    assert "not accepted" in refusal(sessions(verification_key("HS256")), unsigned)
    assert "not accepted" in refusal(sessions(), hand_signed({"alg": "None"}, claims(), None))


def test_hs256_signed_with_the_rs256_public_key_is_refused() -> None:
    """The classic confusion: the attacker knows the public key and uses it as an HMAC secret."""
    forged = hand_signed({"alg": "HS256", "typ": "JWT"}, claims(), public_pem("RS256"))
    assert "not accepted" in refusal(sessions(verification_key("RS256")), forged)
    both = sessions(verification_key("RS256"), verification_key("HS256"))
    assert refusal(both, forged) == "bad signature"


def test_a_token_of_another_algorithm_than_its_key() -> None:
    assert "not accepted" in refusal(sessions(verification_key("ES256")), token("RS256"))


@pytest.mark.parametrize("claim", ["sub", "exp", "topics"])
def test_a_missing_claim(claim: str) -> None:
    assert refusal(sessions(), token_with({claim: None})) == f"the token has no {claim!r} claim"


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"sub": ""}, "the 'sub' claim must be a non-empty string"),
        ({"sub": 7}, "the 'sub' claim must be a non-empty string"),
        ({"exp": "tomorrow"}, "the 'exp' claim must be a number of seconds"),
        ({"exp": True}, "the 'exp' claim must be a number of seconds"),
        ({"exp": 10**30}, "the 'exp' claim must be a number of seconds"),
        ({"nbf": "now"}, "the 'nbf' claim must be a number of seconds"),
        ({"topics": "/video/*"}, "the 'topics' claim must be a list of topic patterns"),
        ({"topics": ["/a", 3]}, "the 'topics' claim must be a list of topic patterns"),
        ({"topics": ["/a/**/b"]}, "the 'topics' claim: pattern '/a/**/b': '**' may only be the last segment"),
        ({"topics": ["video"]}, "the 'topics' claim: pattern 'video' must start with '/'"),
    ],
)
def test_a_malformed_claim(changes: dict[str, Any], reason: str) -> None:
    assert refusal(sessions(), token_with(changes)) == reason


def test_an_infinite_exp_never_makes_an_endless_session() -> None:
    forged = hand_signed({"alg": "HS256"}, {**claims(), "exp": float("inf")}, SECRET)
    assert (
        refusal(sessions(verification_key("HS256")), forged) == "the 'exp' claim must be a number of seconds"
    )


# ---------------------------------------------------------------- key ids


def test_kid_selects_the_key() -> None:
    manager = sessions(verification_key("RS256", "one", kid="k1"), verification_key("RS256", "two", kid="k2"))
    assert manager.authenticate(CLIENT, token("RS256", "two", kid="k2"), NOW).user == "alice"
    assert refusal(manager, token("RS256", "one", kid="k2")) == "bad signature"


def test_an_unknown_kid() -> None:
    manager = sessions(verification_key("RS256", kid="k1"))
    assert refusal(manager, token(kid="k9")) == "unknown key id"
    assert refusal(manager, token()) == "unknown key id"


def test_a_key_without_kid_takes_tokens_with_any_kid() -> None:
    manager = sessions(verification_key("RS256"))
    assert manager.authenticate(CLIENT, token(kid="whatever"), NOW).user == "alice"


def test_without_kid_every_key_of_the_algorithm_is_tried() -> None:
    manager = sessions(verification_key("RS256", "one"), verification_key("RS256", "two"))
    assert manager.authenticate(CLIENT, token("RS256", "two"), NOW).user == "alice"


# ---------------------------------------------------------------- configuration


def test_sessions_need_keys_and_distinct_kids() -> None:
    with pytest.raises(ValueError, match="at least one key"):
        JwtSessions([])
    with pytest.raises(ValueError, match="same kid"):
        sessions(verification_key("RS256", "one", kid="k"), verification_key("ES256", kid="k"))
    with pytest.raises(ValueError, match="leeway"):
        sessions(leeway=-1)


def test_hmac_secrets_must_be_long_and_not_pem() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        VerificationKey.from_secret(b"short")
    with pytest.raises(ValueError, match="PEM"):
        VerificationKey.from_secret(public_pem("RS256"))


def test_pem_keys_must_fit_their_algorithm() -> None:
    with pytest.raises(ValueError, match="RSAPublicKey"):
        VerificationKey.from_pem("RS256", public_pem("ES256"))
    with pytest.raises(ValueError, match="no public key"):
        VerificationKey.from_pem("HS256", public_pem("RS256"))
    with pytest.raises(ValueError, match="no public key"):
        VerificationKey.from_pem("RS384", public_pem("RS256"))
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key()
    with pytest.raises(ValueError, match="P-256"):
        VerificationKey.from_public_key("ES256", p384)
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    with pytest.raises(ValueError, match="2048 bits"):
        VerificationKey.from_public_key("RS256", small)


def test_a_private_key_is_not_a_verification_key() -> None:
    pem = private_key("RS256").private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(ValueError, match="PEM public key"):
        VerificationKey.from_pem("RS256", pem)


# ---------------------------------------------------------------- JWKS


def jwk(algorithm: str, name: str = "main", **fields: Any) -> dict[str, Any]:
    """The public half of a test key as a JWK, with ``fields`` added."""
    public = private_key(algorithm, name).public_key()
    return {**jwt.get_algorithm_by_name(algorithm).to_jwk(public, as_dict=True), **fields}


def test_jwks_keys_verify_by_kid() -> None:
    document = {
        "keys": [
            jwk("RS256", kid="rsa-1", alg="RS256", use="sig"),
            jwk("ES256", kid="ec-1"),
            jwk("EdDSA", kid="ed-1"),
            jwk("RS256", "intruder", kid="enc-1", use="enc"),
        ]
    }
    keys = keys_from_jwks(json.dumps(document))
    assert [(k.algorithm, k.kid) for k in keys] == [("RS256", "rsa-1"), ("ES256", "ec-1"), ("EdDSA", "ed-1")]
    manager = JwtSessions(keys)
    for algorithm, kid in [("RS256", "rsa-1"), ("ES256", "ec-1"), ("EdDSA", "ed-1")]:
        assert manager.authenticate(CLIENT, token(algorithm, kid=kid), NOW).user == "alice"
    assert "not accepted" in refusal(manager, token("ES256", kid="rsa-1"))
    assert refusal(manager, token("RS256", "intruder", kid="enc-1")) == "unknown key id"


def test_jwks_hs256_key() -> None:
    oct_key = jwt.get_algorithm_by_name("HS256").to_jwk(SECRET, as_dict=True)
    keys = keys_from_jwks(json.dumps({"keys": [{**oct_key, "kid": "s1"}]}))
    assert JwtSessions(keys).authenticate(CLIENT, token("HS256", kid="s1"), NOW).user == "alice"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{", "JSON"),
        ("[]", '"keys" array'),
        ('{"keys": []}', "JWKS"),
        ('{"keys": [{"kty": "nope"}]}', "JWKS"),
    ],
)
def test_bad_jwks(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        keys_from_jwks(text)


def test_a_jwks_key_of_another_algorithm_is_an_error() -> None:
    with pytest.raises(ValueError, match="RS384"):
        keys_from_jwks(json.dumps({"keys": [jwk("RS256", kid="r", alg="RS384")]}))
