"""Fixtures shared by the integration tests: real processes on loopback ports picked at run time."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import zmq

from tests.io.harness import RouterProcess, push_socket, running_router


@pytest.fixture
def router() -> Iterator[RouterProcess]:
    """A fresh router process for one test."""
    with running_router() as process:
        yield process


@pytest.fixture
def push(router: RouterProcess) -> Iterator[zmq.Socket[bytes]]:
    """A raw PUSH producer connected to ``router``."""
    with push_socket(router.endpoints["pull"]) as sock:
        yield sock
