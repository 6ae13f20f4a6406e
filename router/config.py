"""The router's configuration: defaults, a TOML file, then command-line overrides.

Every table and key is described in ``docs/operations.md``; an unknown key is an error, so a typo
never silently falls back to a default.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import msgspec

from router.admin.config import AdminSection
from router.cluster.config import ClusterSection
from router.core.manager import Limits
from router.core.policy import DeliveryPolicy
from router.core.topics import TopicRegistry
from router.curve import CurveServer, Role
from router.http_limits import HttpLimits, parse_address
from router.sessions_config import SessionsSection, sessions_relative_to

DEFAULT_PULL = "tcp://127.0.0.1:7750"
DEFAULT_XSUB = "tcp://127.0.0.1:7751"
DEFAULT_XPUB = "tcp://127.0.0.1:7752"
DEFAULT_CONTROL = "tcp://127.0.0.1:7753"
DEFAULT_EVENTS = "tcp://127.0.0.1:7754"
"""Where ``[events] publish`` usually goes; the events socket is off unless it is set."""
METRICS_LIMITS = HttpLimits(max_connections=64, max_connections_per_address=8, max_body_bytes=0)
"""The bounds of the ``/metrics`` listener; ``[router]`` sets its connection caps and header deadline."""
TABLES = {"router", "security", "sessions", "limits", "admin", "topics", "events", "cluster"}


class RouterSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Sockets and timing of the router process."""

    pull: str = DEFAULT_PULL
    xsub: str = DEFAULT_XSUB
    xpub: str = DEFAULT_XPUB
    control: str = DEFAULT_CONTROL
    heartbeat_interval: float = 1.0
    heartbeat_timeout: float | None = None
    ingest_hwm: int = 10_000
    fanout_hwm: int = 10_000
    max_batch: int = 1_000
    metrics: str | None = None
    """``HOST:PORT`` of the Prometheus ``/metrics`` listener; ``None``: no listener."""
    demand: str | None = None
    """Where the XPUB socket that tells producers each topic's demand binds (``docs/protocol.md``,
    1.5); ``None`` or ``""``: no demand socket."""
    metrics_max_connections: int = METRICS_LIMITS.max_connections
    metrics_max_connections_per_address: int = METRICS_LIMITS.max_connections_per_address
    metrics_header_timeout: float = METRICS_LIMITS.header_timeout

    def __post_init__(self) -> None:
        if self.heartbeat_interval <= 0:
            raise ValueError("heartbeat_interval must be positive")
        if self.heartbeat_timeout is not None and self.heartbeat_timeout <= self.heartbeat_interval:
            raise ValueError("heartbeat_timeout must be longer than heartbeat_interval")
        if min(self.ingest_hwm, self.fanout_hwm, self.max_batch) < 1:
            raise ValueError("ingest_hwm, fanout_hwm and max_batch must be at least 1")
        if self.metrics is not None:
            parse_address(self.metrics, "[router] metrics =")
        self.metrics_limits()

    def metrics_limits(self) -> HttpLimits:
        """The bounds of the ``/metrics`` listener. Raises ``ValueError``."""
        return HttpLimits(
            max_connections=self.metrics_max_connections,
            max_connections_per_address=self.metrics_max_connections_per_address,
            header_timeout=self.metrics_header_timeout,
            body_timeout=METRICS_LIMITS.body_timeout,
            max_header_bytes=METRICS_LIMITS.max_header_bytes,
            max_body_bytes=METRICS_LIMITS.max_body_bytes,
        )

    @property
    def edge_timeout(self) -> float:
        """How long an edge may stay silent: ``heartbeat_timeout``, else 5 heartbeat intervals."""
        return self.heartbeat_timeout or 5 * self.heartbeat_interval


class SecuritySection(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """CurveZMQ on every router socket: off unless ``curve_secret_key_file`` is set
    (``docs/security.md``), with one allow-list directory per role. Relative paths in a file are
    relative to that file."""

    curve_secret_key_file: str | None = None
    producer_keys_dir: str | None = None
    edge_keys_dir: str | None = None
    observer_keys_dir: str | None = None
    curve_allowed_keys_dir: str | None = None
    """No longer read: one list for every role let a producer's key act as an edge."""

    def __post_init__(self) -> None:
        if self.curve_allowed_keys_dir is not None:
            raise ValueError(
                "curve_allowed_keys_dir admitted every key in every role; name one allow-list per role"
                " instead: producer_keys_dir, edge_keys_dir, observer_keys_dir (docs/security.md, Roles)"
            )
        if self.curve_secret_key_file is None and self.allowed_dirs():
            raise ValueError("an allow-list without curve_secret_key_file: set it to turn Curve on")
        if self.curve_secret_key_file is not None and not self.allowed_dirs():
            raise ValueError(
                "curve_secret_key_file needs at least one allow-list: producer_keys_dir, edge_keys_dir"
                " or observer_keys_dir"
            )

    def allowed_dirs(self) -> dict[Role, Path]:
        named = {
            Role.PRODUCER: self.producer_keys_dir,
            Role.EDGE: self.edge_keys_dir,
            Role.OBSERVER: self.observer_keys_dir,
        }
        return {role: Path(path) for role, path in named.items() if path is not None}

    def curve_server(self) -> CurveServer | None:
        """The router's keys and allow-lists, read now; ``None`` when Curve is off."""
        if self.curve_secret_key_file is None:
            return None
        return CurveServer(Path(self.curve_secret_key_file), self.allowed_dirs())


class EventsSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``publish``: where the PUB socket of events binds (``docs/protocol.md``, section 5);
    ``None`` or ``""``: no events socket."""

    publish: str | None = None


class RouterConfig(msgspec.Struct, frozen=True, kw_only=True):
    router: RouterSection = RouterSection()
    security: SecuritySection = SecuritySection()
    sessions: SessionsSection = SessionsSection()
    limits: Limits = Limits()
    topics: dict[str, Any] = {}
    admin: AdminSection = AdminSection()
    events: EventsSection = EventsSection()
    cluster: ClusterSection = ClusterSection()

    def registry(self) -> TopicRegistry:
        return TopicRegistry.from_config(self.topics)


class ConfigError(ValueError):
    """A configuration file or override that cannot be used, with the reason."""


def load_config(path: Path | None = None, overrides: dict[str, Any] | None = None) -> RouterConfig:
    """Read ``path`` (if any), apply ``overrides`` to the ``[router]`` and ``[security]`` tables,
    and check it all, key files included."""
    raw = _read_file(path) if path is not None else {}
    unknown = set(raw) - TABLES
    if unknown:
        raise ConfigError(f"unknown table(s): {', '.join(sorted(unknown))}")
    for table in ("router", "security", "sessions", "events", "cluster"):
        if not isinstance(raw.get(table, {}), dict):
            raise ConfigError(f"{table} must be a table: [{table}]")
    if path is not None:
        raw["security"] = _relative_to(path.parent, raw.get("security", {}))
        raw["sessions"] = sessions_relative_to(path.parent, raw.get("sessions", {}))
    _apply_overrides(raw, overrides or {})
    try:
        config = msgspec.convert(raw, RouterConfig)
        _check_policies(config.topics)
        config.registry()
        curve = config.security.curve_server()
        config.sessions.service_public_key(curve_on=curve is not None)
        config.admin.token()
        config.sessions.session_manager()
    except (msgspec.ValidationError, ValueError) as error:
        raise ConfigError(str(error)) from None
    return config


def _read_file(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"{path}: {error}") from None


OVERRIDDEN_TABLES = {
    "security": SecuritySection.__struct_fields__,
    "admin": AdminSection.__struct_fields__,
    "events": EventsSection.__struct_fields__,
    "cluster": ("url",),
}


def _apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> None:
    """Set each override that is not ``None`` in the table of :data:`OVERRIDDEN_TABLES` that has
    its key (``listen`` is ``[admin]``'s), else in ``[router]`` (where an unknown key is an error)."""
    for key, value in overrides.items():
        if value is not None:
            tables = OVERRIDDEN_TABLES.items()
            table = next((name for name, keys in tables if key in keys), "router")
            raw[table] = {**raw.get(table, {}), key: value}


def _relative_to(base: Path, section: dict[str, Any]) -> dict[str, Any]:
    """``section`` with its relative paths made relative to ``base``, the file's directory."""
    return {key: str(base / value) if isinstance(value, str) else value for key, value in section.items()}


def _check_policies(topics: dict[str, Any]) -> None:
    unknown_topic_keys = set(topics) - {"allow_undeclared", "declare"}
    if unknown_topic_keys:
        raise ValueError(f"unknown key(s) in [topics]: {', '.join(sorted(unknown_topic_keys))}")
    if not isinstance(topics.get("allow_undeclared", True), bool):
        raise ValueError("[topics] allow_undeclared must be true or false")
    declarations = topics.get("declare", [])
    if not isinstance(declarations, list):
        raise ValueError("[topics] declare must be an array of tables: [[topics.declare]]")
    known = set(DeliveryPolicy.__struct_fields__)
    for declaration in declarations:
        policy = declaration.get("policy", {}) if isinstance(declaration, dict) else {}
        if not isinstance(policy, dict):
            raise ValueError(f"the policy of {declaration.get('pattern')!r} must be a table")
        unknown = set(policy) - known
        if unknown:
            raise ValueError(f"unknown policy key(s): {', '.join(sorted(unknown))}")
