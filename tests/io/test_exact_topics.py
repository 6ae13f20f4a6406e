"""Topics that share a prefix never leak into each other, end to end through real zmq sockets.

A second edge subscribes to every topic so that the router publishes them all; the edge under
test must still receive exactly the topics it subscribed to.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.wire import Registered, SubscribeOk
from tests.io.harness import RouterProcess, TestEdge, push_socket, running_router

pytestmark = pytest.mark.timeout(300)

_examples = itertools.count()

segments = st.text(alphabet="ab_", min_size=1, max_size=3)
topic_paths = st.lists(segments, min_size=1, max_size=3).map(lambda parts: "/" + "/".join(parts))


@pytest.fixture(scope="module")
def router() -> Iterator[RouterProcess]:
    with running_router() as process:
        yield process


@pytest.fixture(scope="module")
def push(router: RouterProcess) -> Iterator[zmq.Socket[bytes]]:
    with push_socket(router.endpoints["pull"]) as sock:
        yield sock


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), paths=st.sets(topic_paths, min_size=2, max_size=8))
async def test_prefix_sharing_topics_never_leak(
    router: RouterProcess, push: zmq.Socket[bytes], data: st.DataObject, paths: set[str]
) -> None:
    namespace = f"/x{next(_examples)}"
    topics = sorted(namespace + path for path in paths)
    wanted = set(data.draw(st.sets(st.sampled_from(topics), min_size=1)))
    sentinel = namespace + "/zz_end"
    async with TestEdge(router.endpoints) as edge, TestEdge(router.endpoints) as everything:
        assert isinstance(await everything.register(namespace + "all"), Registered)
        for topic in topics:
            assert isinstance(await everything.subscribe(namespace + "all", topic), SubscribeOk)
        assert isinstance(await edge.register(namespace + "c"), Registered)
        for topic in [*sorted(wanted), sentinel]:
            assert isinstance(await edge.subscribe(namespace + "c", topic), SubscribeOk)
        for _ in range(200):
            push.send_multipart([sentinel.encode(), b"probe"])
            try:
                await edge.next_message(timeout=0.05)
                break
            except TimeoutError:
                continue
        edge.drain()
        for topic in topics:
            push.send_multipart([topic.encode(), topic.encode()])
        push.send_multipart([sentinel.encode(), b"end"])
        received: list[bytes] = []
        while True:
            meta, payload = await edge.next_message()
            if payload == b"end":
                break
            if payload != b"probe":
                assert meta.topic == payload, "a frame carried another topic's payload"
                received.append(meta.topic)
    assert sorted(received) == sorted(topic.encode() for topic in wanted)
