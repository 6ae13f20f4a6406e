"""load_config: defaults, a TOML file, overrides, and every kind of mistake refused as ConfigError."""

from __future__ import annotations

from pathlib import Path
from textwrap import dedent

import pytest

from router.config import (
    DEFAULT_CONTROL,
    DEFAULT_PULL,
    DEFAULT_XPUB,
    DEFAULT_XSUB,
    ConfigError,
    RouterConfig,
    load_config,
)
from router.core import DeliveryPolicy, ErrorCode, HistoryLimits, Limits, RefusedError
from router.curve import read_public_key, write_key_pair

FULL = """
[router]
pull = "tcp://0.0.0.0:9000"
xpub = "ipc:///tmp/switchboard-xpub"
heartbeat_interval = 0.5
heartbeat_timeout = 4.0
max_batch = 50

[limits]
max_clients = 10
max_payload_bytes = 1024

[topics]
allow_undeclared = false

[[topics.declare]]
pattern = "/video/**"
content_type = "video/h264"
max_subscribers = 3
policy = { kind = "latest", priority = 2, queue_max_messages = 4 }

[[topics.declare]]
pattern = "/events"
description = "things that happened"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "router.toml"
    path.write_text(dedent(text), encoding="utf-8")
    return path


def test_defaults_without_a_file() -> None:
    config = load_config()
    assert config == RouterConfig()
    router = config.router
    assert (router.pull, router.xsub, router.xpub, router.control) == (
        DEFAULT_PULL,
        DEFAULT_XSUB,
        DEFAULT_XPUB,
        DEFAULT_CONTROL,
    )
    assert config.limits == Limits()
    assert router.edge_timeout == 5 * router.heartbeat_interval
    assert config.registry().resolve("/any/topic").policy == DeliveryPolicy()


def test_an_empty_file_is_the_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "")) == RouterConfig()


def test_a_full_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, FULL))
    assert config.router.pull == "tcp://0.0.0.0:9000"
    assert config.router.xpub == "ipc:///tmp/switchboard-xpub"
    assert config.router.xsub == DEFAULT_XSUB
    assert config.router.max_batch == 50
    assert config.router.edge_timeout == 4.0
    assert config.limits == Limits(max_clients=10, max_payload_bytes=1024)
    registry = config.registry()
    video = registry.resolve("/video/main")
    assert video.policy == DeliveryPolicy(kind="latest", priority=2, queue_max_messages=4)
    assert (video.content_type, video.max_subscribers) == ("video/h264", 3)
    assert registry.resolve("/events").description == "things that happened"
    with pytest.raises(RefusedError) as refused:
        registry.resolve("/audio")
    assert refused.value.code is ErrorCode.UNKNOWN_TOPIC


def test_overrides_win_over_the_file_and_none_means_not_given(tmp_path: Path) -> None:
    path = write(tmp_path, FULL)
    config = load_config(path, {"pull": "tcp://127.0.0.1:1", "xpub": None, "heartbeat_interval": 2.0})
    assert config.router.pull == "tcp://127.0.0.1:1"
    assert config.router.xpub == "ipc:///tmp/switchboard-xpub"
    assert config.router.heartbeat_interval == 2.0
    assert config.limits.max_clients == 10


def test_history_limits_and_their_defaults_for_reliable_topics(tmp_path: Path) -> None:
    text = (
        "[limits]\nmax_history_bytes = 1000\ndefault_history_messages = 7\ndefault_history_age = 9.5\n"
        "[[topics.declare]]\npattern = '/alerts'\npolicy = { kind = 'reliable', history_max_bytes = 50 }\n"
        "[[topics.declare]]\npattern = '/video'\npolicy = { kind = 'latest', history_max_messages = 5 }\n"
    )
    config = load_config(write(tmp_path, text))
    assert config.limits.max_history_bytes == 1000
    registry = config.registry()
    assert config.limits.history_limits(registry.resolve("/alerts").policy) == HistoryLimits(7, 50, 9.5)
    assert config.limits.history_limits(registry.resolve("/video").policy) is None


def test_a_policy_table_accepts_the_ingest_rate_cap(tmp_path: Path) -> None:
    text = """
    [[topics.declare]]
    pattern = "/sensors/**"

    [topics.declare.policy]
    max_rate = 10
    ingest_max_rate = 50
    """
    policy = load_config(write(tmp_path, text)).registry().resolve("/sensors/a").policy
    assert policy == DeliveryPolicy(max_rate=10.0, ingest_max_rate=50.0)
    assert DeliveryPolicy().ingest_max_rate is None


def test_overrides_without_a_file() -> None:
    assert load_config(None, {"control": "tcp://127.0.0.1:2"}).router.control == "tcp://127.0.0.1:2"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("[routr]\npull = 'x'\n", "routr"),
        ("stray = 1\n", "stray"),
        ("[router]\npul = 'x'\n", "pul"),
        ("[limits]\nmax_client = 3\n", "max_client"),
        ("[topics]\nalow_undeclared = false\n", "alow_undeclared"),
        ("[[topics.declare]]\npattern = '/a'\nmax_subscriber = 1\n", "max_subscriber"),
        ("[[topics.declare]]\npattern = '/a'\npolicy = { knd = 'latest' }\n", "knd"),
        ("[[topics.declare]]\npattern = '/a'\npolicy = { kind = 'fastest' }\n", "fastest"),
        ("[[topics.declare]]\npattern = '/a'\npolicy = { queue_max_messages = 0 }\n", "queue"),
        ("[[topics.declare]]\npattern = '/a'\npolicy = { ingest_max_rate = 0 }\n", "ingest_max_rate"),
        ("[[topics.declare]]\npattern = '/a'\npolicy = { ingest_max_rate = -5.0 }\n", "ingest_max_rate"),
        ("[[topics.declare]]\npattern = '/a'\npolicy = { ingest_max_rate = nan }\n", "ingest_max_rate"),
        ("[[topics.declare]]\npattern = '/a'\npolicy = { ingest_max_rate = 'fast' }\n", "ingest_max_rate"),
        ("[[topics.declare]]\npattern = '/a'\npolicy = { ingest_rate = 5 }\n", "ingest_rate"),
        ("[[topics.declare]]\npattern = '/a//b'\n", "pattern"),
        ("[[topics.declare]]\ncontent_type = 'text/plain'\n", "pattern"),
        ("[router]\nheartbeat_interval = 0\n", "heartbeat_interval"),
        ("[router]\nheartbeat_interval = 2.0\nheartbeat_timeout = 1.0\n", "heartbeat_timeout"),
        ("[router]\npull = 7750\n", "pull"),
        ("[limits]\nmax_clients = 'many'\n", "max_clients"),
        ("[limits]\nmax_history_bytes = 0\n", "history limits"),
        ("[limits]\ndefault_history_messages = 0\n", "history limits"),
        ("[limits]\ndefault_history_age = 0.0\n", "default_history_age"),
        ("[router\n", r"router\.toml"),
    ],
)
def test_mistakes_in_the_file_are_config_errors(tmp_path: Path, text: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        load_config(write(tmp_path, text))


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("[router]\ningest_hwm = 0\n", "hwm"),
        ("[router]\nmax_batch = 0\n", "max_batch"),
        ("router = 1\n", "router"),
        ("limits = 1\n", "limits"),
        ("topics = [1]\n", "topics"),
        ("router = 'tcp://x'\n", "router"),
        ("[[topics.declare]]\npattern = '/a'\npolicy = 5\n", "policy"),
        ("[topics]\nallow_undeclared = 'false'\n", "allow_undeclared"),
        ("[topics]\ndeclare = 'everything'\n", "declare"),
    ],
)
def test_values_of_the_wrong_shape_are_config_errors(tmp_path: Path, text: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        load_config(write(tmp_path, text))


def test_unknown_override_keys_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="bind"):
        load_config(None, {"bind": "tcp://x"})


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.toml"):
        load_config(tmp_path / "missing.toml")


def test_a_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes("[router]\npull = 'caf\u00e9'\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.toml"):
        load_config(path)


def test_a_utf8_file_reads_the_same_whatever_the_locale(tmp_path: Path) -> None:
    path = write(tmp_path, "[[topics.declare]]\npattern = '/caf\u00e9'\ndescription = '\u65e5\u672c'\n")
    assert load_config(path).registry().resolve("/caf\u00e9").description == "\u65e5\u672c"


# ---------------------------------------------------------------- [security]


def curve_files(tmp_path: Path) -> tuple[Path, Path]:
    """A router key pair in ``tmp_path/keys`` and an allow-list with one key in ``tmp_path/allowed``."""
    _, secret = write_key_pair(tmp_path / "keys", "router")
    public, _ = write_key_pair(tmp_path / "keys", "edge")
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / public.name).write_bytes(public.read_bytes())
    return secret, allowed


def test_curve_is_off_by_default() -> None:
    assert load_config().security.curve_server() is None


def security(secret: str, allowed: str) -> str:
    return f'[security]\ncurve_secret_key_file = "{secret}"\nedge_keys_dir = "{allowed}"\n'


def test_security_paths_in_a_file_are_relative_to_the_file(tmp_path: Path) -> None:
    secret, allowed = curve_files(tmp_path)
    config = load_config(write(tmp_path, security("keys/router.key_secret", "allowed")))
    assert config.security.curve_secret_key_file == str(secret)
    assert config.security.edge_keys_dir == str(allowed)
    server = config.security.curve_server()
    assert server is not None
    assert server.public_key == read_public_key(tmp_path / "keys" / "router.key")


def test_security_overrides_set_the_security_table(tmp_path: Path) -> None:
    secret, allowed = curve_files(tmp_path)
    overrides = {"curve_secret_key_file": str(secret), "producer_keys_dir": str(allowed)}
    config = load_config(None, {**overrides, "pull": None})
    assert config.security.producer_keys_dir == str(allowed)
    assert config.router.pull == DEFAULT_PULL


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ('[security]\ncurve_secret_key_file = "keys/router.key_secret"\n', "at least one allow-list"),
        ('[security]\nobserver_keys_dir = "allowed"\n', "without curve_secret_key_file"),
        ('[security]\ncurve_allowed_keys_dir = "allowed"\n', "one allow-list per role"),
        (security("keys/nope.key_secret", "allowed"), r"nope\.key_secret: no such file"),
        (security("keys/router.key", "allowed"), "no secret key"),
        (security("keys/router.key_secret", "nope"), "not a directory"),
        (security("keys/router.key_secret", "empty"), "holds no public key"),
        ("[security]\ncurve_secret_key_file = 1\n", "curve_secret_key_file"),
        ("[security]\ncurve = true\n", "curve"),
        ("security = 1\n", r"\[security\]"),
    ],
)
def test_unusable_security_settings_are_config_errors(tmp_path: Path, text: str, why: str) -> None:
    curve_files(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=why):
        load_config(write(tmp_path, text))


def test_the_example_config_loads() -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "router.toml"
    config = load_config(example)
    assert config.admin.listen == "127.0.0.1:7760"
    assert config.router.metrics == "127.0.0.1:7761"
    assert config.registry().resolve("/demo/camera").policy.kind == "latest"


def test_the_metrics_address_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="HOST:PORT"):
        load_config(write(tmp_path, '[router]\nmetrics = "7761"\n'))
    assert load_config(None, {"metrics": "[::1]:0"}).router.metrics == "[::1]:0"
    assert load_config().router.metrics is None


def test_the_http_listeners_bounds(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            "[router]\nmetrics_max_connections = 10\nmetrics_max_connections_per_address = 2\n"
            "metrics_header_timeout = 1.5\n"
            "[admin]\nmax_connections_per_address = 4\nheader_timeout = 2.0\nmax_body_bytes = 100\n",
        )
    )
    metrics = config.router.metrics_limits()
    assert (metrics.max_connections, metrics.max_connections_per_address, metrics.header_timeout) == (
        10,
        2,
        1.5,
    )
    admin = config.admin.http_limits()
    assert (admin.max_connections_per_address, admin.header_timeout, admin.max_body_bytes) == (4, 2.0, 100)
    assert admin.max_connections == load_config().admin.http_limits().max_connections
    for bad in ("[admin]\nheader_timeout = 0\n", "[router]\nmetrics_max_connections_per_address = 0\n"):
        with pytest.raises(ConfigError, match="must be"):
            load_config(write(tmp_path, bad))
