"""The router's configuration: defaults, a TOML file, then command-line overrides.

Every table and key is described in ``docs/operations.md``; an unknown key is an error, so a typo
never silently falls back to a default.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import msgspec

from router.core.manager import Limits
from router.core.policy import DeliveryPolicy
from router.core.topics import TopicRegistry

DEFAULT_PULL = "tcp://127.0.0.1:7750"
DEFAULT_XSUB = "tcp://127.0.0.1:7751"
DEFAULT_XPUB = "tcp://127.0.0.1:7752"
DEFAULT_CONTROL = "tcp://127.0.0.1:7753"


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

    def __post_init__(self) -> None:
        if self.heartbeat_interval <= 0:
            raise ValueError("heartbeat_interval must be positive")
        if self.heartbeat_timeout is not None and self.heartbeat_timeout <= self.heartbeat_interval:
            raise ValueError("heartbeat_timeout must be longer than heartbeat_interval")
        if min(self.ingest_hwm, self.fanout_hwm, self.max_batch) < 1:
            raise ValueError("ingest_hwm, fanout_hwm and max_batch must be at least 1")

    @property
    def edge_timeout(self) -> float:
        """How long an edge may stay silent: ``heartbeat_timeout``, else 5 heartbeat intervals."""
        return self.heartbeat_timeout or 5 * self.heartbeat_interval


class RouterConfig(msgspec.Struct, frozen=True, kw_only=True):
    router: RouterSection = RouterSection()
    limits: Limits = Limits()
    topics: dict[str, Any] = {}

    def registry(self) -> TopicRegistry:
        return TopicRegistry.from_config(self.topics)


class ConfigError(ValueError):
    """A configuration file or override that cannot be used, with the reason."""


def load_config(path: Path | None = None, overrides: dict[str, Any] | None = None) -> RouterConfig:
    """Read ``path`` (if any), apply ``overrides`` to the ``[router]`` table, and check it all."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
            raise ConfigError(f"{path}: {error}") from None
    unknown = set(raw) - {"router", "limits", "topics"}
    if unknown:
        raise ConfigError(f"unknown table(s): {', '.join(sorted(unknown))}")
    if not isinstance(raw.get("router", {}), dict):
        raise ConfigError("router must be a table: [router]")
    section = dict(raw.get("router", {}))
    section.update({k: v for k, v in (overrides or {}).items() if v is not None})
    raw["router"] = section
    try:
        config = msgspec.convert(raw, RouterConfig)
        _check_policies(config.topics)
        config.registry()
    except (msgspec.ValidationError, ValueError) as error:
        raise ConfigError(str(error)) from None
    return config


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
