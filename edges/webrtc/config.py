"""The WebRTC edge's settings and command line, and the ICE settings aioice takes process-wide."""

from __future__ import annotations

import argparse

import aioice.ice
import msgspec
from aiortc import RTCConfiguration, RTCIceServer

from edges.core.session import EdgeLimits
from edges.link import MAX_QUEUED_CONTROL
from edges.shell import add_front_arguments, add_limit_arguments, limits_from_args
from edges.viewer_page import ViewerPage
from router.config import DEFAULT_CONTROL, DEFAULT_XPUB
from router.curve import CurveClient, add_client_arguments, client_from_args
from router.forwarding import ProxyHeaders, TrustedProxies
from router.http_limits import HttpLimits
from router.logfmt import add_log_arguments

__all__ = [
    "DEFAULT_PORT",
    "IceServer",
    "WebRtcEdgeConfig",
    "apply_ice_settings",
    "config_from_args",
    "parser",
]

DEFAULT_PORT = 7790
HTTP_LIMITS = HttpLimits(max_connections=1000, max_header_bytes=16 * 1024, max_body_bytes=256 * 1024)
"""The signaling port's bounds (``router/http_listener.py``); ``--max-connections`` sets the total."""


class IceServer(msgspec.Struct, frozen=True, kw_only=True):
    """A STUN or TURN server (``stun:host:port``, ``turn:host:port?transport=udp``)."""

    url: str
    username: str | None = None
    credential: str | None = None


class WebRtcEdgeConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Where the edge listens, where the router is, ICE, and the bounds it enforces."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    control: str = DEFAULT_CONTROL
    xpub: str = DEFAULT_XPUB
    limits: EdgeLimits = EdgeLimits()
    max_connections: int = HTTP_LIMITS.max_connections
    """Clients, and open HTTP connections, at most."""
    http: HttpLimits = HTTP_LIMITS
    """The other bounds of the signaling port (its ``max_connections`` is this one's)."""
    allowed_origins: tuple[str, ...] | None = None
    """Origins whose pages may signal from another origin (CORS); ``None``: any."""
    heartbeat_interval: float = 1.0
    max_queued_control: int = MAX_QUEUED_CONTROL
    """Control messages held while the router reads slower than the edge sends."""
    curve: CurveClient | None = None
    """This edge's Curve keys and the router's public key; ``None``: no Curve (docs/security.md)."""
    ice_servers: tuple[IceServer, ...] = ()
    candidate_addresses: tuple[str, ...] = ("127.0.0.1",)
    """Local addresses offered as ICE host candidates; empty: every interface's."""
    consent_interval: float = 0.5
    """Seconds between ICE consent checks (RFC 7675); a peer is gone after ``consent_failures``."""
    consent_failures: int = 3
    write_buffer_high: int = 256 * 1024
    """Bytes the data channels of one client buffer before its queue takes over."""
    register_timeout: float = 5.0
    """Seconds an offer waits for the router to accept the client's token."""
    video_max_fps: float = 30.0
    """Frames a second a video topic is encoded at, at most (and at most its ``max_rate``)."""
    video_bitrate: int = 1_000_000
    serve_viewer: bool = True
    serve_metrics: bool = True
    """Answer ``GET /metrics`` on the HTTP port (Prometheus text format)."""
    trusted_proxies: tuple[str, ...] = ()
    """Reverse proxies (addresses or networks) whose word on the client is taken."""
    proxy_headers: str = ProxyHeaders.X_FORWARDED.value
    viewer_origins: tuple[str, ...] = ()
    """Other origins the viewer page may take ``ws`` or ``whep`` at."""

    def __post_init__(self) -> None:
        if self.consent_interval <= 0 or self.consent_failures < 1:
            raise ValueError("--consent-interval must be positive and --consent-failures at least 1")
        if self.video_max_fps <= 0 or self.video_bitrate < 1:
            raise ValueError("--video-max-fps and --video-bitrate must be positive")
        if self.write_buffer_high < 1 or self.register_timeout <= 0 or self.max_connections < 1:
            raise ValueError("--write-buffer, --register-timeout and --max-connections must be positive")
        self.proxies()
        ViewerPage(self.viewer_origins)

    def proxies(self) -> TrustedProxies:
        """The reverse proxies in front of the signaling port. Raises ``ValueError``."""
        return TrustedProxies(self.trusted_proxies, self.proxy_headers)

    def http_limits(self) -> HttpLimits:
        """The signaling port's bounds. Raises ``ValueError``."""
        return msgspec.convert(
            {**msgspec.to_builtins(self.http), "max_connections": self.max_connections}, HttpLimits
        )

    def rtc_configuration(self) -> RTCConfiguration:
        servers = [RTCIceServer(s.url, s.username, s.credential) for s in self.ice_servers]
        return RTCConfiguration(iceServers=servers)


def apply_ice_settings(config: WebRtcEdgeConfig) -> None:
    """Candidate addresses and consent timing. aioice reads them from module globals, so they hold
    for the whole process: one edge per process."""
    addresses = list(config.candidate_addresses)
    if addresses:
        aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: list(addresses)
    aioice.ice.CONSENT_INTERVAL = config.consent_interval  # type: ignore[assignment]  # only multiplied
    aioice.ice.CONSENT_FAILURES = config.consent_failures


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="switchboard edge webrtc",
        description="The WebRTC edge: WHEP-style signaling, switchboard.v1 over data channels, "
        "video topics as tracks (docs/protocol.md, 4.9).",
    )
    defaults = WebRtcEdgeConfig()
    add = parser.add_argument
    add("--host", default=defaults.host, help="address of the HTTP signaling server")
    add("--port", type=int, default=defaults.port, help="0 picks a free port")
    add("--control", default=defaults.control, help="the router's control endpoint")
    add("--xpub", default=defaults.xpub, help="the router's XPUB endpoint")
    add("--max-connections", type=int, default=defaults.max_connections)
    http = defaults.http
    add(
        "--http-max-connections-per-address",
        type=int,
        default=http.max_connections_per_address,
        help="open HTTP connections from one address (an IPv6 /64), at most",
    )
    add(
        "--http-header-timeout",
        type=float,
        default=http.header_timeout,
        help="seconds to send a request head",
    )
    add("--http-body-timeout", type=float, default=http.body_timeout, help="seconds to send a request body")
    add(
        "--http-max-header-bytes",
        type=int,
        default=http.max_header_bytes,
        help="bytes in a request head line",
    )
    add("--http-max-body-bytes", type=int, default=http.max_body_bytes, help="bytes in a request body")
    add_limit_arguments(parser)
    add("--allowed-origin", action="append", help="allow this Origin (repeat; default: any)")
    add("--heartbeat-interval", type=float, default=defaults.heartbeat_interval)
    add(
        "--max-queued-control",
        type=int,
        default=defaults.max_queued_control,
        help="control messages held while the router reads slower than the edge sends",
    )
    add_client_arguments(parser)
    add("--ice-server", action="append", default=[], help="stun: or turn: URL (repeat)")
    add("--ice-username", help="username for the TURN servers")
    add("--ice-credential", help="credential for the TURN servers")
    add(
        "--candidate-address",
        action="append",
        help="offer this local address as an ICE host candidate (repeat; default: 127.0.0.1; "
        "'all' offers every interface's)",
    )
    add("--consent-interval", type=float, default=defaults.consent_interval)
    add("--consent-failures", type=int, default=defaults.consent_failures)
    add("--write-buffer", type=int, default=defaults.write_buffer_high, help="bufferedAmount per client")
    add("--register-timeout", type=float, default=defaults.register_timeout)
    add("--video-max-fps", type=float, default=defaults.video_max_fps)
    add("--video-bitrate", type=int, default=defaults.video_bitrate, help="bits per second per video topic")
    add("--no-viewer", action="store_true", help="do not serve the viewer page")
    add("--no-metrics", action="store_true", help="do not answer GET /metrics")
    add_front_arguments(parser)
    add("--announce", action="store_true", help="print the bound port as JSON on stdout")
    add_log_arguments(parser)
    return parser


def config_from_args(args: argparse.Namespace) -> WebRtcEdgeConfig:
    servers = tuple(
        IceServer(url=url, username=args.ice_username, credential=args.ice_credential)
        for url in args.ice_server
    )
    addresses = tuple(args.candidate_address or WebRtcEdgeConfig().candidate_addresses)
    return WebRtcEdgeConfig(
        host=args.host,
        port=args.port,
        control=args.control,
        xpub=args.xpub,
        limits=limits_from_args(args),
        max_connections=args.max_connections,
        http=HttpLimits(
            max_connections=args.max_connections,
            max_connections_per_address=args.http_max_connections_per_address,
            header_timeout=args.http_header_timeout,
            body_timeout=args.http_body_timeout,
            max_header_bytes=args.http_max_header_bytes,
            max_body_bytes=args.http_max_body_bytes,
        ),
        allowed_origins=tuple(args.allowed_origin) if args.allowed_origin else None,
        heartbeat_interval=args.heartbeat_interval,
        max_queued_control=args.max_queued_control,
        curve=client_from_args(args),
        ice_servers=servers,
        candidate_addresses=() if "all" in addresses else addresses,
        consent_interval=args.consent_interval,
        consent_failures=args.consent_failures,
        write_buffer_high=args.write_buffer,
        register_timeout=args.register_timeout,
        video_max_fps=args.video_max_fps,
        video_bitrate=args.video_bitrate,
        serve_viewer=not args.no_viewer,
        serve_metrics=not args.no_metrics,
        trusted_proxies=tuple(args.trusted_proxy),
        proxy_headers=args.proxy_headers,
        viewer_origins=tuple(args.viewer_origin),
    )
