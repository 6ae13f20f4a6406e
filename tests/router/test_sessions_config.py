"""The ``[sessions]`` table: from TOML text and key files to a working session manager."""

from __future__ import annotations

import json
import shutil
import tomllib
from pathlib import Path
from typing import Any

import jwt
import msgspec
import pytest

from router.config import ConfigError, load_config
from router.core import AllowAllSessions, ClientInfo
from router.core.jwt_sessions import JwtSessions
from router.curve import read_public_key, write_key_pair
from router.sessions_config import SessionsSection, sessions_relative_to
from tests.tokens import NOW, SECRET, private_key, public_pem, token

CLIENT = ClientInfo(client_id="c", edge_id="e")
ENVIRON = {"SWITCHBOARD_JWT_SECRET": SECRET.decode()}


def section(text: str, base: Path | None = None) -> SessionsSection:
    """The ``[sessions]`` table of a TOML text, its paths relative to ``base`` as load_config does."""
    table = tomllib.loads(text).get("sessions", {})
    if base is not None:
        table = sessions_relative_to(base, table)
    return msgspec.convert(table, SessionsSection)


def jwt_sessions(text: str, base: Path | None = None) -> JwtSessions:
    manager = section(text, base).session_manager(ENVIRON)
    assert isinstance(manager, JwtSessions)
    return manager


def test_the_default_lets_everyone_in() -> None:
    assert isinstance(section("").session_manager(), AllowAllSessions)
    assert isinstance(section('[sessions]\nkind = "allow_all"').session_manager(), AllowAllSessions)


def test_pem_keys_and_a_secret_from_the_environment(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "issuer.pem").write_bytes(public_pem("ES256"))
    manager = jwt_sessions(
        """
        [sessions]
        kind = "jwt"
        issuer = "https://id.example"
        audience = "switchboard"
        leeway = 0
        topics_claim = "rooms"

        [[sessions.keys]]
        alg = "ES256"
        file = "keys/issuer.pem"
        kid = "ec"

        [[sessions.keys]]
        alg = "HS256"
        secret_env = "SWITCHBOARD_JWT_SECRET"
        kid = "shared"
        """,
        tmp_path,
    )
    assert [(k.algorithm, k.kid) for k in manager.keys] == [("ES256", "ec"), ("HS256", "shared")]
    assert (manager.issuer, manager.audience, manager.leeway, manager.topics_claim) == (
        "https://id.example",
        "switchboard",
        0,
        "rooms",
    )
    claims: dict[str, Any] = {"iss": "https://id.example", "aud": "switchboard", "rooms": ["/a"]}
    for algorithm, kid in [("ES256", "ec"), ("HS256", "shared")]:
        identity = manager.authenticate(CLIENT, token(algorithm, kid=kid, **claims), NOW)
        assert identity.allowed_patterns == ("/a",)


def test_a_jwks_file(tmp_path: Path) -> None:
    public = private_key("EdDSA").public_key()
    jwk = {**jwt.get_algorithm_by_name("EdDSA").to_jwk(public, as_dict=True), "kid": "ed"}
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    manager = jwt_sessions('[sessions]\nkind = "jwt"\njwks_file = "jwks.json"', tmp_path)
    assert manager.authenticate(CLIENT, token("EdDSA", kid="ed"), NOW).user == "alice"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('[sessions]\nkind = "jwt"', "needs keys, jwks_file or jwks_url"),
        ('[sessions]\njwks_file = "x.json"', "kind is 'allow_all'"),
        ('[sessions]\nkind = "ldap"', "Invalid enum value"),
        ('[sessions]\nkind = "jwt"\njwks_file = "x"\nleeway = -1', "leeway"),
        ('[sessions]\nkind = "jwt"\njwks_file = "x"\ntopics_claim = ""', "topics_claim"),
        ('[sessions]\nkind = "jwt"\njwks_file = "x"\nsecret = "inline"', "unknown field `secret`"),
        ('[sessions]\nkind = "jwt"\n[[sessions.keys]]\nalg = "HS256"\nsecret = "x"', "unknown field"),
        ('[sessions]\nkind = "jwt"\n[[sessions.keys]]\nalg = "HS256"\nfile = "k"', "secret_env"),
        ('[sessions]\nkind = "jwt"\n[[sessions.keys]]\nalg = "RS256"', "file, a PEM public key"),
        ('[sessions]\nkind = "jwt"\n[[sessions.keys]]\nalg = "none"\nfile = "k"', "Invalid enum value"),
    ],
)
def test_a_table_that_cannot_be_used(text: str, reason: str) -> None:
    with pytest.raises((ValueError, msgspec.ValidationError), match=reason):
        section(text)


@pytest.mark.parametrize(
    ("key", "environ", "reason"),
    [
        ('alg = "HS256"\nsecret_env = "NOT_SET"', {}, "NOT_SET .* is not set"),
        ('alg = "HS256"\nsecret_env = "SHORT"', {"SHORT": "abc"}, "at least 32 bytes"),
        ('alg = "RS256"\nfile = "missing.pem"', {}, "cannot read .*missing.pem"),
        ('alg = "RS256"\nfile = "ec.pem"', {}, "RSAPublicKey"),
    ],
)
def test_keys_that_cannot_be_used(tmp_path: Path, key: str, environ: dict[str, str], reason: str) -> None:
    (tmp_path / "ec.pem").write_bytes(public_pem("ES256"))
    table = section(f'[sessions]\nkind = "jwt"\n[[sessions.keys]]\n{key}', tmp_path)
    with pytest.raises(ValueError, match=reason):
        table.session_manager(environ)


def test_paths_are_relative_to_the_file_only_where_they_are_paths(tmp_path: Path) -> None:
    raw = {"kind": "jwt", "jwks_file": "a.json", "keys": [{"alg": "RS256", "file": "k.pem"}, "junk"]}
    assert sessions_relative_to(tmp_path, raw) == {
        "kind": "jwt",
        "jwks_file": str(tmp_path / "a.json"),
        "keys": [{"alg": "RS256", "file": str(tmp_path / "k.pem")}, "junk"],
    }
    assert sessions_relative_to(tmp_path, "not a table") == "not a table"


def test_the_router_configuration_reads_sessions(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "issuer.pem").write_bytes(public_pem("RS256"))
    (tmp_path / "router.toml").write_text(
        '[sessions]\nkind = "jwt"\n[[sessions.keys]]\nalg = "RS256"\nfile = "keys/issuer.pem"\n'
    )
    config = load_config(tmp_path / "router.toml")
    assert isinstance(config.sessions.session_manager(), JwtSessions)
    assert isinstance(load_config().sessions.session_manager(), AllowAllSessions)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('[sessions]\nkind = "jwt"\n[[sessions.keys]]\nalg = "RS256"\nfile = "nowhere.pem"', "cannot read"),
        ("sessions = 3", "sessions must be a table"),
        ('[sessions]\nkeys = "k"', "Expected `array`"),
    ],
)
def test_the_router_refuses_sessions_it_cannot_use(tmp_path: Path, text: str, reason: str) -> None:
    (tmp_path / "router.toml").write_text(text)
    with pytest.raises(ConfigError, match=reason):
        load_config(tmp_path / "router.toml")


# ---------------------------------------------------------------- the session service's Curve key

CURVE = '[security]\ncurve_secret_key_file = "keys/router.key_secret"\nedge_keys_dir = "allowed"\n'
EXTERNAL = '[sessions]\nkind = "external"\nendpoint = "tcp://127.0.0.1:7770"\n'
SERVICE_KEY = 'service_public_key_file = "keys/sessions.key"'


@pytest.fixture
def curve_files(tmp_path: Path) -> Path:
    for name in ("router", "sessions"):
        write_key_pair(tmp_path / "keys", name)
    (tmp_path / "allowed").mkdir()
    shutil.copy(tmp_path / "keys" / "sessions.key", tmp_path / "allowed")
    return tmp_path


def test_with_curve_on_the_service_key_is_read_relative_to_the_file(curve_files: Path) -> None:
    (curve_files / "router.toml").write_text(CURVE + EXTERNAL + SERVICE_KEY)
    config = load_config(curve_files / "router.toml")
    expected = read_public_key(curve_files / "keys" / "sessions.key")
    assert config.sessions.service_public_key(curve_on=True) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (CURVE + EXTERNAL, "service_public_key_file is required: with Curve on"),
        (CURVE + EXTERNAL + 'service_public_key_file = "keys/nowhere.key"', "nowhere.key: no such file"),
        (EXTERNAL + SERVICE_KEY, "needs Curve on"),
        ("[sessions]\n" + SERVICE_KEY, "goes with kind = 'external'"),
    ],
)
def test_a_session_service_key_that_does_not_fit_the_curve_setting(
    curve_files: Path, text: str, reason: str
) -> None:
    (curve_files / "router.toml").write_text(text)
    with pytest.raises(ConfigError, match=reason):
        load_config(curve_files / "router.toml")


def test_with_curve_off_an_external_service_needs_no_key(tmp_path: Path) -> None:
    (tmp_path / "router.toml").write_text(EXTERNAL)
    assert load_config(tmp_path / "router.toml").sessions.service_public_key(curve_on=False) is None


# ---------------------------------------------------------------- jwks_url

JWT_URL = '[sessions]\nkind = "jwt"\njwks_url = "{}"\n'


@pytest.mark.parametrize(
    "url",
    [
        "https://id.example.com/.well-known/jwks.json",
        "http://127.0.0.1:8080/jwks.json",
        "http://127.3.4.5/jwks",
        "http://localhost:9000/jwks",
        "http://[::1]:9000/jwks",
    ],
)
def test_a_jwks_url_over_https_or_to_loopback(url: str) -> None:
    manager = jwt_sessions(JWT_URL.format(url))
    assert manager.keys == ()
    assert manager.jwks is not None
    assert (manager.jwks.refresh, manager.jwks.cooldown) == (300.0, 10.0)


@pytest.mark.parametrize(
    "url",
    [
        "http://id.example.com/jwks.json",
        "http://10.0.0.5/jwks.json",
        "ftp://id.example.com/jwks.json",
        "file:///etc/jwks.json",
        "https:///jwks.json",
        "id.example.com/jwks.json",
        "https://id.example.com:99999/jwks.json",
    ],
)
def test_a_jwks_url_in_clear_or_of_another_scheme_is_refused(tmp_path: Path, url: str) -> None:
    (tmp_path / "router.toml").write_text(JWT_URL.format(url))
    with pytest.raises(ConfigError, match="jwks_url"):
        load_config(tmp_path / "router.toml")


def test_the_jwks_timings() -> None:
    text = JWT_URL.format("https://id.example") + "jwks_refresh = 60\njwks_cooldown = 2\njwks_timeout = 3\n"
    table = section(text)
    assert (table.jwks_refresh_interval, table.jwks_cooldown_interval, table.jwks_fetch_timeout) == (60, 2, 3)
    manager = table.session_manager()
    assert isinstance(manager, JwtSessions)
    assert manager.jwks is not None
    assert (manager.jwks.refresh, manager.jwks.cooldown) == (60, 2)


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ("jwks_refresh = 0.5", "jwks_refresh is from 1"),
        ("jwks_cooldown = 0", "jwks_cooldown is more than 0"),
        ("jwks_refresh = 5\njwks_cooldown = 6", "at most jwks_refresh"),
        ("jwks_timeout = 61", "jwks_timeout is more than 0 and at most 60"),
    ],
)
def test_jwks_timings_that_cannot_work(extra: str, reason: str) -> None:
    with pytest.raises((ValueError, msgspec.ValidationError), match=reason):
        section(JWT_URL.format("https://id.example") + extra)


def test_jwks_timings_go_with_a_url() -> None:
    with pytest.raises((ValueError, msgspec.ValidationError), match="go with jwks_url"):
        section('[sessions]\nkind = "jwt"\njwks_file = "x.json"\njwks_refresh = 60')
    with pytest.raises((ValueError, msgspec.ValidationError), match="kind is 'allow_all'"):
        section('[sessions]\njwks_url = "https://id.example"')
