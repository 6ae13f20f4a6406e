"""Options every test run shares: ``--slow`` turns on the long soak and fuzz runs (``slow`` mark)."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slow", action="store_true", help="also run the long soak and fuzz runs")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="a long run: scripts/test --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
