"""One client as the hub holds it: its session, its subscriptions and its standing with the router. No I/O.

The client checks its own requests (what it may subscribe to or leave) and builds the messages
that register it and its subscriptions with a router; the hub sends them and indexes the
subscriptions by topic.
"""

from __future__ import annotations

from edges.core.client_wire import CloseCode
from edges.core.requests import RequestKind, RouterRequest, RouterRequests
from edges.core.session import ClientSession, CloseRequest, State
from edges.core.subscription import Subscription
from router import wire
from router.core.errors import ErrorCode

__all__ = ["EdgeClient"]


class EdgeClient:
    __slots__ = ("close_sent", "known_to_router", "session", "subscriptions")

    def __init__(self, session: ClientSession) -> None:
        self.session = session
        self.subscriptions: dict[str, Subscription] = {}
        """By topic, confirmed or not."""
        self.known_to_router = False
        """A RegisterClient was sent, and neither refused nor ended by the router since."""
        self.close_sent = False
        """The hub carried out the close the session started."""

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

    # ------------------------------------------------------------ requests

    def subscribe_refusal(self, name: str, most: int, topic_error: str | None) -> tuple[str, str] | None:
        """The error code and message to refuse a subscribe to ``name`` with, if the edge refuses
        it itself (``topic_error``: what is wrong with the name, if anything)."""
        if topic_error is not None:
            return ErrorCode.BAD_TOPIC, f"{name[:80]!r}: {topic_error}"
        sub = self.subscriptions.get(name)
        if sub is not None:
            state = "already subscribed" if sub.confirmed else "a subscribe is in progress"
            return ErrorCode.BAD_REQUEST, f"{state} on {name!r}"
        if len(self.subscriptions) >= most:
            return ErrorCode.LIMIT_EXCEEDED, f"at most {most} subscriptions per client"
        return None

    def unsubscribe_refusal(self, name: str) -> tuple[str, str] | None:
        sub = self.subscriptions.get(name)
        if sub is None:
            return ErrorCode.NOT_SUBSCRIBED, f"not subscribed to {name[:80]!r}"
        if not sub.confirmed:
            return ErrorCode.BAD_REQUEST, "wait for the subscribe reply first"
        return None

    def register_message(self, request_id: int, protocol: str, token: str | None) -> wire.RegisterClient:
        session = self.session
        return wire.RegisterClient(
            request_id=request_id,
            client_id=session.client_id,
            protocol=protocol,
            remote=session.remote,
            token=token,
        )

    # ------------------------------------------------------------ replies

    def registered(self, user: str, silent: bool) -> None:
        """The router accepted the client (``silent``: again, after a restart: it was told before)."""
        if silent:
            self.session.user = user
        else:
            self.session.registered(user)

    def registration_refused(self, code: str, message: str) -> None:
        self.known_to_router = False
        session = self.session
        session.send_error(None, code, message)
        if session.is_open:
            session.close(CloseCode.REFUSED, f"connect refused: {code}")

    def revoked(self, names: list[str]) -> list[Subscription]:
        """The confirmed subscriptions among ``names``, which a refreshed token no longer allows
        (one the client asked for again is not among them)."""
        subs = (self.subscriptions.get(name) for name in names)
        return [sub for sub in subs if sub is not None and sub.confirmed]

    # ------------------------------------------------------------ router restart

    def resync_messages(self, requests: RouterRequests, protocol: str) -> list[wire.EdgeMessage]:
        """What registers this client and its subscriptions with a new router: nothing before it
        sent ``connect`` or once it is closing. A subscribe the client still waits for is sent
        again; those it already has go ``silent`` (no reply reaches the client)."""
        session = self.session
        if session.state not in (State.REGISTERING, State.READY):
            return []
        client_id = session.client_id
        register = RouterRequest(RequestKind.REGISTER, client_id, silent=session.state is State.READY)
        messages: list[wire.EdgeMessage] = [
            self.register_message(requests.add(register), protocol, session.token)
        ]
        for name, sub in self.subscriptions.items():
            silent = sub.confirmed
            request_id = requests.add(
                RouterRequest(RequestKind.SUBSCRIBE, client_id, name, silent=silent, subscription=sub)
            )
            if not silent:
                sub.resend(request_id)
            messages.append(wire.Subscribe(request_id=request_id, client_id=client_id, topic=name))
        return messages
