"""What the hub asks its shell to do: send to the router, change the SUB socket, close a client."""

from __future__ import annotations

from typing import NamedTuple

from router import wire

__all__ = ["CloseClient", "EdgeAction", "ToRouter", "UnwatchData", "WatchData"]


class ToRouter(NamedTuple):
    """Send this control message to the router on the DEALER socket: with ``router``, to that
    router of a cluster (``edges/core/routes.py``)."""

    message: wire.EdgeMessage
    router: str = ""


class WatchData(NamedTuple):
    """Subscribe the SUB socket to the topic's data (its first local client arrived)."""

    topic: str


class UnwatchData(NamedTuple):
    """Unsubscribe the SUB socket from the topic's data (its last local client left)."""

    topic: str


class CloseClient(NamedTuple):
    """Write the session's pending output (it ends with ``closing``), then close the transport
    with ``code`` and ``reason``, then call :meth:`~edges.core.hub.EdgeHub.client_closed`."""

    client_id: str
    code: int
    reason: str


EdgeAction = ToRouter | WatchData | UnwatchData | CloseClient
