"""Hubs with subscribed clients, and what those clients read, for the edge core's tests."""

from __future__ import annotations

import json
from typing import Any

from edges.core.client_wire import (
    FRAME_RESTARTED,
    FRAME_SKIPPED,
    frame_type,
    parse_data_frame,
    parse_restarted_frame,
    parse_skipped_frame,
)
from edges.core.hub import EdgeHub, ToRouter
from edges.core.output import ClientOutput, Data, Framing, Reply, Skipped, data_frame
from edges.core.session import ClientSession, EdgeLimits
from router import wire
from router.core.policy import DeliveryPolicy
from tests.edges.output import wire_forms

RELIABLE = DeliveryPolicy(kind="reliable")
LATEST = DeliveryPolicy(kind="latest")


def resume_subscribe(
    hub: EdgeHub, client_id: str, position: tuple[int, int] | None, window: int | None = None, **reply: Any
) -> tuple[ClientSession, wire.Subscribe, dict[str, Any]]:
    """Connect ``client_id`` and subscribe it to /t from ``position``; the router answers with
    ``reply`` (epoch 5 and the reliable policy unless given). Returns the session, the router's
    subscribe and the client's ``subscribed``."""
    session = hub.open_client(client_id)
    hub.client_text(client_id, '{"op":"connect"}')
    register = router_request(hub)
    hub.router_message(wire.Registered(request_id=register.request_id, client_id=client_id, user="u"))
    request: dict[str, Any] = {"op": "subscribe", "id": 1, "topic": "/t"}
    if position is not None:
        request["resume"] = {"epoch": position[0], "offset": position[1]}
    if window is not None:
        request["window"] = window
    hub.client_text(client_id, json.dumps(request))
    subscribe = router_request(hub)
    fields: dict[str, Any] = {"epoch": 5, "content_type": "x", "policy": RELIABLE} | reply
    hub.router_message(
        wire.SubscribeOk(request_id=subscribe.request_id, client_id=client_id, topic="/t", **fields)
    )
    replies = [json.loads(item.text) for item in session.data_to_send() if isinstance(item, Reply)]
    return session, subscribe, replies[-1]


def frame(channel: int, offset: int, size: int = 0) -> Data:
    return data_frame(channel, offset, b"p" * size)


def view(out: list[ClientOutput]) -> list[tuple[object, ...]]:
    """What a client reads: ("data", channel, offset), ("skip", reasons, channel, first, last,
    count) and ("restart", channel, epoch)."""
    seen: list[tuple[object, ...]] = []
    for item in wire_forms(out):
        assert isinstance(item, bytes)
        if frame_type(item) == FRAME_RESTARTED:
            seen.append(("restart", *parse_restarted_frame(item)))
        elif frame_type(item) == FRAME_SKIPPED:
            skipped = parse_skipped_frame(item)
            seen.append(
                ("skip", skipped.reasons, skipped.channel, skipped.first, skipped.last, skipped.skipped)
            )
        else:
            data = parse_data_frame(item)
            seen.append(("data", data.channel, data.offset))
    return seen


def router_request(hub: EdgeHub) -> Any:
    """The one message the hub has for the router (typed loosely: each test knows which)."""
    [message] = [action.message for action in hub.drain_actions() if isinstance(action, ToRouter)]
    return message


def hub_client(
    policy: DeliveryPolicy,
    *,
    limits: EdgeLimits | None = None,
    recovery: bool = False,
    count: int = 1,
    framing: Framing | None = None,
) -> tuple[EdgeHub, list[ClientSession]]:
    """A hub whose clients c0, c1... are subscribed to /t (channel 0) at epoch 5, offset 0."""
    hub = EdgeHub(limits, recovery=recovery, framing=framing)
    sessions = []
    for number in range(count):
        client_id = f"c{number}"
        sessions.append(hub.open_client(client_id))
        hub.client_text(client_id, '{"op":"connect"}')
        register = router_request(hub)
        hub.router_message(wire.Registered(request_id=register.request_id, client_id=client_id, user="u"))
        hub.client_text(client_id, json.dumps({"op": "subscribe", "id": 1, "topic": "/t"}))
        request = router_request(hub)
        hub.router_message(subscribe_ok(request, policy))
        sessions[-1].data_to_send()
    hub.sessions_with_output()
    return hub, sessions


def subscribe_ok(
    request: wire.Subscribe,
    policy: DeliveryPolicy,
    epoch: int = 5,
    offset: int = 0,
    content_type: str = "x",
) -> wire.SubscribeOk:
    """The router's confirmation of ``request``, at ``epoch`` and ``offset``."""
    return wire.SubscribeOk(
        request_id=request.request_id,
        client_id=request.client_id,
        topic=request.topic,
        epoch=epoch,
        offset=offset,
        content_type=content_type,
        policy=policy,
    )


def frames_of(session: ClientSession) -> list[tuple[object, ...]]:
    return view([item for item in session.data_to_send() if isinstance(item, Data | Skipped)])
