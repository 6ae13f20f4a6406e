"""One client as the hub holds it: its session, its subscriptions and its requests to the router. No I/O.

The client owns its subscriptions (by topic, confirmed or not) and handles its own requests and
the router's replies to them; the :class:`~edges.core.fanout.Fanout` indexes its subscriptions by
topic, and :class:`~edges.core.requests.RouterRequests` sends and correlates its router requests.
"""

from __future__ import annotations

from edges.core.client_wire import (
    CloseCode,
    Refresh,
    Refreshed,
    Resume,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
    client_error_code,
)
from edges.core.fanout import Fanout
from edges.core.requests import RequestKind, RouterRequest, RouterRequests
from edges.core.session import ClientSession, CloseRequest, State
from edges.core.subscription import Subscription
from router import wire
from router.core.errors import ErrorCode
from router.core.topics import topic_error

__all__ = ["ClientReply", "EdgeClient", "Refusal"]

Refusal = tuple[str, str]
"""An error code and message: a request the edge refuses itself, without asking the router."""

ClientReply = wire.Registered | wire.Refreshed | wire.SubscribeOk | wire.Unsubscribed | wire.Error


class EdgeClient:
    __slots__ = ("_fanout", "_requests", "close_sent", "known_to_router", "session", "subscriptions")

    def __init__(self, session: ClientSession, requests: RouterRequests, fanout: Fanout) -> None:
        self.session = session
        self.subscriptions: dict[str, Subscription] = {}
        self.known_to_router = False
        """A RegisterClient was sent, and neither refused nor ended by the router since."""
        self.close_sent = False
        """The hub carried out the close the session started."""
        self._requests = requests
        self._fanout = fanout

    def __repr__(self) -> str:
        return f"<EdgeClient {self.session.client_id}>"

    @property
    def client_id(self) -> str:
        return self.session.client_id

    def close_to_carry_out(self) -> CloseRequest | None:
        """The close the session started, the first time it is asked for."""
        close = self.session.close_request
        if close is None or self.close_sent:
            return None
        self.close_sent = True
        return close

    def forget(self, reason: str) -> None:
        """The client is closing: it leaves every topic, its requests are forgotten, and the
        router is told (``reason``) if it knows the client."""
        for sub in list(self.subscriptions.values()):
            self.leave(sub)
        self._requests.forget_client(self.client_id)
        if self.known_to_router:
            self.known_to_router = False
            self._requests.tell(wire.UnregisterClient(client_id=self.client_id, reason=reason))

    def leave(self, sub: Subscription) -> None:
        del self.subscriptions[sub.topic]
        if not sub.confirmed:
            self._requests.discard(sub.request_id)
        self._fanout.leave(sub)

    # ------------------------------------------------------------ requests

    def connect(self, token: str | None, protocol: str) -> None:
        self.known_to_router = True
        request = RouterRequest(RequestKind.REGISTER, self.client_id)
        self._requests.send(request, lambda request_id: self._register_message(request_id, protocol, token))

    def _register_message(self, request_id: int, protocol: str, token: str | None) -> wire.RegisterClient:
        session = self.session
        return wire.RegisterClient(
            request_id=request_id,
            client_id=session.client_id,
            protocol=protocol,
            remote=session.remote,
            token=token,
        )

    def subscribe(self, request: Subscribe, most: int) -> Refusal | None:
        """Ask the router for the topic, or refuse (answering ``error``) and say why."""
        name = request.topic
        refusal = self._subscribe_refusal(name, most)
        if refusal is not None:
            self.session.send_error(request.id, *refusal)
            return refusal
        sub = self.subscriptions[name] = self._fanout.join(
            self.session, name, request.id, request.resume, request.window, request.max_rate
        )
        request_id = self._requests.send(
            RouterRequest(RequestKind.SUBSCRIBE, self.client_id, name, subscription=sub),
            lambda request_id: _subscribe_message(sub, request_id),
        )
        sub.sent(request_id)
        return None

    def _subscribe_refusal(self, name: str, most: int) -> Refusal | None:
        """Why the edge refuses a subscribe by itself, if it does. A second subscribe to a topic
        is refused, whatever its fields (another ``max_rate`` too): unsubscribe first."""
        reason = topic_error(name)
        if reason is not None:
            return ErrorCode.BAD_TOPIC, f"{name[:80]!r}: {reason}"
        sub = self.subscriptions.get(name)
        if sub is not None and sub.confirmed:
            return ErrorCode.BAD_REQUEST, f"already subscribed on {name!r}: unsubscribe first to change it"
        if sub is not None:
            return ErrorCode.BAD_REQUEST, f"a subscribe is in progress on {name!r}"
        if len(self.subscriptions) >= most:
            return ErrorCode.LIMIT_EXCEEDED, f"at most {most} subscriptions per client"
        return None

    def unsubscribe(self, request: Unsubscribe) -> None:
        """Leave the topic at once (its queued data goes) and tell the router."""
        name, client_id = request.topic, self.client_id
        sub = self.subscriptions.get(name)
        if sub is None:
            self.session.send_error(request.id, ErrorCode.NOT_SUBSCRIBED, f"not subscribed to {name[:80]!r}")
        elif not sub.confirmed:
            self.session.send_error(request.id, ErrorCode.BAD_REQUEST, "wait for the subscribe reply first")
        else:
            asked = RouterRequest(RequestKind.UNSUBSCRIBE, client_id, name, request.id)
            sent = self._requests.send(
                asked,
                lambda request_id: wire.Unsubscribe(request_id=request_id, client_id=client_id, topic=name),
            )
            self.leave(sub)
            if not sent:
                self.unsubscribed(asked)

    def refresh(self, request: Refresh) -> None:
        client_id, token = self.client_id, request.token
        self._requests.send(
            RouterRequest(RequestKind.REFRESH, client_id, client_request=request.id, token=token),
            lambda request_id: wire.RefreshToken(request_id=request_id, client_id=client_id, token=token),
        )

    # ------------------------------------------------------------ replies

    def reply(self, request: RouterRequest, message: ClientReply) -> None:
        """The router's reply to one of this client's requests (a ``recover`` aside)."""
        session = self.session
        match message:
            case wire.Registered() if request.silent:
                session.user = message.user
            case wire.Registered():
                session.registered(message.user)
            case wire.Refreshed():
                self._refreshed(request, message)
            case wire.SubscribeOk():
                self._subscribed(request, message)
            case wire.Unsubscribed():
                self.unsubscribed(request)
            case wire.Error():
                self._refused(request, message)

    def unsubscribed(self, request: RouterRequest) -> None:
        """An unsubscribe is done (the router confirmed it, or lost it in a restart)."""
        if not request.silent:
            self.session.send(Unsubscribed(id=_int(request.client_request), topic=request.topic))

    # ------------------------------------------------------------ no answer in time

    def unanswered_connect(self, message: str) -> None:
        """No router answered ``connect`` in time: the client is told, then closed."""
        self.session.send_error(None, ErrorCode.UNAVAILABLE, message)
        self.session.close(CloseCode.UNANSWERED, message)

    def unanswered_subscribe(self, sub: Subscription, message: str) -> None:
        """No router answered the subscribe in time: it ends with ``unavailable``. A router it went
        to is asked to forget it, in case the request reaches it late."""
        went = self._requests.is_pending(sub.request_id)
        self.leave(sub)
        self.session.send_error(sub.client_request, ErrorCode.UNAVAILABLE, message)
        if went:
            client_id, name = self.client_id, sub.topic
            self._requests.send(
                RouterRequest(RequestKind.UNSUBSCRIBE, client_id, name, silent=True),
                lambda request_id: wire.Unsubscribe(request_id=request_id, client_id=client_id, topic=name),
            )

    def _refreshed(self, request: RouterRequest, reply: wire.Refreshed) -> None:
        """The router took the new token: it is the one to register with from now on. Each
        subscription it revoked ends as a lost one (an ``error`` with its ``topic``), unless the
        client already asked for that topic again."""
        session = self.session
        session.token = request.token
        session.send(Refreshed(id=_int(request.client_request), expires_at=reply.expires_at))
        self.revoke(reply.revoked)

    def revoke(self, names: list[str]) -> None:
        """The router ended these subscriptions after a refresh (each router of a cluster names
        those of its own topics): each ends as a lost one, unless the client asked again already."""
        session = self.session
        for name in names:
            sub = self.subscriptions.get(name)
            if sub is not None and sub.confirmed:
                self.leave(sub)
                message = f"the refreshed token does not allow {name!r}"
                session.send_error(None, ErrorCode.FORBIDDEN, message, topic=name)

    def _subscribed(self, request: RouterRequest, ok: wire.SubscribeOk) -> None:
        sub = request.subscription_for(ok.request_id)
        if sub is None:
            return
        if request.moved:
            self._fanout.moved(sub, ok)
            return
        if request.silent:
            self._fanout.reconfirm(sub, ok)
            return
        self._fanout.confirm(sub, ok)
        reply = Subscribed(
            id=sub.client_request,
            topic=sub.topic,
            channel=sub.channel,
            epoch=ok.epoch,
            offset=ok.offset,
            content_type=ok.content_type,
            policy=ok.policy.kind,
            resume=ok.resume,
            resume_from=ok.resume_from,
        )
        self.session.send(reply)

    def _refused(self, request: RouterRequest, error: wire.Error) -> None:
        code, session = client_error_code(error.code), self.session
        if request.kind is RequestKind.REGISTER:
            self.known_to_router = False
            session.send_error(None, code, error.message)
            if session.is_open:
                session.close(CloseCode.REFUSED, f"connect refused: {code}")
        elif request.kind is not RequestKind.SUBSCRIBE:
            session.send_error(request.client_request, code, error.message)
        elif (sub := request.subscription_for(error.request_id)) is not None:
            self.leave(sub)
            if request.silent:
                session.send_error(None, code, error.message, topic=sub.topic)
            else:
                session.send_error(sub.client_request, code, error.message)

    # ------------------------------------------------------------ router restart

    def resync(self, protocol: str) -> list[wire.EdgeMessage]:
        """What registers this client and its subscriptions with a new router: nothing before it
        sent ``connect`` or once it is closing. A subscribe the client still waits for is sent
        again; those it already has go ``silent`` (no reply reaches the client)."""
        session, requests = self.session, self._requests
        if session.state not in (State.REGISTERING, State.READY):
            return []
        client_id = session.client_id
        register = RouterRequest(RequestKind.REGISTER, client_id, silent=session.state is State.READY)
        messages: list[wire.EdgeMessage] = [
            self._register_message(requests.add(register), protocol, session.token)
        ]
        for name, sub in self.subscriptions.items():
            silent = sub.confirmed
            request = RouterRequest(RequestKind.SUBSCRIBE, client_id, name, silent=silent, subscription=sub)
            request_id = requests.add(request)
            if not silent:
                sub.sent(request_id)
            messages.append(_subscribe_message(sub, request_id))
        return messages

    # ------------------------------------------------------------ a cluster of routers

    def register_with(self, protocol: str, router: str) -> None:
        """Register this client with ``router``, which was welcomed (again): silently, unless the
        client still waits to be connected and no other router has its register."""
        session = self.session
        if session.state not in (State.REGISTERING, State.READY):
            return
        silent = session.state is State.READY or self._requests.pending(self.client_id, RequestKind.REGISTER)
        self.known_to_router = True
        self._requests.send(
            RouterRequest(RequestKind.REGISTER, self.client_id, silent=silent),
            lambda request_id: self._register_message(request_id, protocol, session.token),
            to=(router,),
        )

    def register_again(self, protocol: str) -> None:
        """The register the client waits for reached no router that will answer: send it again."""
        if self.session.state is State.REGISTERING:
            self.connect(self.session.token, protocol)

    def refresh_again(self, request: RouterRequest, to: tuple[str, ...] | None = None) -> None:
        """A refresh no router answered: send it again (to ``to``, or every welcomed router)."""
        if self.session.state is State.READY:
            client_id, token = self.client_id, request.token
            self._requests.send(
                request,
                lambda request_id: wire.RefreshToken(request_id=request_id, client_id=client_id, token=token),
                to=to,
            )

    def send_subscribe(self, sub: Subscription, position: tuple[int, int] | None) -> None:
        """Ask the topic's owner for ``sub`` (the topic moved, or its router was welcomed again).
        The client still waits for a requested one; a confirmed one moves silently and continues
        after ``position``, the last message the edge handed it."""
        client_id, name = self.client_id, sub.topic
        if sub.confirmed:
            request = RouterRequest(
                RequestKind.SUBSCRIBE, client_id, name, silent=True, subscription=sub, moved=True
            )
        else:
            request = RouterRequest(RequestKind.SUBSCRIBE, client_id, name, subscription=sub)
        request_id = self._requests.send(
            request, lambda request_id: _subscribe_message(sub, request_id, position)
        )
        if not sub.confirmed:
            sub.sent(request_id)


def _subscribe_message(
    sub: Subscription, request_id: int, position: tuple[int, int] | None = None
) -> wire.Subscribe:
    """The router's ``subscribe`` for ``sub``, with the client's own ``max_rate``. While the client
    waits for its reply it resumes from the client's ``resume``; once confirmed, from ``position``
    (the last message the edge handed it; ``None``: from wherever the router is)."""
    resume = position if sub.confirmed else _position(sub.resume)
    return wire.Subscribe(
        request_id=request_id,
        client_id=sub.client_id,
        topic=sub.topic,
        resume_epoch=resume[0] if resume is not None else None,
        resume_offset=resume[1] if resume is not None else None,
        max_rate=sub.max_rate,
    )


def _position(resume: Resume | None) -> tuple[int, int] | None:
    return (resume.epoch, resume.offset) if resume is not None else None


def _int(value: int | None) -> int:
    assert value is not None, "client-visible requests carry the client's id"
    return value
