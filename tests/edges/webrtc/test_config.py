"""The edges' command lines: the same per-client bounds, and the same start-up through edge_main."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from edges.webrtc import edge as webrtc
from edges.webrtc.config import config_from_args, parser
from edges.websocket import edge as websocket


def test_request_rate_options() -> None:
    limits = config_from_args(
        parser().parse_args(["--max-requests-per-second", "5", "--request-burst", "7"])
    ).limits
    assert (limits.max_requests_per_second, limits.request_burst) == (5.0, 7)


def test_a_zero_request_rate_turns_the_cap_off() -> None:
    limits = config_from_args(parser().parse_args(["--max-requests-per-second", "0"])).limits
    assert limits.max_requests_per_second is None


@pytest.mark.parametrize(
    ("main", "argv", "message"),
    [
        (webrtc.main, ["--max-connections", "0", "--log-format", "json"], "switchboard edge webrtc: "),
        (websocket.main, ["--write-buffer", "0", "--log-format", "json"], "switchboard edge websocket: "),
    ],
)
def test_an_unusable_edge_config_exits_2_with_the_reason(
    main: Callable[[list[str]], int], argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith(message)


def test_http_bounds_options() -> None:
    argv = [
        "--max-connections",
        "50",
        "--http-max-connections-per-address",
        "3",
        "--http-header-timeout",
        "2",
    ]
    limits = config_from_args(parser().parse_args(argv)).http_limits()
    assert (limits.max_connections, limits.max_connections_per_address, limits.header_timeout) == (50, 3, 2.0)
    assert limits.max_body_bytes == config_from_args(parser().parse_args([])).http.max_body_bytes
