"""Exact metric values after known traffic, and the admin endpoints."""

from __future__ import annotations

import asyncio
import os
import shutil

import aiohttp
import pytest
from aiohttp import web

import gateway as gateway_package
from tests.conftest import StartGateway, StartUpstream, Upstream
from tests.support import free_port, proxy_config, scrape, url
from tests.support.resilience import held_upstream
from tests.support.scraping import samples, status_of, total

PROMTOOL = "/usr/bin/promtool"


def series(text: str, name: str) -> list[dict[str, str]]:
    """The label sets of every sample called ``name``."""
    return [dict(sample.labels) for sample in samples(text, name)]


async def _status_handler(request: web.Request) -> web.StreamResponse:
    if request.method == "POST":
        return web.Response(status=201, text="created")
    if request.path.endswith("/missing"):
        return web.Response(status=404, text="no such thing")
    return web.Response(text="ok")


def traffic_config(target: str, dead: str) -> str:
    """Route svc (with a headers plugin) to ``target``, route down to ``dead``; request_id on all."""
    return proxy_config(target, upstream="", after=f"""
        [[routes.plugins]]
        use = "headers"
        request = {{ set = {{ "X-From-Gateway" = "1" }} }}
        [[routes]]
        name = "down"
        path = "/down/{{rest:.*}}"
        upstream = "dead"
        [upstreams.dead]
        targets = ["{dead}"]
        [[plugins]]
        use = "request_id"
    """)


KNOWN_TRAFFIC = [
    ("GET", "/svc/a", 200), ("GET", "/svc/b", 200), ("POST", "/svc/c", 201),
    ("GET", "/svc/missing", 404), ("GET", "/nowhere", 404), ("GET", "/down/x", 502),
]


@pytest.fixture
async def known_traffic(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> tuple[Upstream, str]:
    """``KNOWN_TRAFFIC`` sent through ``traffic_config`` (each answer as expected); the upstream
    and the gateway's metrics afterwards."""
    up = await upstream(_status_handler)
    gw = await gateway(traffic_config(up.url, f"http://127.0.0.1:{free_port()}"))
    for method, path, expected in KNOWN_TRAFFIC:
        assert await status_of(http, url(gw, path), method) == expected, (method, path)
    return up, await scrape(gw)


async def test_request_counters_after_known_traffic(known_traffic: tuple[Upstream, str]) -> None:
    _, text = known_traffic

    def requests(route: str, method: str, code: str, source: str) -> float:
        return total(text, "gateway_requests_total", route=route, method=method, code=code, source=source)

    assert requests("svc", "GET", "200", "upstream") == 2
    assert requests("svc", "POST", "201", "upstream") == 1
    assert requests("svc", "GET", "404", "upstream") == 1
    assert requests("_unmatched", "GET", "404", "gateway") == 1
    assert requests("down", "GET", "502", "gateway") == 1
    assert total(text, "gateway_requests_total") == 6
    # Labels are config names: the raw paths never appear.
    assert {s["route"] for s in series(text, "gateway_requests_total")} == {"svc", "_unmatched", "down"}
    assert "/nowhere" not in text

    assert total(text, "gateway_request_duration_seconds_count", route="svc", method="GET") == 3
    assert total(text, "gateway_request_duration_seconds_count", route="svc", method="POST") == 1
    assert total(text, "gateway_request_duration_seconds_count", route="_unmatched", method="GET") == 1
    assert total(text, "gateway_request_duration_seconds_count", route="down", method="GET") == 1


async def test_plugin_durations_are_counted_per_route_and_plugin(known_traffic: tuple[Upstream, str]) -> None:
    up, text = known_traffic
    name = "gateway_plugin_duration_seconds_count"
    assert total(text, name, route="svc", plugin="request_id") == 4
    assert total(text, name, route="svc", plugin="headers") == 4
    assert total(text, name, route="down", plugin="request_id") == 1
    assert total(text, name, route="down", plugin="headers") == 0
    assert total(text, name, route="_unmatched") == 0  # no chain runs for an unmatched path
    assert all(r.headers["X-From-Gateway"] == "1" for r in up.requests)


async def test_upstream_counters_by_outcome(known_traffic: tuple[Upstream, str]) -> None:
    _, text = known_traffic
    name = "gateway_upstream_requests_total"
    assert total(text, name, route="svc", upstream="svc", outcome="ok") == 4
    assert total(text, name, route="svc", upstream="svc", code="200", outcome="ok") == 2
    assert total(text, name, route="svc", upstream="svc", code="201", outcome="ok") == 1
    assert total(text, name, route="svc", upstream="svc", code="404") == 1
    assert total(text, name, route="down", upstream="dead", outcome="connect_error") == 1
    assert total(text, name, route="down", upstream="dead", outcome="ok") == 0
    assert total(text, name) == 5  # nothing was counted for the unmatched request
    assert total(text, "gateway_upstream_request_duration_seconds_count", route="svc", upstream="svc") == 4
    assert total(text, "gateway_upstream_request_duration_seconds_count", route="down", upstream="dead") == 1


async def test_upstream_timeout_is_counted(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    held, up = await held_upstream(upstream)
    gw = await gateway(proxy_config(up.url, name="slow", path="/slow", upstream="", route='timeout = "200ms"'))
    try:
        assert await status_of(http, url(gw, "/slow")) == 504
    finally:
        held.release.set()
    text = await scrape(gw)
    assert total(text, "gateway_upstream_requests_total", route="slow", upstream="svc", outcome="timeout") == 1
    assert total(text, "gateway_upstream_requests_total", route="slow", outcome="ok") == 0
    assert total(text, "gateway_requests_total", route="slow", method="GET", code="504", source="gateway") == 1


async def test_inflight_gauge_follows_a_slow_request(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    held, up = await held_upstream(upstream, "done")
    other = '[[routes]]\nname = "other"\npath = "/other"\nupstream = "svc"'
    gw = await gateway(proxy_config(up.url, name="slow", path="/slow", upstream="", after=other))

    async def call() -> tuple[int, bytes]:
        async with http.get(url(gw, "/slow")) as response:
            return response.status, await response.read()

    task = asyncio.create_task(call())
    try:
        async with asyncio.timeout(5):
            await held.arrived.wait()
        during = await scrape(gw)
        assert total(during, "gateway_inflight_requests", route="slow") == 1
        assert total(during, "gateway_inflight_requests", route="other") == 0
    finally:
        held.release.set()
    async with asyncio.timeout(5):
        assert await task == (200, b"done")
    after = await scrape(gw)
    assert total(after, "gateway_inflight_requests", route="slow") == 0
    assert total(after, "gateway_inflight_requests") == 0


async def test_build_info(gateway: StartGateway) -> None:
    gw = await gateway("")
    text = await scrape(gw)
    assert total(text, "gateway_build_info", version=gateway_package.__version__) == 1
    assert len(series(text, "gateway_build_info")) == 1


async def test_metrics_pass_promtool_check(known_traffic: tuple[Upstream, str]) -> None:
    promtool = PROMTOOL if os.access(PROMTOOL, os.X_OK) else shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("promtool is required under CI=true but was not found")
        pytest.skip("promtool not installed")
    _, text = known_traffic  # every kind of series present, histograms filled
    process = await asyncio.create_subprocess_exec(
        promtool, "check", "metrics",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(20):
        output, _ = await process.communicate(text.encode())
    assert process.returncode == 0, output.decode()


async def test_healthz_and_readyz(gateway: StartGateway, http: aiohttp.ClientSession) -> None:
    gw = await gateway("")
    for path in ("/healthz", "/readyz"):
        async with http.get(f"http://127.0.0.1:{gw.admin_port}{path}") as response:
            assert response.status == 200, path


async def test_status_page_shows_routes_targets_and_breakers(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    up = await upstream()
    gw = await gateway(proxy_config(up.url, name="svc-route", upstream="breaker = { failures = 3 }"))
    async with http.get(f"http://127.0.0.1:{gw.admin_port}/status") as response:
        assert response.status == 200
        assert response.content_type == "text/html"
        assert "<script" in await response.text()  # the numbers come from /status.json
    async with http.get(f"http://127.0.0.1:{gw.admin_port}/status.json") as response:
        document = await response.json()
    assert [r["name"] for r in document["routes"]] == ["svc-route"]
    assert document["upstreams"][0]["breaker"] == "closed"
    assert document["upstreams"][0]["targets"] == [
        {"url": up.url, "health": "in rotation (no health check)", "breaker": "closed"}]
