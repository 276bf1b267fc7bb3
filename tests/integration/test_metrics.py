"""Exact metric values after known traffic, and the admin endpoints."""

from __future__ import annotations

import asyncio
import os
import shutil

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

import gateway as gateway_package
from gateway.process import GatewayProcess
from tests.conftest import StartGateway, StartUpstream, scrape, url
from tests.support import free_port

PROMTOOL = "/usr/bin/promtool"


def total(text: str, name: str, **labels: str) -> float:
    """The sum of every sample called ``name`` whose labels include ``labels``."""
    found = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                found += float(sample.value)
    return found


def series(text: str, name: str) -> list[dict[str, str]]:
    """The label sets of every sample called ``name``."""
    return [
        dict(sample.labels)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


async def _status_handler(request: web.Request) -> web.StreamResponse:
    if request.method == "POST":
        return web.Response(status=201, text="created")
    if request.path.endswith("/missing"):
        return web.Response(status=404, text="no such thing")
    return web.Response(text="ok")


def traffic_config(target: str, dead: str) -> str:
    return f"""
        [upstreams.svc]
        targets = ["{target}"]
        [upstreams.dead]
        targets = ["{dead}"]
        [[plugins]]
        use = "request_id"
        [[routes]]
        name = "svc"
        path = "/svc/{{rest:.*}}"
        upstream = "svc"
          [[routes.plugins]]
          use = "headers"
          request = {{ set = {{ "X-From-Gateway" = "1" }} }}
        [[routes]]
        name = "down"
        path = "/down/{{rest:.*}}"
        upstream = "dead"
    """


async def _send_known_traffic(gw: GatewayProcess, http: aiohttp.ClientSession) -> None:
    expected = [
        ("GET", "/svc/a", 200), ("GET", "/svc/b", 200), ("POST", "/svc/c", 201),
        ("GET", "/svc/missing", 404), ("GET", "/nowhere", 404), ("GET", "/down/x", 502),
    ]
    for method, path, status in expected:
        async with http.request(method, url(gw, path)) as response:
            await response.read()
            assert response.status == status, (method, path)


async def test_request_counters_after_known_traffic(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    up = await upstream(_status_handler)
    gw = await gateway(traffic_config(up.url, f"http://127.0.0.1:{free_port()}"))
    await _send_known_traffic(gw, http)
    text = await scrape(gw)

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


async def test_plugin_durations_are_counted_per_route_and_plugin(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    up = await upstream(_status_handler)
    gw = await gateway(traffic_config(up.url, f"http://127.0.0.1:{free_port()}"))
    await _send_known_traffic(gw, http)
    text = await scrape(gw)
    name = "gateway_plugin_duration_seconds_count"
    assert total(text, name, route="svc", plugin="request_id") == 4
    assert total(text, name, route="svc", plugin="headers") == 4
    assert total(text, name, route="down", plugin="request_id") == 1
    assert total(text, name, route="down", plugin="headers") == 0
    assert total(text, name, route="_unmatched") == 0  # no chain runs for an unmatched path
    assert all(r.headers["X-From-Gateway"] == "1" for r in up.requests)


async def test_upstream_counters_by_outcome(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    up = await upstream(_status_handler)
    gw = await gateway(traffic_config(up.url, f"http://127.0.0.1:{free_port()}"))
    await _send_known_traffic(gw, http)
    text = await scrape(gw)
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
    release = asyncio.Event()

    async def slow(_: web.Request) -> web.StreamResponse:
        async with asyncio.timeout(5):
            await release.wait()
        return web.Response(text="late")

    up = await upstream(slow)
    gw = await gateway(f"""
        [upstreams.slow]
        targets = ["{up.url}"]
        [[routes]]
        name = "slow"
        path = "/slow"
        upstream = "slow"
        timeout = "200ms"
    """)
    try:
        async with http.get(url(gw, "/slow")) as response:
            assert response.status == 504
    finally:
        release.set()
    text = await scrape(gw)
    assert total(text, "gateway_upstream_requests_total", route="slow", upstream="slow", outcome="timeout") == 1
    assert total(text, "gateway_upstream_requests_total", route="slow", outcome="ok") == 0
    assert total(text, "gateway_requests_total", route="slow", method="GET", code="504", source="gateway") == 1


async def test_inflight_gauge_follows_a_slow_request(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    arrived, release = asyncio.Event(), asyncio.Event()

    async def slow(_: web.Request) -> web.StreamResponse:
        arrived.set()
        async with asyncio.timeout(5):
            await release.wait()
        return web.Response(text="done")

    up = await upstream(slow)
    gw = await gateway(f"""
        [upstreams.slow]
        targets = ["{up.url}"]
        [[routes]]
        name = "slow"
        path = "/slow"
        upstream = "slow"
        [[routes]]
        name = "other"
        path = "/other"
        upstream = "slow"
    """)

    async def call() -> tuple[int, bytes]:
        async with http.get(url(gw, "/slow")) as response:
            return response.status, await response.read()

    task = asyncio.create_task(call())
    try:
        async with asyncio.timeout(5):
            await arrived.wait()
        during = await scrape(gw)
        assert total(during, "gateway_inflight_requests", route="slow") == 1
        assert total(during, "gateway_inflight_requests", route="other") == 0
    finally:
        release.set()
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


async def test_metrics_pass_promtool_check(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    promtool = PROMTOOL if os.access(PROMTOOL, os.X_OK) else shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("promtool is required under CI=true but was not found")
        pytest.skip("promtool not installed")
    up = await upstream(_status_handler)
    gw = await gateway(traffic_config(up.url, f"http://127.0.0.1:{free_port()}"))
    await _send_known_traffic(gw, http)  # every kind of series present, histograms filled
    text = await scrape(gw)
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
    gw = await gateway(f"""
        [upstreams.svc]
        targets = ["{up.url}"]
        breaker = {{ failures = 3 }}
        [[routes]]
        name = "svc-route"
        path = "/svc/{{rest:.*}}"
        upstream = "svc"
    """)
    async with http.get(f"http://127.0.0.1:{gw.admin_port}/status") as response:
        assert response.status == 200
        assert response.content_type == "text/html"
        page = await response.text()
    assert "svc-route" in page
    assert f"{up.url} (up)" in page
    assert "<td>closed</td>" in page
