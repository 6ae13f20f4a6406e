"""A WebRTC client in a process of its own, for tests that freeze it (SIGSTOP): ``python -m
tests.io.rtc_stalled_client BASE_URL TOPIC`` subscribes, prints ``{"event": "ready"}``, then
answers each line on its stdin with the offsets of the data frames it got so far."""

from __future__ import annotations

import asyncio
import json
import sys

from tests.io.rtc_client import DATA_HEADER, RtcClient, loopback_only


async def main(url: str, topic: str) -> None:
    loopback_only()
    client = RtcClient(url)
    status, body = await client.connect()
    if status != 201:
        raise SystemExit(f"signaling refused: {status} {body!r}")
    await client.control_message()
    await client.request("subscribe", topic=topic)
    offsets: list[int] = []

    async def collect() -> None:
        while True:
            _, frame = await client.frames.get()
            if frame[0] == 1:
                offsets.append(DATA_HEADER.unpack_from(frame)[3])

    collecting = asyncio.create_task(collect())
    print(json.dumps({"event": "ready"}), flush=True)
    loop = asyncio.get_running_loop()
    while await loop.run_in_executor(None, sys.stdin.readline):
        print(json.dumps({"event": "offsets", "offsets": offsets}), flush=True)
    collecting.cancel()
    await client.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
