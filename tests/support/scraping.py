"""Reading a running gateway the way a user and an SRE do: its URLs and its /metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from gateway.process import GatewayProcess


def url(process: GatewayProcess, path: str) -> str:
    return f"http://127.0.0.1:{process.port}{path}"


async def scrape(process: GatewayProcess) -> str:
    async with aiohttp.ClientSession() as session, session.get(
        f"http://127.0.0.1:{process.admin_port}/metrics"
    ) as response:
        return await response.text()


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


async def metric_of(process: GatewayProcess, name: str, **labels: str) -> float:
    """Scrape ``process`` and read one sample (0 when absent)."""
    return metric(await scrape(process), name, **labels)


async def wait_for(condition: Callable[[], Awaitable[bool]], timeout: float = 3.0) -> None:
    """Poll ``condition`` until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)
