"""Active health checks, passive marking and recovery, against real upstreams."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.process import GatewayProcess
from tests.conftest import StartGateway, StartUpstream, metric, scrape, url
from tests.support import assert_problem, free_port

UP = "gateway_upstream_target_up"
REQUESTS = "gateway_upstream_requests_total"
StartOnPort = Callable[[int], Awaitable[list[web.Request]]]


def config(*targets: str, health: str, extra: str = "") -> str:
    listed = ", ".join(f'"{t}"' for t in targets)
    return f"""
        [upstreams.svc]
        targets = [{listed}]
        timeout = {{ connect = "1s", response = "5s" }}
        health = {{ {health} }}
        {extra}
        [[routes]]
        name = "svc"
        path = "/svc/{{rest:.*}}"
        upstream = "svc"
    """


async def target_up(gw: GatewayProcess, target: str) -> float:
    return metric(await scrape(gw), UP, upstream="svc", target=target)


async def wait_for_target(gw: GatewayProcess, target: str, up: float, within: float = 3.0) -> None:
    for _ in range(int(within / 0.02)):
        if await target_up(gw, target) == up:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{target} never became {'up' if up else 'down'}")


@pytest.fixture
async def server_on_port() -> AsyncIterator[StartOnPort]:
    """Start a plain upstream on a given port (a target coming back); returns what it saw."""
    servers: list[TestServer] = []

    async def start(port: int) -> list[web.Request]:
        seen: list[web.Request] = []

        async def handler(request: web.Request) -> web.Response:
            seen.append(request)
            return web.json_response({"revived": True})

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        server = TestServer(app, host="127.0.0.1", port=port)
        await server.start_server()
        servers.append(server)
        return seen

    yield start
    for server in servers:
        await server.close()


async def test_one_dead_target_all_gets_succeed_and_it_recovers_when_back(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession,
    server_on_port: StartOnPort,
) -> None:
    live = await upstream()
    port = free_port()
    dead = f"http://127.0.0.1:{port}"
    gw = await gateway(config(
        dead, live.url,
        health='path = "/healthz", interval = "100ms", timeout = "200ms", unhealthy_after = 2, healthy_after = 2',
        extra='retry = { attempts = 2, on = ["connect"], backoff = "1ms", max_backoff = "5ms" }',
    ))
    for _ in range(20):
        async with http.get(url(gw, "/svc/x")) as response:
            assert response.status == 200
    await wait_for_target(gw, dead, 0)
    assert await target_up(gw, live.url) == 1
    text = await scrape(gw)
    refused = metric(text, REQUESTS, route="svc", upstream="svc", code="", outcome="connect_error")
    assert metric(text, "gateway_retries_total", route="svc", upstream="svc", reason="connect") == refused
    assert metric(text, REQUESTS, route="svc", upstream="svc", code="200", outcome="ok") == 20
    assert refused <= 2  # marked down after two failures, then skipped

    seen = await server_on_port(port)
    await wait_for_target(gw, dead, 1)
    assert [r.path for r in seen] and all(r.path == "/healthz" for r in seen)  # brought back by probes
    for _ in range(4):
        async with http.get(url(gw, "/svc/x")) as response:
            assert response.status == 200
    assert sum(r.path == "/svc/x" for r in seen) == 2  # round robin again includes it


async def test_all_targets_down_is_503_without_calling_them(
    gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    gw = await gateway(config(dead, health='interval = "100ms", timeout = "100ms", unhealthy_after = 1'))
    await wait_for_target(gw, dead, 0)
    async with http.get(url(gw, "/svc/x")) as response:
        document = assert_problem(response.status, response.headers, await response.read(), 503, route="svc")
        assert response.headers["Retry-After"] == "1"
    assert "down" in document["detail"]
    text = await scrape(gw)
    assert metric(text, REQUESTS, route="svc", upstream="svc", code="", outcome="connect_error") == 0
    assert metric(text, "gateway_requests_total", route="svc", code="503", source="gateway") == 1


async def test_passive_5xx_marks_a_target_down_and_probes_bring_it_back(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    async def app(request: web.Request) -> web.Response:
        return web.Response(status=200 if request.path == "/ready" else 500)

    up = await upstream(app)
    gw = await gateway(config(
        up.url, health='path = "/ready", interval = "300ms", unhealthy_after = 2, healthy_after = 2'))
    for _ in range(2):
        async with http.get(url(gw, "/svc/x")) as response:
            assert response.status == 500
    assert await target_up(gw, up.url) == 0
    async with http.get(url(gw, "/svc/x")) as response:
        assert_problem(response.status, response.headers, await response.read(), 503, route="svc")
    calls = sum(r.path == "/svc/x" for r in up.requests)
    assert calls == 2
    await wait_for_target(gw, up.url, 1)
    async with http.get(url(gw, "/svc/x")) as response:
        assert response.status == 500  # back in rotation: the app answers again
    probes = [r for r in up.requests if r.path == "/ready"]
    assert probes and all(r.headers.get("User-Agent") == "gateway-health-check" for r in probes)


async def test_without_health_checks_every_target_stays_up(
    gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    gw = await gateway(f"""
        [upstreams.svc]
        targets = ["{dead}"]
        [[routes]]
        name = "svc"
        path = "/svc/{{rest:.*}}"
        upstream = "svc"
    """)
    for _ in range(3):  # nothing could bring it back, so nothing marks it down
        async with http.get(url(gw, "/svc/x")) as response:
            assert_problem(response.status, response.headers, await response.read(), 502, route="svc")
    assert await target_up(gw, dead) == 1
