"""A client's output packed into batches (``docs/protocol.md``, 4.4.5). No I/O.

A client that asked for batches gets each binary message as one or more records, each a frame's
length and the frame, so that it pays once per message rather than once per frame. A batch holds
the frames ready when the shell writes, up to ``most`` bytes of records (a larger record goes
alone): nothing waits for more. A reply goes between two batches, where it falls.

This runs once per frame per client, so the loop does little more than the unbatched write does:
record heads are built once per message (:meth:`~edges.core.output.Data.record_head`), and a batch
of one data frame goes with the message's shared :meth:`~edges.core.output.Data.alone_head`.
"""

from __future__ import annotations

from collections.abc import Sequence

from edges.core.output import ClientOutput, Data, Framing, Payload, Reply, Skipped

__all__ = ["Batch", "batched"]


Batch = tuple[list[Payload], int]
"""One binary message as parts to write one after the other, the framing first, and their size
together (a plain tuple: one is made per write of every client)."""


def batched(items: Sequence[ClientOutput], most: int, framing: Framing) -> list[Batch | Reply]:
    """``items`` in order, their data, skipped and restarted frames packed into batches of at
    most ``most`` bytes of records, each framed by ``framing``; replies as they are; other items
    left out."""
    if len(items) == 1 and type(first := items[0]) is Data:
        head: Payload = first.alone_head(framing)
        payload = first.payload
        return [([head, payload] if payload else [head], len(head) + len(payload))]
    out: list[Batch | Reply] = []
    parts: list[Payload] = [b""]
    size = 0
    alone: Data | None = None  # the batch's record while it has one, and that is a data frame
    for item in items:
        if type(item) is Data:
            head, payload = item.record_head(), item.payload
        elif type(item) is Skipped:
            head, payload = item.record, b""
        else:
            if type(item) is Reply:
                if size:
                    out.append(_batch(parts, size, alone, framing))
                    parts, size, alone = [b""], 0, None
                out.append(item)
            continue
        length = len(head) + len(payload)
        if size and size + length > most:
            out.append(_batch(parts, size, alone, framing))
            parts, size = [b""], 0
        alone = item if not size and type(item) is Data else None
        parts.append(head)
        if payload:
            parts.append(payload)
        size += length
    if size:
        out.append(_batch(parts, size, alone, framing))
    return out


def _batch(parts: list[Payload], size: int, alone: Data | None, framing: Framing) -> Batch:
    """``parts``, a placeholder first and ``size`` bytes of records after it, as one message."""
    if alone is None:
        parts[0] = framing(size)
        return parts, len(parts[0]) + size
    head = alone.alone_head(framing)
    parts[0:2] = [head]
    return parts, len(head) + len(alone.payload)
