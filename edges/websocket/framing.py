"""WebSocket framing the edge writes itself: the header of a server's binary message (RFC 6455,
section 5.2), put once before each data frame shared by every client, and before each batch."""

from __future__ import annotations

import struct
from typing import Final

_SHORT_HEADERS: Final = tuple(bytes((0x82, size)) for size in range(126))
_pack_medium = struct.Struct("!BBH").pack
_pack_long = struct.Struct("!BBQ").pack


def binary_frame_header(size: int) -> bytes:
    """The header of one unmasked, final WebSocket binary frame of ``size`` bytes (RFC 6455,
    section 5.2); the data follows it."""
    if size < 126:
        return _SHORT_HEADERS[size]
    if size < 1 << 16:
        return _pack_medium(0x82, 126, size)
    return _pack_long(0x82, 127, size)
