"""A client's output packed into batches (``docs/protocol.md``, 4.4.5). No I/O.

A client that asked for batches gets each binary message as one or more records, each a frame's
length and the frame, so that it pays once per message rather than once per frame. A batch holds
the frames ready when the shell writes, up to ``most`` bytes of records (a larger record goes
alone): nothing waits for more. A reply goes between two batches, where it falls.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import NamedTuple

from edges.core.output import ClientOutput, Data, Payload, Reply, Skipped

__all__ = ["Batch", "batched"]


class Batch(NamedTuple):
    """The records of one binary message, as parts to write one after the other."""

    parts: list[Payload]
    size: int


def batched(items: Iterable[ClientOutput], most: int) -> Iterator[Batch | Reply]:
    """``items`` in order, their data, skipped and restarted frames packed into batches of at
    most ``most`` bytes; replies as they are; other items left out."""
    parts: list[Payload] = []
    size = 0
    for item in items:
        if type(item) is Reply:
            if parts:
                yield Batch(parts, size)
                parts, size = [], 0
            yield item
            continue
        record = _record_parts(item)
        if record is None:
            continue
        length = sum(len(part) for part in record)
        if parts and size + length > most:
            yield Batch(parts, size)
            parts, size = [], 0
        parts += record
        size += length
    if parts:
        yield Batch(parts, size)


def _record_parts(item: ClientOutput) -> tuple[Payload, ...] | None:
    if type(item) is Data:
        head = item.record_head()
        return (head, item.payload) if item.payload else (head,)
    if type(item) is Skipped:
        return (item.record,)
    return None
