"""``switchboard tap``: a debugging subscriber that joins the router as a one-client edge."""

from __future__ import annotations

import asyncio
import contextlib
import sys

from edges.link import DataBatch, RouterLink
from router.core.errors import ErrorCode
from router.curve import CurveClient
from router.wire import (
    EdgeMessage,
    Error,
    RegisterClient,
    Subscribe,
    UnregisterClient,
    WireError,
    parse_data_head,
)

OBSERVER_NOTE = (
    "an observer key registers no client: tap shows the topics that clients of edges watch now,"
    " as the router sends them; an edge key subscribes tap itself"
)


async def tap(
    topics: list[str], *, control: str, xpub: str, count: int = 0, curve: CurveClient | None = None
) -> None:
    """Subscribe to ``topics`` and print one line per message; stop after ``count`` if set."""
    link = RouterLink(protocol="tap", control=control, xpub=xpub, curve=curve)
    client_id = f"{link.edge_id}/tap"
    seen = 0
    done = asyncio.Event()
    observing = asyncio.Event()

    def resync() -> list[EdgeMessage]:
        register = RegisterClient(request_id=link.next_request_id(), client_id=client_id, protocol="tap")
        subscribes = [
            Subscribe(request_id=link.next_request_id(), client_id=client_id, topic=topic) for topic in topics
        ]
        return [register, *subscribes]

    def on_data(batch: DataBatch) -> None:
        nonlocal seen
        for head, payload in batch:
            try:
                meta = parse_data_head(head)
            except WireError as error:
                print(f"bad data frame: {error}", file=sys.stderr)
                continue
            preview = bytes(payload[:60]).decode("utf-8", "replace").replace("\n", " ")
            topic = meta.topic.decode()
            print(
                f"{topic} epoch={meta.epoch} offset={meta.offset} size={len(payload)} {preview}", flush=True
            )
            seen += 1
            if count and seen >= count:
                done.set()

    def on_message(message: object) -> None:
        if isinstance(message, Error):
            print(f"refused: {message.code}: {message.message}", file=sys.stderr, flush=True)
            if message.code == ErrorCode.FORBIDDEN and not observing.is_set():
                observing.set()
                print(OBSERVER_NOTE, file=sys.stderr, flush=True)

    for topic in topics:
        link.watch(topic)
    link.resync = resync
    link.on_data = on_data
    link.on_message = on_message
    runner = asyncio.create_task(link.run())
    try:
        await done.wait()
    finally:
        link.send(UnregisterClient(client_id=client_id))
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
