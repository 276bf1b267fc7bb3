"""The process_* families (one series per worker with workers > 1), the body-size histograms,
and `gateway --version` against gateway_build_info."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web

from tests.conftest import GatewaySubprocess, StartGateway, StartUpstream
from tests.support import metric, proxy_config, scrape, url, wait_for
from tests.support.scraping import samples

Spawn = Callable[..., Awaitable[GatewaySubprocess]]


async def test_one_process_exports_its_process_families(
    upstream: StartUpstream, gateway: StartGateway
) -> None:
    up = await upstream()
    gw = await gateway(proxy_config(up.url))
    text = await scrape(gw)
    assert metric(text, "process_resident_memory_bytes") > 10 * 1024 * 1024
    assert metric(text, "process_open_fds") >= 3
    assert metric(text, "process_cpu_seconds_total") > 0
    assert metric(text, "process_max_fds") >= metric(text, "process_open_fds")


async def test_body_sizes_are_observed_per_route(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    async def answer(_: web.Request) -> web.Response:
        return web.Response(body=b"r" * 5000)

    up = await upstream(answer)
    gw = await gateway(proxy_config(up.url))
    async with http.post(url(gw, "/svc/a"), data=b"q" * 1000) as response:
        assert len(await response.read()) == 5000
    async with http.get(url(gw, "/svc/b")) as response:
        assert len(await response.read()) == 5000
    async with http.head(url(gw, "/svc/c")) as response:
        assert response.status == 200
    async with http.get(url(gw, "/nowhere")) as response:
        problem = await response.read()
    text = await scrape(gw)
    assert metric(text, "gateway_request_size_bytes_count", route="svc") == 3
    assert metric(text, "gateway_request_size_bytes_sum", route="svc") == 1000
    assert metric(text, "gateway_response_size_bytes_sum", route="svc") == 10000  # HEAD sends no body
    assert metric(text, "gateway_response_size_bytes_bucket", route="svc", le="4096.0") == 1  # the HEAD
    assert metric(text, "gateway_response_size_bytes_bucket", route="svc", le="16384.0") == 3
    assert metric(text, "gateway_response_size_bytes_sum", route="_unmatched") == len(problem)


async def test_each_worker_has_its_own_process_series(upstream: StartUpstream, spawn_gateway: Spawn) -> None:
    up = await upstream()
    gw = await spawn_gateway(proxy_config(up.url, gateway="workers = 2"))

    async def text() -> str:
        async with aiohttp.ClientSession() as http, http.get(gw.admin("/metrics")) as response:
            return await response.text()

    async def both_workers() -> bool:
        found = {s.labels.get("worker") for s in samples(await text(), "process_resident_memory_bytes")}
        return found == {"0", "1"}

    await wait_for(both_workers, timeout=15.0)
    scraped = await text()
    for name in ("process_resident_memory_bytes", "process_open_fds", "process_cpu_seconds_total"):
        by_worker = {s.labels["worker"]: s.value for s in samples(scraped, name)}
        assert set(by_worker) == {"0", "1"}, (name, by_worker)
        assert all(value > 0 for value in by_worker.values()), (name, by_worker)


async def test_version_matches_build_info(upstream: StartUpstream, gateway: StartGateway) -> None:
    done = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "gateway", "--version"],
                                   capture_output=True, text=True, check=True)
    name, version = done.stdout.split()
    up = await upstream()
    gw = await gateway(proxy_config(up.url))
    assert name == "gateway"
    assert metric(await scrape(gw), "gateway_build_info", version=version) == 1
