"""Reading a running gateway the way a user and an SRE do: its URLs, the statuses and
problem documents it answers with, and its /metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from gateway.process import GatewayProcess
from tests.support.problems import assert_problem


def url(process: GatewayProcess, path: str) -> str:
    return f"http://127.0.0.1:{process.port}{path}"


async def status_of(http: aiohttp.ClientSession, target: str, method: str = "GET", **options: Any) -> int:
    """One request; its status once the whole body is read."""
    async with http.request(method, target, **options) as response:
        await response.read()
        return response.status


async def statuses(http: aiohttp.ClientSession, target: str, count: int, **options: Any) -> list[int]:
    """``count`` GETs one after another; the status of each."""
    return [await status_of(http, target, **options) for _ in range(count)]


async def concurrent_statuses(http: aiohttp.ClientSession, target: str, count: int) -> list[int]:
    """``count`` GETs at once; their statuses in the order they were sent."""
    return list(await asyncio.gather(*(status_of(http, target) for _ in range(count))))


async def problem_of(response: aiohttp.ClientResponse, expected: int, route: str | None = "svc") -> dict[str, Any]:
    """Check that an answer is the gateway's own problem document with status ``expected``, for
    route ``route`` (svc, the name ``proxy_config`` gives it, unless told; None: any or none)."""
    return assert_problem(response.status, response.headers, await response.read(), expected, route=route)


async def scrape(process: GatewayProcess) -> str:
    async with aiohttp.ClientSession() as session, session.get(
        f"http://127.0.0.1:{process.admin_port}/metrics"
    ) as response:
        return await response.text()


def samples(text: str, name: str, **labels: str) -> list[Sample]:
    """Every sample called ``name`` in Prometheus text whose labels include ``labels``."""
    return [
        sample
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    ]


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text (0 when absent)."""
    found = samples(text, name, **labels)
    return float(found[0].value) if found else 0.0


def total(text: str, name: str, **labels: str) -> float:
    """The sum of every sample called ``name`` whose labels include ``labels``."""
    return sum(float(sample.value) for sample in samples(text, name, **labels))


async def metric_of(process: GatewayProcess, name: str, **labels: str) -> float:
    """Scrape ``process`` and read one sample (0 when absent)."""
    return metric(await scrape(process), name, **labels)


async def wait_for(
    condition: Callable[[], Awaitable[bool]], timeout: float = 3.0, message: str = "condition not met in time"
) -> None:
    """Poll ``condition`` until it holds; fail the test with ``message`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, message
        await asyncio.sleep(0.05)
