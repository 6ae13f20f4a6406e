"""Scraping a process's ``/metrics`` in integration tests."""

from __future__ import annotations

import asyncio

from prometheus_client.parser import text_string_to_metric_families

from router.http_limits import parse_address

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class Scrape:
    """One ``/metrics`` response, parsed."""

    def __init__(self, text: str) -> None:
        self.samples: Samples = {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def __call__(self, name: str, **labels: str) -> float:
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def total(self, name: str, **labels: str) -> float:
        """The sum of the samples of ``name`` whose labels include ``labels`` (0 when none)."""
        return sum(v for (n, ls), v in self.samples.items() if n == name and set(labels.items()) <= ls)

    def labelled(self, name: str, **labels: str) -> float:
        """The one sample of ``name`` whose labels include ``labels``."""
        [found] = [v for (n, ls), v in self.samples.items() if n == name and set(labels.items()) <= ls]
        return found


async def scrape(address: str) -> Scrape:
    host, port = parse_address(address)
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET /metrics HTTP/1.1\r\nHost: {address}\r\n\r\n".encode())
    async with asyncio.timeout(5):
        response = await reader.read()
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert b"text/plain; version=0.0.4" in head
    return Scrape(body.decode())
