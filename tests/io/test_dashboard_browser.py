"""The router's dashboard in headless Chromium: live figures while a producer sends, and kick."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from router.admin.client import policy_path
from tests.io.admin_stack import TOKEN, Stack, Watcher, call, publishing, running_stack
from tests.io.browser import Chromium, chromium_path

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(chromium_path() is None, reason="chromium is not installed"),
]

TOPIC = "/dashboard/telemetry"


@pytest.fixture
def stack(monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    with running_stack(monkeypatch) as running:
        yield running


def number(selector: str) -> str:
    return f"Number(document.querySelector('{selector}').textContent)"


async def test_the_dashboard_shows_live_figures_and_kicks_a_client(stack: Stack) -> None:
    await call(stack.admin, "PUT", policy_path(TOPIC), {"kind": "latest", "max_rate": 2.0})
    watcher = await Watcher.open(stack.edge.url, TOPIC)
    row = f'tr[data-client="{watcher.client_id}"]'
    try:
        async with publishing(stack.router.endpoints["pull"], TOPIC, 100.0), Chromium() as browser:
            await browser.goto(f"{stack.router.admin_url}/#token={TOKEN}")
            await browser.wait_for("document.getElementById('status').textContent === 'live'")
            assert await browser.evaluate("location.hash") == ""
            assert await browser.evaluate("sessionStorage.getItem('switchboard-admin-token')") == TOKEN

            await browser.wait_for(f"{number('#edges-count')} === 1 && {number('#clients-count')} === 1")
            await browser.wait_for(f"{number('#rate-total')} > 50")
            topic_rate = number(f'tr[data-topic="{TOPIC}"] td.rate')
            await browser.wait_for(f"{topic_rate} > 50")
            await browser.wait_for(f"{number('#drops-total')} > 20")
            samples = await browser.evaluate("Number(document.getElementById('rates-chart').dataset.samples)")
            await browser.wait_for(
                f"Number(document.getElementById('rates-chart').dataset.samples) >= {samples + 2}", timeout=5
            )
            legend = await browser.evaluate("document.getElementById('rates-legend').textContent")
            assert TOPIC in legend
            await browser.wait_for(f"{number(row + ' td:nth-child(8)')} > 0")
            edge_id = stack.edge.announced["edge_id"]
            assert await browser.evaluate(f"!!document.querySelector('tr[data-edge=\"{edge_id}\"]')")

            await browser.evaluate(f"document.querySelector('{row} button.kick').click()")
            assert await watcher.closed() == 4002
            await browser.wait_for(f"!document.querySelector('{row}')")
            await browser.wait_for(f"{number('#clients-count')} === 0")
    finally:
        await watcher.close()


async def test_without_the_token_the_dashboard_asks_for_it(stack: Stack) -> None:
    async with Chromium() as browser:
        await browser.goto(f"{stack.router.admin_url}/")
        await browser.wait_for("!document.getElementById('token-form').hidden")
        await browser.evaluate(f"document.getElementById('token').value = '{TOKEN}'")
        await browser.evaluate("document.querySelector('#token-form button').click()")
        await browser.wait_for("document.getElementById('status').textContent === 'live'")
        await browser.wait_for(f"{number('#edges-count')} === 1")
