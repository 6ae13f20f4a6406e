"""``scripts/bench webrtc``: the WebRTC edge with N aiortc clients (1, 5 and 20 by default).

One router and one WebRTC edge start on 127.0.0.1 with ports picked at run time; with two CPUs or
more the edge runs alone on CPU 0 (``--no-pin`` to share). For each N:

- data: a :mod:`benchlib.rtc_load` process holds N clients subscribed to a ``best_effort`` topic
  (frames on the unordered data channel); one :mod:`benchlib.stamped_producer` sends a burst of M
  100-byte messages. Deliveries/s is every frame received over the time from the first send to the
  last frame received; ``delivered`` is the share of the M x N frames that arrived.
- video: the demo producer sends 320x240 JPEG frames at 30 frames/s on a video topic; N clients
  with one video slot each watch it as a VP8 track. Once each shows a frame, the frames decoded per
  viewer and the edge's CPU time are measured over ``--video-seconds``. The topic is encoded once,
  whatever N: ``marginal_cpu_per_viewer`` is what one more viewer costs the edge (RTP, SRTP, UDP).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from benchlib import stamped_producer
from benchlib.procs import ROOT, Child, Children, cpu_split, cpu_times, load_average, python_module
from benchlib.report import Figure, Report

HELP = "WebRTC edge: data-channel deliveries/s to N aiortc clients, video fps and edge CPU per viewer"
DATA_TOPIC = "/bench/rtc"
VIDEO_TOPIC = "/demo/camera"
"""The demo producer's camera topic."""
CLIENTS = (1, 5, 20)
DELIVERIES = 20_000
MESSAGE_BOUNDS = (200, 5_000)
PAYLOAD = 100
VIDEO_FPS = 30
START_TIMEOUT = 30.0
LOAD_MODULE = "benchlib.rtc_load"
"""Run as a child only: it imports the test suite's aiortc client, from the repository root."""
CONFIG = f"""
[topics]
allow_undeclared = true

[[topics.declare]]
pattern = "{DATA_TOPIC}"

[topics.declare.policy]
kind = "best_effort"
queue_max_messages = 100000
queue_max_bytes = 67108864

[[topics.declare]]
pattern = "{VIDEO_TOPIC}"
content_type = "image/jpeg"

[topics.declare.policy]
kind = "latest"
"""


@dataclass(frozen=True)
class Plan:
    clients: tuple[int, ...]
    trials: int
    scale: float
    video_seconds: float
    server_cpus: frozenset[int] | None
    other_cpus: frozenset[int] | None

    def messages(self, clients: int) -> int:
        low, high = MESSAGE_BOUNDS
        return max(round(low * self.scale), min(high, round(DELIVERIES * self.scale / clients)))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    option = parser.add_argument
    option("--clients", type=int, nargs="+", help=f"client counts (default {' '.join(map(str, CLIENTS))})")
    option("--trials", type=int, help="data bursts per client count (default 3; 1 quick)")
    option("--video-seconds", type=float, help="video measuring window (default 5; 2 quick)")
    option("--no-pin", action="store_true", help="let the edge share CPUs with the other processes")


def plan_from(args: argparse.Namespace) -> Plan:
    split = None if args.no_pin else cpu_split()
    return Plan(
        clients=tuple(args.clients or CLIENTS),
        trials=args.trials or (1 if args.quick else 3),
        scale=0.1 if args.quick else 1.0,
        video_seconds=args.video_seconds or (2.0 if args.quick else 5.0),
        server_cpus=split[0] if split else None,
        other_cpus=split[1] if split else None,
    )


def run(args: argparse.Namespace) -> Report:
    plan = plan_from(args)
    report = Report("scripts/bench webrtc: router + WebRTC edge, aiortc clients on loopback; medians")
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="bench-webrtc-") as directory, Children() as children:
        config = Path(directory) / "router.toml"
        config.write_text(CONFIG, encoding="utf-8")
        pull, edge, url = start_stack(children, config, plan)
        for clients in plan.clients:
            report.figures += data_figures(children, plan, pull, url, clients)
        producer = children.start("video producer", video_producer(pull), cpus=plan.other_cpus)
        usage = [video_figures(children, plan, edge, url, clients) for clients in plan.clients]
        producer.stop()
    for figures, _ in usage:
        report.figures += figures
    report.figures += marginal_cost(plan, [cpu for _, cpu in usage])
    pinned = "the edge alone on CPU 0" if plan.server_cpus else "no CPU pinning"
    report.notes.append(
        f"load average {load_before:.2f} before, {load_average():.2f} after; {pinned}; "
        f"edge CPU in cores (CPU seconds per second); video {VIDEO_FPS} frames/s of 320x240 JPEG"
    )
    return report


def start_stack(children: Children, config: Path, plan: Plan) -> tuple[str, Child, str]:
    sockets = [
        word for name in ("pull", "xsub", "xpub", "control") for word in (f"--{name}", "tcp://127.0.0.1:0")
    ]
    router = children.start(
        "router",
        python_module("router", "--announce", "--admin", "127.0.0.1:0", "--config", str(config), *sockets),
        cpus=plan.other_cpus,
    )
    endpoints = router.expect("ready", START_TIMEOUT)
    edge_args = ["--announce", "--port", "0", "--control", endpoints["control"], "--xpub", endpoints["xpub"]]
    edge_args += ["--queue-messages", "100000", "--queue-bytes", "67108864", "--log-level", "warning"]
    edge = children.start("webrtc edge", python_module("edges.webrtc", *edge_args), cpus=plan.server_cpus)
    port = edge.expect("ready", START_TIMEOUT)["port"]
    return endpoints["pull"], edge, f"http://127.0.0.1:{port}"


def data_figures(children: Children, plan: Plan, pull: str, url: str, clients: int) -> list[Figure]:
    messages = plan.messages(clients)
    rates: list[float] = []
    shares: list[float] = []
    for _ in range(plan.trials):
        load = children.start(
            "rtc load", load_command(url, clients, "data", expected=messages), cpus=plan.other_cpus
        )
        load.expect("ready", START_TIMEOUT * 2)
        producer = children.start("producer", producer_command(pull, messages), cpus=plan.other_cpus)
        sent = producer.expect("done", START_TIMEOUT)
        done = load.expect("done", START_TIMEOUT * 2)
        load.stop()
        producer.stop()
        received = sum(done["received"])
        seconds = max(1e-9, (done["last_ns"] - sent["first_ns"]) / 1e9)
        rates.append(received / seconds)
        shares.append(received / (messages * clients))
    name = f"webrtc.data.N{clients}"
    return [
        Figure(f"{name}.deliveries_per_s", statistics.median(rates), "msg/s"),
        Figure(f"{name}.delivered", statistics.median(shares), "fraction"),
    ]


def video_figures(
    children: Children, plan: Plan, edge: Child, url: str, clients: int
) -> tuple[list[Figure], float]:
    """The figures for N viewers, and the edge's CPU (cores) while they watched."""
    command = load_command(url, clients, "video", seconds=plan.video_seconds)
    load = children.start("rtc video load", command, cpus=plan.other_cpus)
    load.expect("ready", START_TIMEOUT * 2)
    load.expect("measuring", START_TIMEOUT)
    before = cpu_times(edge.pid).process
    result = load.expect("video", plan.video_seconds + START_TIMEOUT)
    cpu = (cpu_times(edge.pid).process - before) / plan.video_seconds
    load.stop()
    name = f"webrtc.video.N{clients}"
    figures = [
        Figure(f"{name}.fps_per_viewer", statistics.median(result["fps"]), "frames/s", float(VIDEO_FPS)),
        Figure(f"{name}.fps_min_viewer", min(result["fps"]), "frames/s", float(VIDEO_FPS)),
        Figure(f"{name}.first_frame_max", max(result["first_frame_s"]), "s"),
        Figure(f"{name}.edge_cpu", cpu, "cores"),
        Figure(f"{name}.edge_cpu_per_viewer", cpu / clients, "cores"),
    ]
    return figures, cpu


def marginal_cost(plan: Plan, cpus: list[float]) -> list[Figure]:
    """What one more viewer costs: the slope of the edge's CPU from the fewest to the most viewers."""
    low, high = min(plan.clients), max(plan.clients)
    if high == low:
        return []
    slope = (cpus[plan.clients.index(high)] - cpus[plan.clients.index(low)]) / (high - low)
    return [Figure("webrtc.video.marginal_cpu_per_viewer", slope, "cores")]


def load_command(url: str, clients: int, mode: str, expected: int = 0, seconds: float = 0.0) -> list[str]:
    args = [
        "--url",
        url,
        "--clients",
        str(clients),
        "--topic",
        VIDEO_TOPIC if mode == "video" else DATA_TOPIC,
    ]
    args += ["--mode", mode, "--expected", str(expected), "--seconds", str(seconds)]
    return python_module(LOAD_MODULE, *args)


def producer_command(pull: str, count: int) -> list[str]:
    args = [
        "--pull",
        pull,
        "--topic",
        DATA_TOPIC,
        "--size",
        str(PAYLOAD),
        "--count",
        str(count),
        "--cap",
        "60",
    ]
    return python_module(stamped_producer.__name__, *args)


def video_producer(pull: str) -> list[str]:
    script = str(ROOT / "examples" / "demo_producer.py")
    return [sys.executable, script, "--pull", pull, "--fps", str(VIDEO_FPS), "--telemetry-hz", "1"]
