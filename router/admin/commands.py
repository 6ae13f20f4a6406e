"""``switchboard clients|topics|edges|stats|cluster|policy|kick|drain``: the admin API from a terminal."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from router.admin.client import AdminClient, AdminError, client_path, policy_path
from router.admin.config import DEFAULT_ADMIN, DEFAULT_TOKEN_ENV
from router.admin.tables import duration, render_table, size

__all__ = ["ADMIN_COMMANDS", "add_admin_commands", "run_admin_command"]

DEFAULT_URL = f"http://{DEFAULT_ADMIN}"


def add_admin_commands(commands: Any) -> None:
    """Add the admin commands to ``switchboard``'s subparsers."""
    for name, (text, _) in ADMIN_COMMANDS.items():
        parser = commands.add_parser(name, help=text)
        parser.add_argument("--admin", default=DEFAULT_URL, metavar="URL", help="the router's admin API")
        parser.add_argument("--json", action="store_true", help="print the API's JSON reply")
        if name == "clients":
            parser.add_argument("--edge", help="only this edge's clients")
        elif name == "policy":
            parser.add_argument("topic")
            parser.add_argument(
                "--set", metavar="JSON", help="merge these policy keys into the current policy"
            )
        elif name == "kick":
            parser.add_argument("client_id")
            parser.add_argument("--reason", help="what the client is told")
        elif name == "drain":
            parser.add_argument("edge_id")


def run_admin_command(args: argparse.Namespace) -> int:
    client = AdminClient(args.admin, os.environ.get(DEFAULT_TOKEN_ENV) or None)
    _, run = ADMIN_COMMANDS[args.command]
    try:
        reply = run(client, args)
    except AdminError as error:
        print(f"switchboard {args.command}: {error}", file=sys.stderr)
        return 1
    except ValueError as error:
        print(f"switchboard {args.command}: {error}", file=sys.stderr)
        return 2
    print(json.dumps(reply, indent=2) if args.json else _render(args.command, reply))
    return 0


# ---------------------------------------------------------------- requests


def _clients(client: AdminClient, args: argparse.Namespace) -> Any:
    query = f"?edge={quote(args.edge, safe='')}" if args.edge else ""
    return client.get(f"/api/clients{query}")


def _policy(client: AdminClient, args: argparse.Namespace) -> Any:
    path = policy_path(args.topic)
    if args.set is None:
        return client.get(path)
    changes = json.loads(args.set)
    if not isinstance(changes, dict):
        raise ValueError('--set takes a JSON object, such as \'{"kind": "latest"}\'')
    return client.request("PUT", path, {**client.get(path)["policy"], **changes})


def _kick(client: AdminClient, args: argparse.Namespace) -> Any:
    body = {"reason": args.reason} if args.reason else {}
    return client.request("POST", client_path(args.client_id, "kick"), body)


def _drain(client: AdminClient, args: argparse.Namespace) -> Any:
    return client.request("POST", f"/api/edges/{quote(args.edge_id, safe='')}/drain", {})


def _cluster(client: AdminClient, args: argparse.Namespace) -> Any:
    reply = client.get("/api/cluster")
    if reply.get("cluster") is not True:
        raise AdminError(f"the router at {client.url} is not in cluster mode ([cluster] url is not set)")
    return reply


Request = Callable[[AdminClient, argparse.Namespace], Any]
ADMIN_COMMANDS: dict[str, tuple[str, Request]] = {
    "clients": ("list the clients (admin API)", _clients),
    "topics": ("list the topics with their rates (admin API)", lambda c, a: c.get("/api/topics")),
    "edges": ("list the edges (admin API)", lambda c, a: c.get("/api/edges")),
    "stats": ("the router's counters, with the edges' (admin API)", lambda c, a: c.get("/api/stats")),
    "cluster": ("the routers of the cluster and who serves each shard (admin API)", _cluster),
    "policy": ("show or change a topic's delivery policy (admin API)", _policy),
    "kick": ("close a client (admin API)", _kick),
    "drain": ("ask every client of an edge to reconnect elsewhere (admin API)", _drain),
}


# ---------------------------------------------------------------- tables


def _render(command: str, reply: Any) -> str:
    renderers: dict[str, Callable[[Any], str]] = {
        "clients": _clients_table,
        "topics": _topics_table,
        "edges": _edges_table,
        "stats": _stats_lines,
        "cluster": _cluster_lines,
        "policy": _policy_lines,
        "kick": lambda r: f"kicked {r['client_id']} (edge {r['edge_id']})",
        "drain": lambda r: f"drained {r['edge_id']}: {len(r['clients'])} clients told to reconnect",
    }
    return renderers[command](reply)


def _clients_table(reply: Any) -> str:
    now = time.time()
    headers = ["CLIENT", "EDGE", "PROTOCOL", "REMOTE", "USER", "TOPICS", "QUEUED", "DROPS", "CONNECTED"]
    rows = [
        [
            c["client_id"],
            c["edge_id"],
            c["protocol"],
            c["remote"],
            c["user"],
            _topics_cell(c["subscriptions"]),
            c["queued_messages"],
            c["drops"],
            f"{duration(now - c['connected_at'])} ago",
        ]
        for c in reply["clients"]
    ]
    return render_table(headers, rows)


def _topics_cell(topics: list[str]) -> str:
    text = ",".join(topics)
    return text if len(text) <= 40 else text[:37] + "..."


def _topics_table(reply: Any) -> str:
    headers = ["TOPIC", "SUBSCRIBERS", "MSG/S", "DROPS/S", "MESSAGES", "DROPS", "POLICY", "HISTORY"]
    rows = [
        [
            t["topic"],
            t["subscribers"],
            t["rate"],
            t["drop_rate"],
            t["messages"],
            t["drops"],
            _policy_cell(t["policy"]) + (" (set)" if t["policy_overridden"] else ""),
            None if t["history"] is None else t["history"]["messages"],
        ]
        for t in reply["topics"]
    ]
    return render_table(headers, rows)


def _policy_cell(policy: dict[str, Any]) -> str:
    rate = policy.get("max_rate")
    return str(policy["kind"]) + (f" {rate:g}/s" if rate else "")


def _edges_table(reply: Any) -> str:
    headers = ["EDGE", "PROTOCOL", "HEALTH", "CLIENTS", "TOPICS", "HEARD", "DELIVERED", "QUEUED", "DROPS"]
    rows = [
        [
            e["edge_id"],
            e["protocol"],
            e["health"],
            e["clients"],
            e["topics"],
            f"{e['silent_for']:.1f}s ago",
            e["delivered"],
            e["queued_messages"],
            None if e["drops"] is None else sum(e["drops"].values()),
        ]
        for e in reply["edges"]
    ]
    return render_table(headers, rows)


def _stats_lines(reply: Any) -> str:
    lines = []
    for key, value in reply.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in sorted(value.items())) or "none"
        elif key.endswith("bytes"):
            value = size(value)
        lines.append(f"{key.replace('_', ' ')}: {value}")
    return "\n".join(lines)


def _cluster_lines(reply: Any) -> str:
    redis = reply["redis"]
    state = "reachable" if redis["available"] else "NOT REACHABLE at the last round"
    this = reply["router_id"]
    head = (
        f"router {this}: {reply['shard_count']} shards, lease {reply['lease_time']:g}s, "
        f"Redis {redis['where']} {state} ({redis['unavailable_rounds']} rounds failed)"
    )
    routers = render_table(
        ["ROUTER", "LIVE", "SHARDS", "CONTROL", "XPUB", "PULL"],
        [
            [
                r["router_id"] + (" (this)" if r["router_id"] == this else ""),
                "yes" if r["live"] else "no",
                r["shards_served"],
                *(r["endpoints"].get(name) for name in ("control", "xpub", "pull")),
            ]
            for r in reply["routers"]
        ],
    )
    shards = render_table(
        ["SHARD", "OWNER", "TOKEN", "LEASE LEFT"],
        [
            [
                s["shard"],
                s["owner"],
                s["token"],
                _lease_cell(s),
            ]
            for s in reply["shards"]
        ],
    )
    free = sum(1 for s in reply["shards"] if s["owner"] is None)
    changes = ", ".join(f"{change} {count}" for change, count in reply["changes"].items())
    lines = [head, "", routers, "", shards, ""]
    if free:
        lines.append(f"shards without an owner: {free}")
    lines.append(f"shard changes on this router: {changes}")
    return "\n".join(lines)


def _lease_cell(shard: dict[str, Any]) -> str | None:
    left = None if shard["lease_ms_left"] is None else f"{shard['lease_ms_left'] / 1000:.1f}s"
    if shard.get("degraded"):
        return f"{left or '-'} degraded"
    return left


def _policy_lines(reply: Any) -> str:
    told = reply.get("edges_told") or []
    head = f"{reply['topic']}: " + ("set at runtime" if reply["overridden"] else "as configured")
    lines = [head, *(f"  {key} = {json.dumps(value)}" for key, value in reply["policy"].items())]
    if told:
        lines.append(f"sent to {len(told)} edge(s): {', '.join(told)}")
    return "\n".join(lines)
