"""The edge's requests to the router that wait for a reply, and which reply answers which. No I/O.

Each request gets an id of its own (the router echoes it); a reply whose id is unknown, or whose
kind does not answer the request's (an ``error`` answers any), is unexpected and changes nothing.
Messages for the router go to the hub's actions (:class:`~edges.core.actions.ToRouter`) in the
order they are sent.

With a cluster of routers (:meth:`RouterRequests.route`), each request goes where the hub's
:class:`~edges.core.routes.Routes` say: a register or refresh to every welcomed router, a topic's
requests to the one router that has its subscriptions, or nowhere for now (:meth:`send` returns
0). A request is answered once: the first reply is taken, the other routers' replies to the same
request are only matched (:meth:`RouterRequests.take_later`). A router that loses the edge loses
what it had to answer (:meth:`RouterRequests.lose_router`).
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import Final, NamedTuple

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


BROADCAST: Final = frozenset({RequestKind.REGISTER, RequestKind.REFRESH})
"""The requests every router of a cluster must get: each one must know every client."""


class RouterRequest(NamedTuple):
    """A request in flight. ``silent``: sent after a router restart for what the client already
    has, so no client waits for the reply. ``subscription``: the one a subscribe or recover is for
    (a later subscription to the same topic is another object). ``token``: a refresh's new token.
    ``moved``: a silent subscribe to a topic's new owner in a cluster, which continues from where
    the edge is (``Fanout.moved``)."""

    kind: RequestKind
    client_id: str
    topic: str = ""
    client_request: int | None = None
    silent: bool = False
    token: str = ""
    subscription: Subscription | None = None
    moved: bool = False

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


Route = Callable[[RouterRequest], tuple[str, ...]]
"""The routers a request goes to; none: not now."""


class RouterRequests:
    """Requests in flight, by id and by client; ``actions``: where messages for the router go."""

    def __init__(self, actions: list[EdgeAction]) -> None:
        self._actions = actions
        self._pending: dict[int, RouterRequest] = {}
        self._by_client: dict[str, set[int]] = {}
        self._next_id = 1
        self._route: Route | None = None
        self._everyone: Callable[[], tuple[str, ...]] = tuple
        self._to: dict[int, set[str]] = {}
        """With a cluster: the routers each request in flight went to that have not answered."""
        self._later: dict[int, tuple[RouterRequest, set[str]]] = {}
        """With a cluster: requests answered once, and the routers whose reply is still to come."""
        self._by_topic: dict[str, set[int]] = {}
        self._retired: dict[int, set[str]] = {}
        """With a cluster: requests no longer in flight (their topic moved) that these routers may
        still answer; their answers are dropped."""

    def add(self, request: RouterRequest) -> int:
        """Record ``request``; returns the id to send it with."""
        request_id = self._next_id
        self._next_id += 1
        self._pending[request_id] = request
        self._by_client.setdefault(request.client_id, set()).add(request_id)
        if self._route is not None and request.topic:
            self._by_topic.setdefault(request.topic, set()).add(request_id)
        return request_id

    def send(
        self,
        request: RouterRequest,
        message: Callable[[int], wire.EdgeMessage],
        to: tuple[str, ...] | None = None,
    ) -> int:
        """Record ``request`` and send the router ``message(request_id)``; returns the id.

        With a cluster it goes to the routers ``to``, or by default where the route says; when
        that is nowhere, a topic's request is neither recorded nor sent (returns 0), and a
        register or refresh is recorded as lost (:meth:`lose_router` returns it)."""
        if self._route is None:
            request_id = self.add(request)
            self.tell(message(request_id))
            return request_id
        routers = self._route(request) if to is None else to
        if not routers and request.kind not in BROADCAST:
            return 0
        request_id = self.add(request)
        self._to[request_id] = set(routers)
        body = message(request_id)
        self._actions += [ToRouter(body, router) for router in routers]
        return request_id

    def tell(self, message: wire.EdgeMessage) -> None:
        """Send the router a message that has no reply (with a cluster: every welcomed router)."""
        if self._route is None:
            self._actions.append(ToRouter(message))
        else:
            self._actions += [ToRouter(message, router) for router in self._everyone()]

    def take(self, reply: Reply, router: str = "") -> RouterRequest | None:
        """The request ``reply`` (from ``router``, with a cluster) answers, no longer in flight;
        ``None`` if it answers none."""
        request_id = reply.request_id
        request = self._pending.get(request_id)
        expected = _ANSWERS.get(type(reply))
        if request is None or (expected is not None and expected != request.kind):
            return None
        if self._route is not None:
            routers = self._to.get(request_id, set())
            if router not in routers:
                return None
            routers.discard(router)
            if routers:
                self._later[request_id] = (request, routers)
        self.discard(request_id)
        return request

    def take_later(self, reply: Reply, router: str) -> RouterRequest | None:
        """The request another router answered already, if ``reply`` is ``router``'s answer to it."""
        request_id = reply.request_id
        later = self._later.get(request_id)
        if later is None or router not in later[1]:
            return None
        request, routers = later
        expected = _ANSWERS.get(type(reply))
        if expected is not None and expected != request.kind:
            return None
        routers.discard(router)
        if not routers:
            del self._later[request_id]
        return request

    def discard(self, request_id: int) -> None:
        request = self._pending.pop(request_id, None)
        if request is not None:
            ids = self._by_client[request.client_id]
            ids.discard(request_id)
            if not ids:
                del self._by_client[request.client_id]
            self._to.pop(request_id, None)
            topic_ids = self._by_topic.get(request.topic)
            if topic_ids is not None:
                topic_ids.discard(request_id)
                if not topic_ids:
                    del self._by_topic[request.topic]

    def is_pending(self, request_id: int) -> bool:
        """Whether ``request_id`` went to a router and waits for its reply."""
        return request_id in self._pending

    def forget_client(self, client_id: str) -> None:
        """The client is gone: replies to its requests are unexpected from now on."""
        for request_id in list(self._by_client.get(client_id, ())):
            self.discard(request_id)
        later = self._later
        for request_id in [i for i, (request, _) in later.items() if request.client_id == client_id]:
            del later[request_id]

    def pending(self, client_id: str, kind: RequestKind) -> bool:
        """Whether a request of ``kind`` of the client waits for its first reply."""
        return any(self._pending[i].kind is kind for i in self._by_client.get(client_id, ()))

    # ------------------------------------------------------------ a cluster of routers

    def route(self, route: Route, everyone: Callable[[], tuple[str, ...]], router: str) -> None:
        """Send by ``route`` from now on (``everyone``: where messages without a reply go); every
        request in flight went to ``router``."""
        self._route = route
        self._everyone = everyone
        for request_id, request in self._pending.items():
            self._to[request_id] = {router}
            if request.topic:
                self._by_topic.setdefault(request.topic, set()).add(request_id)

    def lose_router(self, router: str) -> dict[int, RouterRequest]:
        """``router`` will answer nothing more (it lost the edge, or the edge closed its link).
        Returns the requests no router will answer now, no longer in flight: those only it had
        to answer, and registers and refreshes that reached no router."""
        lost = {}
        for request_id, routers in list(self._to.items()):
            routers.discard(router)
            if not routers:
                lost[request_id] = self._pending[request_id]
                self.discard(request_id)
        for request_id, (_, routers) in list(self._later.items()):
            routers.discard(router)
            if not routers:
                del self._later[request_id]
        for request_id, routers in list(self._retired.items()):
            routers.discard(router)
            if not routers:
                del self._retired[request_id]
        return lost

    def lose_topic(self, topic: str) -> dict[int, RouterRequest]:
        """The requests in flight for ``topic``, which no router will answer usefully now (its
        subscriptions moved), no longer in flight; their answers will be dropped
        (:meth:`take_retired`)."""
        lost = {request_id: self._pending[request_id] for request_id in self._by_topic.get(topic, ())}
        for request_id in lost:
            routers = self._to.get(request_id)
            if routers:
                self._retired[request_id] = set(routers)
            self.discard(request_id)
        return lost

    def take_retired(self, reply: Reply, router: str) -> bool:
        """Whether ``reply`` is ``router``'s answer to a request :meth:`lose_topic` gave up."""
        routers = self._retired.get(reply.request_id)
        if routers is None or router not in routers:
            return False
        routers.discard(router)
        if not routers:
            del self._retired[reply.request_id]
        return True

    def lose_all(self) -> dict[int, RouterRequest]:
        """Everything in flight, which the router lost (it restarted); none is in flight after."""
        lost, self._pending = self._pending, {}
        self._by_client.clear()
        return lost
