"""Running the processes' event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


def run_async(main: Coroutine[Any, Any, object]) -> int:
    """Run a coroutine on uvloop when it is installed, else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)
    return 0
