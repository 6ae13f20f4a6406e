"""``switchboard cluster``'s text, from an API reply, without a router."""

from __future__ import annotations

from router.admin.commands import _render

REPLY = {
    "cluster": True,
    "router_id": "r1",
    "shard_count": 3,
    "lease_time": 2.0,
    "redis": {"where": "redis://127.0.0.1:6379/0", "available": False, "unavailable_rounds": 4},
    "routers": [
        {
            "router_id": "r1",
            "live": True,
            "endpoints": {"control": "tcp://h1:7753", "xpub": "tcp://h1:7752", "pull": "tcp://h1:7750"},
            "shards_served": 2,
        },
        {"router_id": "r2", "live": False, "endpoints": {"control": "tcp://h2:7753"}, "shards_served": 0},
    ],
    "shards": [
        {"shard": 0, "owner": "r1", "token": 12, "lease_ms_left": 1940, "degraded": False},
        {"shard": 1, "owner": None, "token": None, "lease_ms_left": None, "degraded": True},
        {"shard": 2, "owner": "r1", "token": 3, "lease_ms_left": 55, "degraded": False},
    ],
    "changes": {"gained": 3, "handed_over": 0, "taken": 0, "expired": 1},
}


def test_the_cluster_is_a_summary_two_tables_and_the_changes() -> None:
    assert _render("cluster", REPLY).splitlines() == [
        "router r1: 3 shards, lease 2s, Redis redis://127.0.0.1:6379/0 NOT REACHABLE at the last round"
        " (4 rounds failed)",
        "",
        "ROUTER     LIVE  SHARDS  CONTROL        XPUB           PULL",
        "r1 (this)  yes        2  tcp://h1:7753  tcp://h1:7752  tcp://h1:7750",
        "r2         no         0  tcp://h2:7753  -              -",
        "",
        "SHARD  OWNER  TOKEN  LEASE LEFT",
        "    0  r1        12  1.9s",
        "    1  -          -  - degraded",
        "    2  r1         3  0.1s",
        "",
        "shards without an owner: 1",
        "shard changes on this router: gained 3, handed_over 0, taken 0, expired 1",
    ]
