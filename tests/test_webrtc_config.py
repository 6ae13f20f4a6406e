"""The WebRTC edge's command line: the same per-client bounds as the WebSocket edge."""

from __future__ import annotations

from edges.webrtc_config import config_from_args, parser


def test_request_rate_options() -> None:
    limits = config_from_args(
        parser().parse_args(["--max-requests-per-second", "5", "--request-burst", "7"])
    ).limits
    assert (limits.max_requests_per_second, limits.request_burst) == (5.0, 7)


def test_a_zero_request_rate_turns_the_cap_off() -> None:
    limits = config_from_args(parser().parse_args(["--max-requests-per-second", "0"])).limits
    assert limits.max_requests_per_second is None
