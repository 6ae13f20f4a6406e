"""The edge's requests to the router that wait for a reply, and which reply answers which. No I/O.

Each request gets an id of its own (the router echoes it); a reply whose id is unknown, or whose
kind does not answer the request's (an ``error`` answers any), is unexpected and changes nothing.
Messages for the router go to the hub's actions (:class:`~edges.core.actions.ToRouter`) in the
order they are sent.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import NamedTuple

from edges.core.actions import EdgeAction, ToRouter
from edges.core.subscription import Subscription
from router import wire

__all__ = ["Reply", "RequestKind", "RouterRequest", "RouterRequests"]


class RequestKind(StrEnum):
    REGISTER = "register"
    SUBSCRIBE = "subscribe"
    UNSUBSCRIBE = "unsubscribe"
    RECOVER = "recover"
    REFRESH = "refresh"


class RouterRequest(NamedTuple):
    """A request in flight. ``silent``: sent after a router restart for what the client already
    has, so no client waits for the reply. ``subscription``: the one a subscribe or recover is for
    (a later subscription to the same topic is another object). ``token``: a refresh's new token."""

    kind: RequestKind
    client_id: str
    topic: str = ""
    client_request: int | None = None
    silent: bool = False
    token: str = ""
    subscription: Subscription | None = None

    def subscription_for(self, request_id: int) -> Subscription | None:
        """The subscription a reply to this subscribe (sent as ``request_id``) still concerns:
        ``None`` once it ended, or when the client waits for another request."""
        sub = self.subscription
        if sub is None or not (sub.confirmed if self.silent else sub.awaits(request_id)):
            return None
        return sub


Reply = wire.Registered | wire.Refreshed | wire.SubscribeOk | wire.Unsubscribed | wire.Recovered | wire.Error

_ANSWERS: dict[type, RequestKind] = {
    wire.Registered: RequestKind.REGISTER,
    wire.Refreshed: RequestKind.REFRESH,
    wire.SubscribeOk: RequestKind.SUBSCRIBE,
    wire.Unsubscribed: RequestKind.UNSUBSCRIBE,
    wire.Recovered: RequestKind.RECOVER,
}


class RouterRequests:
    """Requests in flight, by id and by client; ``actions``: where messages for the router go."""

    def __init__(self, actions: list[EdgeAction]) -> None:
        self._actions = actions
        self._pending: dict[int, RouterRequest] = {}
        self._by_client: dict[str, set[int]] = {}
        self._next_id = 1

    def add(self, request: RouterRequest) -> int:
        """Record ``request``; returns the id to send it with."""
        request_id = self._next_id
        self._next_id += 1
        self._pending[request_id] = request
        self._by_client.setdefault(request.client_id, set()).add(request_id)
        return request_id

    def send(self, request: RouterRequest, message: Callable[[int], wire.EdgeMessage]) -> int:
        """Record ``request`` and send the router ``message(request_id)``; returns the id."""
        request_id = self.add(request)
        self.tell(message(request_id))
        return request_id

    def tell(self, message: wire.EdgeMessage) -> None:
        """Send the router a message that has no reply."""
        self._actions.append(ToRouter(message))

    def take(self, reply: Reply) -> RouterRequest | None:
        """The request ``reply`` answers, no longer in flight; ``None`` if it answers none."""
        request = self._pending.get(reply.request_id)
        expected = _ANSWERS.get(type(reply))
        if request is None or (expected is not None and expected != request.kind):
            return None
        self.discard(reply.request_id)
        return request

    def discard(self, request_id: int) -> None:
        request = self._pending.pop(request_id, None)
        if request is not None:
            ids = self._by_client[request.client_id]
            ids.discard(request_id)
            if not ids:
                del self._by_client[request.client_id]

    def forget_client(self, client_id: str) -> None:
        """The client is gone: replies to its requests are unexpected from now on."""
        for request_id in self._by_client.pop(client_id, ()):
            del self._pending[request_id]

    def lose_all(self) -> dict[int, RouterRequest]:
        """Everything in flight, which the router lost (it restarted); none is in flight after."""
        lost, self._pending = self._pending, {}
        self._by_client.clear()
        return lost
