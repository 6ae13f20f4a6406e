"""Reading a session's typed output in tests: the bytes and text a plain transport would write."""

from __future__ import annotations

from collections.abc import Iterable

from edges.core.output import ClientOutput, Data, wire_form
from edges.core.session import ClientSession


def wire_forms(items: Iterable[ClientOutput]) -> list[bytes | str]:
    """What a transport writes for ``items``, in order: text for replies, bytes for frames."""
    return [form for item in items if (form := wire_form(item)) is not None]


def raw(payload: bytes, channel: int = 0, offset: int = 0) -> Data:
    """A frame whose bytes on the wire are just ``payload`` (no header), to test queues by size."""
    return Data(channel, offset, b"", payload)


def queue_frame(session: ClientSession, frame: Data, now: float | None = None) -> bool:
    """Hand ``frame`` to its channel's lane (opened with the default policy if need be). False:
    it is not queued now (skipped, held for later, or the client is too slow)."""
    lane = session.open_lane(frame.channel)
    lane.push(frame, now)
    items = lane.items
    return items is not None and len(items) > 0 and items[-1] is frame
