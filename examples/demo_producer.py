"""A demo producer: a synthetic camera (JPEG frames) and telemetry (JSON) for the viewer.

Run it with ``python examples/demo_producer.py --pull tcp://127.0.0.1:7750``; ``scripts/run``
starts it for you.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import math
import time

from PIL import Image, ImageDraw

from router.config import DEFAULT_PULL
from router.producer import Producer

CAMERA_TOPIC = "/demo/camera"
TELEMETRY_TOPIC = "/demo/telemetry"


@functools.cache
def _gradient(width: int, height: int) -> Image.Image:
    """A colour gradient 256 pixels wider than a frame, so frames can slide along it."""
    image = Image.new("RGB", (width + 256, height))
    image.putdata(
        [(x % 256, (y * 2) % 256, (x + y) % 256) for y in range(height) for x in range(width + 256)]
    )
    return image


def camera_frame(index: int, width: int = 320, height: int = 240) -> bytes:
    """A moving colour gradient with a bouncing dot, a frame counter and a clock, as JPEG."""
    shift = (index * 4) % 256
    image = _gradient(width, height).crop((shift, 0, shift + width, height))
    draw = ImageDraw.Draw(image)
    cx = width / 2 + math.cos(index / 15) * width / 3
    cy = height / 2 + math.sin(index / 15) * height / 3
    draw.ellipse((cx - 12, cy - 12, cx + 12, cy + 12), fill=(255, 255, 255))
    draw.text((8, 8), f"frame {index}  {time.strftime('%H:%M:%S')}", fill=(255, 255, 255))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=70)
    return out.getvalue()


def telemetry(index: int, now: float) -> bytes:
    sample = {
        "seq": index,
        "time": now,
        "speed": round(5 + 3 * math.sin(now), 3),
        "heading": round((now * 20) % 360, 2),
        "battery": round(100 - (now / 60) % 100, 2),
    }
    return json.dumps(sample).encode()


def run(pull: str, fps: float, telemetry_hz: float, duration: float) -> None:
    start = time.monotonic()
    next_frame = next_sample = start
    frames = samples = 0
    with Producer(pull) as producer:
        while duration <= 0 or time.monotonic() - start < duration:
            now = time.monotonic()
            if now >= next_frame:
                frame = camera_frame(frames)
                producer.publish(CAMERA_TOPIC, frame, content_type="image/jpeg", timestamp=time.time_ns())
                frames += 1
                next_frame += 1 / fps
            if now >= next_sample:
                sample = telemetry(samples, time.time())
                producer.publish(
                    TELEMETRY_TOPIC, sample, content_type="application/json", timestamp=time.time_ns()
                )
                samples += 1
                next_sample += 1 / telemetry_hz
            time.sleep(max(0.0, min(next_frame, next_sample) - time.monotonic()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pull", default=DEFAULT_PULL, help="the router's PULL endpoint")
    parser.add_argument("--fps", type=float, default=20.0)
    parser.add_argument("--telemetry-hz", type=float, default=50.0)
    parser.add_argument("--duration", type=float, default=0.0, help="seconds to run (0: until stopped)")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        run(args.pull, args.fps, args.telemetry_hz, args.duration)


if __name__ == "__main__":
    main()
