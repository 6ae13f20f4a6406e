"""RtcPeer's writing, with stand-in data channels: which channel each frame takes, how the
channels' ``bufferedAmount`` holds data back in the session's queue, and how a subscription's
opening and closing bind and free a video slot."""

from __future__ import annotations

from typing import Any, cast

import pytest

from edges.core.client_wire import Pong, Subscribed, Unsubscribed, encode_server_message
from edges.core.drops import DropReason
from edges.core.output import data_frame
from edges.core.session import ClientSession
from edges.webrtc.peer import Channels, RtcPeer
from edges.webrtc.slots import ViewerVideo
from edges.webrtc.video import VideoSlot, VideoSources
from router.core.policy import DeliveryPolicy
from tests.edges.output import queue_frame

RELIABLE, BEST_EFFORT, LATEST = 0, 1, 2


class FakeChannel:
    """Counts what is sent as buffered until the test says SCTP took it."""

    def __init__(self, label: str, max_message: int = 1 << 20) -> None:
        self.label = label
        self.readyState = "open"
        self.bufferedAmount = 0
        self.sent: list[str | bytes] = []
        self.max_message = max_message

    def send(self, data: str | bytes) -> None:
        if len(data) > self.max_message:
            raise ValueError("too large for the remote party")
        self.sent.append(data)
        self.bufferedAmount += len(data)


class Host:
    def __init__(self) -> None:
        self.drained_count = 0

    def text_received(self, peer: RtcPeer, text: str) -> None: ...

    def binary_received(self, peer: RtcPeer, data: bytes) -> None: ...

    def drained(self, peer: RtcPeer) -> None:
        self.drained_count += 1

    def peer_gone(self, peer: RtcPeer) -> None: ...


@pytest.fixture
async def peer() -> RtcPeer:
    session = ClientSession("c1")
    session.open_lane(RELIABLE, DeliveryPolicy(kind="reliable"))
    session.open_lane(BEST_EFFORT, DeliveryPolicy(kind="best_effort"))
    session.open_lane(LATEST, DeliveryPolicy(kind="latest"))
    created = RtcPeer(Host(), session, "resource", write_buffer_high=1000)
    fakes = (FakeChannel("control"), FakeChannel("reliable"), FakeChannel("lossy", max_message=600))
    created.channels = Channels(*cast(Any, fakes))
    return created


def push(peer: RtcPeer, channel: int, offset: int, size: int = 100) -> bytes:
    """Queue a data frame; returns its bytes as the data channel gets them."""
    frame = data_frame(channel, offset, b"x" * size)
    queue_frame(peer.session, frame)
    return frame.frame()


async def test_each_frame_takes_the_channel_of_its_topics_policy(peer: RtcPeer) -> None:
    reliable = push(peer, RELIABLE, 1)
    best_effort = push(peer, BEST_EFFORT, 1)
    latest = push(peer, LATEST, 1)
    peer.session.send(Pong(id=7))
    peer.write()
    assert channels(peer).control.sent == ['{"op":"pong","id":7}']
    assert channels(peer).reliable.sent == [reliable]
    assert channels(peer).lossy.sent == [best_effort, latest]


async def test_frames_wait_in_the_queue_while_the_channels_are_full(peer: RtcPeer) -> None:
    frames = [push(peer, BEST_EFFORT, offset, size=386) for offset in range(1, 11)]
    peer.write()
    lossy = channels(peer).lossy
    assert lossy.sent == frames[:3]
    push(peer, RELIABLE, 1)
    peer.session.send(Pong(id=1))
    peer.write()
    assert lossy.sent == frames[:3]
    assert channels(peer).reliable.sent == []
    assert channels(peer).control.sent == ['{"op":"pong","id":1}']

    lossy.bufferedAmount = 200
    peer._drained()
    assert len(lossy.sent) == 5
    assert cast(Host, peer.host).drained_count == 1


async def test_frames_carried_another_way_are_not_sent(peer: RtcPeer) -> None:
    video = ViewerVideo(VideoSources(), lambda topic: None)
    video.by_channel[LATEST] = ("/video", "0", VideoSlot())
    peer.video = video
    push(peer, LATEST, 1)
    best_effort = push(peer, BEST_EFFORT, 1)
    peer.write()
    assert channels(peer).lossy.sent == [best_effort]


async def test_a_frame_too_large_for_the_remote_party_is_counted(peer: RtcPeer) -> None:
    push(peer, BEST_EFFORT, 1, size=700)
    small = push(peer, BEST_EFFORT, 2)
    peer.write()
    assert channels(peer).lossy.sent == [small]
    assert peer.session.dropped[DropReason.OVERSIZE] == 1


async def test_a_video_subscription_binds_a_slot_and_its_track_follows_subscribed(peer: RtcPeer) -> None:
    video = ViewerVideo(VideoSources(), lambda topic: None)
    video.free.append(("0", VideoSlot()))
    peer.video = video
    subscribed = Subscribed(
        id=1, topic="/cam", channel=LATEST, epoch=1, offset=0, content_type="image/jpeg", policy="latest"
    )
    try:
        peer.session.send(subscribed)
        push(peer, LATEST, 1)
        peer.write()
        assert channels(peer).control.sent == [
            encode_server_message(subscribed),
            '{"op":"track","topic":"/cam","channel":2,"mid":"0"}',
        ]
        assert channels(peer).lossy.sent == [], "the slot carries the topic's frames"
        peer.session.send(Unsubscribed(id=2, topic="/cam"))
        peer.write()
        assert not video.carries(LATEST)
        assert [mid for mid, _ in video.free] == ["0"]
    finally:
        video.close()


class _Fakes:
    control: FakeChannel
    reliable: FakeChannel
    lossy: FakeChannel


def channels(peer: RtcPeer) -> _Fakes:
    return cast(_Fakes, peer.channels)
