"""The router process from its command line: ``switchboard router`` and ``python -m router``."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path

from router.admin.api import AdminApi
from router.admin.listener import AdminListener
from router.cluster.node import ClusterError
from router.config import ConfigError, RouterConfig, load_config
from router.http_limits import parse_address
from router.http_listener import HttpListener, ListenerCollector, serve_metrics
from router.loop import run_async
from router.server import BindError, RouterServer


def add_router_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML configuration file")
    for name in ("pull", "xsub", "xpub", "control"):
        parser.add_argument(f"--{name}", help=f"endpoint of the {name} socket (overrides the config)")
    parser.add_argument("--heartbeat-interval", type=float, help="seconds between heartbeats")
    parser.add_argument("--heartbeat-timeout", type=float, help="seconds of silence before an edge is lost")
    parser.add_argument(
        "--curve-secret-key-file", help="the router's key pair (NAME.key_secret); turns Curve on"
    )
    for role in ("producer", "edge", "observer"):
        parser.add_argument(
            f"--{role}-keys-dir", help=f"the allow-list of {role} public keys (a directory of *.key files)"
        )
    parser.add_argument("--metrics", metavar="HOST:PORT", help="serve Prometheus metrics at /metrics")
    parser.add_argument(
        "--admin", dest="listen", metavar="HOST:PORT", help="the admin API and dashboard ('' for none)"
    )
    parser.add_argument(
        "--demand",
        metavar="ENDPOINT",
        help="tell producers the rate each topic's watchers want, on an XPUB socket here ('' for none)",
    )
    parser.add_argument(
        "--events",
        dest="publish",
        metavar="ENDPOINT",
        help="publish events on a PUB socket here ('' for none)",
    )
    parser.add_argument(
        "--cluster",
        dest="url",
        metavar="REDIS_URL",
        help="cluster mode: shard leases in this Redis (redis://host:port); overrides [cluster] url",
    )
    parser.add_argument(
        "--announce", action="store_true", help="print the bound endpoints as one JSON line on stdout"
    )


ROUTER_OVERRIDES = (
    "pull",
    "xsub",
    "xpub",
    "control",
    "heartbeat_interval",
    "heartbeat_timeout",
    "curve_secret_key_file",
    "producer_keys_dir",
    "edge_keys_dir",
    "observer_keys_dir",
    "metrics",
    "listen",
    "publish",
    "demand",
    "url",
)
"""The ``switchboard router`` options that override the configuration file, by key."""


def run_router(args: argparse.Namespace) -> int:
    overrides = {name: getattr(args, name) for name in ROUTER_OVERRIDES}
    try:
        config = load_config(args.config, overrides)
    except ConfigError as error:
        print(f"switchboard router: {error}", file=sys.stderr)
        return 2
    return run_async(_serve_router(config, args.announce))


async def _serve_router(config: RouterConfig, announce: bool) -> None:
    server = RouterServer(config)
    error = await server.fetch_keys()
    if error is not None:
        url = config.sessions.jwks_url
        reason = f"[sessions] jwks_url = {url!r}: no key to start with: {error}"
        print(f"switchboard router: {reason}", file=sys.stderr)
        raise SystemExit(2)
    try:
        endpoints = server.bind()
    except BindError as error:
        print(f"switchboard router: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        await server.join_cluster()
    except ClusterError as error:
        server.close()
        print(f"switchboard router: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    listeners: dict[str, HttpListener] = {}
    server.metrics.registry.register(ListenerCollector("switchboard_router", listeners))
    route = serve_metrics(server.metrics.render, server.metrics.content_type)
    metrics = HttpListener("metrics", route, config.router.metrics_limits())
    if config.router.metrics is not None:
        endpoints["metrics"] = await _start_metrics(metrics, config.router.metrics)
        listeners["metrics"] = metrics
    api = AdminApi(
        server, config.admin.token(), config.router.heartbeat_interval, public_origin=config.admin.origin()
    )
    admin = AdminListener(api, config.admin.http_limits(), config.admin.proxies())
    if config.admin.listen:
        endpoints["admin"] = await _start_admin(admin, config.admin.listen)
        listeners["admin"] = admin.http
    if announce:
        print(json.dumps({"event": "ready", **endpoints}), flush=True)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, server.stop)
    loop.add_signal_handler(signal.SIGHUP, server.reload_allowed_keys)
    try:
        await server.serve()
    finally:
        await metrics.close()
        await admin.close()


async def _start_admin(admin: AdminListener, listen: str) -> str:
    try:
        return await admin.start(listen)
    except OSError as error:
        print(f"switchboard router: [admin] listen = {listen!r}: {error}", file=sys.stderr)
        raise SystemExit(2) from None


async def _start_metrics(metrics: HttpListener, address: str) -> str:
    try:
        return await metrics.start(*parse_address(address))
    except OSError as error:
        print(f"switchboard router: [router] metrics = {address!r}: {error}", file=sys.stderr)
        raise SystemExit(2) from None
