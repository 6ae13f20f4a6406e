"""Fixtures shared by the integration tests: real processes on loopback ports picked at run time."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import zmq

from tests.io.harness import RouterProcess


@pytest.fixture
def router() -> Iterator[RouterProcess]:
    """A fresh router process for one test."""
    process = RouterProcess()
    process.start()
    yield process
    process.stop()


@pytest.fixture
def push(router: RouterProcess) -> Iterator[zmq.Socket[bytes]]:
    """A raw PUSH producer connected to ``router``."""
    context = zmq.Context()
    sock = context.socket(zmq.PUSH)
    sock.linger = 0
    sock.connect(router.endpoints["pull"])
    yield sock
    sock.close()
    context.term()
