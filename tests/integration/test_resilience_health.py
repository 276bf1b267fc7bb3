"""Active health checks, passive marking and recovery, against real upstreams."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from gateway.process import GatewayProcess
from tests.conftest import StartGateway, StartUpstream
from tests.support import free_port, metric, metric_of, proxy_config, scrape, url, wait_for
from tests.support.config import DEFAULT_TIMEOUT
from tests.support.scraping import problem_of, status_of, statuses

UP = "gateway_upstream_target_up"
REQUESTS = "gateway_upstream_requests_total"


def config(*targets: str, health: str, extra: str = "") -> str:
    return proxy_config(*targets, upstream=f"{DEFAULT_TIMEOUT}\nhealth = {{ {health} }}\n{extra}")


async def target_up(gw: GatewayProcess, target: str) -> float:
    return await metric_of(gw, UP, upstream="svc", target=target)


async def wait_for_target(gw: GatewayProcess, target: str, up: float) -> None:
    async def reached() -> bool:
        return await target_up(gw, target) == up

    await wait_for(reached, 3.0, f"{target} never became {'up' if up else 'down'}")


async def test_one_dead_target_all_gets_succeed_and_it_recovers_when_back(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    live = await upstream()
    port = free_port()
    dead = f"http://127.0.0.1:{port}"
    gw = await gateway(config(
        dead, live.url,
        health='path = "/healthz", interval = "100ms", timeout = "200ms", unhealthy_after = 2, healthy_after = 2',
        extra='retry = { attempts = 2, on = ["connect"], backoff = "1ms", max_backoff = "5ms" }',
    ))
    assert await statuses(http, url(gw, "/svc/x"), 20) == [200] * 20
    await wait_for_target(gw, dead, 0)
    assert await target_up(gw, live.url) == 1
    text = await scrape(gw)
    refused = metric(text, REQUESTS, route="svc", upstream="svc", code="", outcome="connect_error")
    assert metric(text, "gateway_retries_total", route="svc", upstream="svc", reason="connect") == refused
    assert metric(text, REQUESTS, route="svc", upstream="svc", code="200", outcome="ok") == 20
    assert refused <= 2  # marked down after two failures, then skipped

    seen = (await upstream(port=port)).requests
    await wait_for_target(gw, dead, 1)
    assert [r.path for r in seen] and all(r.path == "/healthz" for r in seen)  # brought back by probes
    assert await statuses(http, url(gw, "/svc/x"), 4) == [200] * 4
    assert sum(r.path == "/svc/x" for r in seen) == 2  # round robin again includes it


async def test_all_targets_down_is_503_without_calling_them(
    gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    gw = await gateway(config(dead, health='interval = "100ms", timeout = "100ms", unhealthy_after = 1'))
    await wait_for_target(gw, dead, 0)
    async with http.get(url(gw, "/svc/x")) as response:
        document = await problem_of(response, 503)
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
    assert await statuses(http, url(gw, "/svc/x"), 2) == [500, 500]
    assert await target_up(gw, up.url) == 0
    async with http.get(url(gw, "/svc/x")) as response:
        await problem_of(response, 503)
    calls = sum(r.path == "/svc/x" for r in up.requests)
    assert calls == 2
    await wait_for_target(gw, up.url, 1)
    assert await status_of(http, url(gw, "/svc/x")) == 500  # back in rotation: the app answers again
    probes = [r for r in up.requests if r.path == "/ready"]
    assert probes and all(r.headers.get("User-Agent") == "gateway-health-check" for r in probes)


async def test_without_health_checks_every_target_stays_up(
    gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    gw = await gateway(proxy_config(dead, upstream=""))
    for _ in range(3):  # nothing could bring it back, so nothing marks it down
        async with http.get(url(gw, "/svc/x")) as response:
            await problem_of(response, 502)
    assert await target_up(gw, dead) == 1
