"""Reading a session's typed output in tests: the bytes and text a plain transport would write."""

from __future__ import annotations

from collections.abc import Iterable

from edges.core.output import ClientOutput, Data, wire_form


def wire_forms(items: Iterable[ClientOutput]) -> list[bytes | str]:
    """What a transport writes for ``items``, in order: text for replies, bytes for frames."""
    return [form for item in items if (form := wire_form(item)) is not None]


def raw(payload: bytes, channel: int = 0, offset: int = 0) -> Data:
    """A frame whose bytes on the wire are just ``payload`` (no header), to test queues by size."""
    return Data(channel, offset, b"", payload)
