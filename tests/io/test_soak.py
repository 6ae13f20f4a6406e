"""At scale on the 2 cores it shares with its clients, the router never loses its edge and every
client gets every message (``scripts/bench soak``; minutes long, so behind ``--slow``)."""

from __future__ import annotations

import pytest

from tests.io.test_bench_smoke import BENCH, run_bench

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.mark.parametrize(("clients", "busy"), [(10_000, False), (5_000, True)])
def test_the_router_keeps_the_edge_and_every_client_gets_every_message(clients: int, busy: bool) -> None:
    command = [*BENCH, "soak", "--clients", str(clients), "--seconds", "60", "--json"]
    figures = {figure["name"]: figure for figure in run_bench([*command, *(["--busy"] if busy else [])], 600)}
    assert figures["edges lost by the router"]["value"] == 0
    assert figures["clients that got every message"]["value"] == clients
    assert figures["deliveries"]["value"] == 600 * clients
    assert figures["clients the router lists at the end"]["value"] == clients
