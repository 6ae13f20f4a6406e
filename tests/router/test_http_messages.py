"""HTTP values shared by every listener (router/http_messages.py)."""

from __future__ import annotations

import pytest

from router.http_messages import same_origin


@pytest.mark.parametrize(
    ("origin", "host", "same"),
    [
        ("http://127.0.0.1:7780", "127.0.0.1:7780", True),
        ("https://Edge.Example", "edge.example", True),
        ("http://127.0.0.1:7781", "127.0.0.1:7780", False),
        ("http://127.0.0.1", "127.0.0.1:7780", False),
        ("http://evil.example", "edge.example", False),
        ("null", "edge.example", False),
        ("http://[::1]:7780", "[::1]:7780", True),
        ("http://[::1", "[::1", False),
        ("http://edge.example", "", False),
    ],
)
def test_same_origin_compares_host_and_port(origin: str, host: str, same: bool) -> None:
    assert same_origin(origin, host) is same
