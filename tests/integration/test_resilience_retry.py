"""Retries against real failing upstreams on 127.0.0.1."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from gateway.process import GatewayProcess
from tests.conftest import StartGateway, StartUpstream, Upstream
from tests.support import free_port, metric, metric_of, proxy_config, scrape, url
from tests.support.resilience import answering, failing_and_healthy, held_upstream, upstream_answer
from tests.support.scraping import concurrent_statuses, problem_of, status_of, statuses

REQUESTS = "gateway_upstream_requests_total"
RETRIES = "gateway_retries_total"


def config(*targets: str, retry: str = 'attempts = 3, backoff = "1ms", max_backoff = "5ms"', extra: str = "",
           route: str = "", response: str = "5s") -> str:
    """Route svc to upstream svc, which retries (three attempts by default)."""
    timeout = f'timeout = {{ connect = "1s", response = "{response}" }}'
    return proxy_config(*targets, upstream=f"{timeout}\nretry = {{ {retry} }}\n{extra}", route=route)


def attempts(up: Upstream) -> list[str]:
    """The X-Gateway-Attempt header of each request the upstream received."""
    return [r.headers.get("X-Gateway-Attempt", "") for r in up.requests]


async def counted(gw: GatewayProcess, reason: str, **call: str) -> tuple[float, float]:
    """Route svc's retries for ``reason``, and its calls to upstream svc labelled ``call``."""
    text = await scrape(gw)
    return (metric(text, RETRIES, route="svc", upstream="svc", reason=reason),
            metric(text, REQUESTS, route="svc", upstream="svc", **call))


async def test_503_503_200_is_200_after_three_attempts(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    async def flaky(_: web.Request) -> web.Response:
        return web.json_response({"hit": up.hits}, status=503 if up.hits < 3 else 200)

    up = await upstream(flaky)
    gw = await gateway(config(up.url))
    async with http.get(url(gw, "/svc/x")) as response:
        assert (response.status, await response.json()) == (200, {"hit": 3})
    assert up.hits == 3
    assert attempts(up) == ["1", "2", "3"]
    assert await counted(gw, "503", code="503", outcome="http_error") == (2, 2)
    assert await counted(gw, "503", code="200", outcome="ok") == (2, 1)
    assert await metric_of(gw, "gateway_requests_total", route="svc", code="200", source="upstream") == 1


async def test_post_is_not_retried(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    up = await upstream(answering(503))
    gw = await gateway(config(up.url))
    assert await status_of(http, url(gw, "/svc/x"), "POST", data=b"order") == 503
    assert await status_of(http, url(gw, "/svc/x"), "POST") == 503  # no body to replay: still not idempotent
    assert up.hits == 2
    assert attempts(up) == ["1", "1"]
    assert metric(await scrape(gw), RETRIES, route="svc", upstream="svc", reason="503") == 0


async def test_connect_refused_on_post_is_retried_on_another_target_with_the_whole_body(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    up = await upstream()
    dead = f"http://127.0.0.1:{free_port()}"
    gw = await gateway(config(dead, up.url))  # round robin starts with the dead target
    small, large = b"s" * 100, bytes(range(256)) * 800  # the large one (200 KiB) is streamed, not buffered
    for body in (small, large):
        assert await status_of(http, url(gw, "/svc/x"), "POST", data=body) == 200
    assert up.bodies == [small, large]
    assert [r.headers["Content-Length"] for r in up.requests] == [str(len(small)), str(len(large))]
    assert attempts(up) == ["2", "2"]
    assert await counted(gw, "connect", code="", outcome="connect_error") == (2, 2)
    assert await counted(gw, "connect", code="200", outcome="ok") == (2, 2)


async def test_small_body_is_replayed_but_a_streamed_one_is_not(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    async def flaky(_: web.Request) -> web.Response:
        return web.json_response({}, status=503 if up.hits % 2 else 200)

    up = await upstream(flaky)
    gw = await gateway(config(up.url))
    assert await status_of(http, url(gw, "/svc/x"), "PUT", data=b"p" * 1000) == 200
    assert up.bodies == [b"p" * 1000] * 2
    assert [r.headers.get("Content-Length") for r in up.requests] == ["1000", "1000"]

    async def chunked() -> AsyncIterator[bytes]:
        yield b"part-1 "
        yield b"part-2"

    # the stream is gone: the upstream's answer is the answer
    assert await status_of(http, url(gw, "/svc/x"), "PUT", data=chunked()) == 503
    assert up.hits == 3
    assert up.bodies[2] == b"part-1 part-2"
    assert metric(await scrape(gw), RETRIES, route="svc", upstream="svc", reason="503") == 1


async def test_large_503_bodies_are_released_before_retrying(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    async def heavy(_: web.Request) -> web.Response:
        if up.hits < 3:
            return web.Response(status=503, body=b"e" * (4 * 1024 * 1024))
        return web.Response(text="ok")

    up = await upstream(heavy)
    gw = await gateway(config(up.url, route='timeout = "3s"'))
    started = time.monotonic()
    async with http.get(url(gw, "/svc/x")) as response:
        assert response.status == 200
        assert await response.text() == "ok"
    assert time.monotonic() - started < 2.0  # no attempt waited for an unread 4 MiB body
    assert up.hits == 3
    await asyncio.sleep(0.1)
    [pool] = gw.clients.http1.pools.values()
    # The two 503 answers were let go (their unread bodies close their connections); only the
    # answer that was sent on is parked for reuse: nothing is held by a finished request.
    assert len(pool.open) == 1 and len(pool.idle) == 1


async def test_slow_upstream_with_a_per_try_deadline_is_504_within_the_route_timeout(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    held, up = await held_upstream(upstream)
    gw = await gateway(config(up.url, retry='attempts = 5, backoff = "1ms", max_backoff = "5ms"',
                              response="150ms", route='timeout = "400ms"'))
    started = time.monotonic()
    try:
        async with http.get(url(gw, "/svc/x")) as response:
            await problem_of(response, 504)
            elapsed = time.monotonic() - started
    finally:
        held.release.set()
    assert 0.35 <= elapsed < 1.0, elapsed
    assert up.hits in (2, 3)  # 150 ms per try: the third one is cut at the route's 400 ms
    assert attempts(up) == [str(n) for n in range(1, up.hits + 1)]
    assert await counted(gw, "timeout", code="", outcome="timeout") == (up.hits - 1, up.hits)


async def test_retry_storm_is_capped_by_the_retry_budget(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    async def failing(_: web.Request) -> web.Response:
        await asyncio.sleep(0.05)
        return web.Response(status=503)

    up = await upstream(failing)
    gw = await gateway(config(up.url))
    assert await asyncio.wait_for(concurrent_statuses(http, url(gw, "/svc/x"), 100), 10) == [503] * 100
    # Without a budget: 300 hits. Retries in flight ≤ max(3, 20% of 100 requests in flight) = 20
    # while all 100 are waiting; once most have given up only the minimum of 3 is left.
    assert 100 < up.hits <= 100 + 20 + 3, up.hits
    assert await counted(gw, "503", code="503", outcome="http_error") == (up.hits - 100, up.hits)


async def test_retry_after_is_honoured_up_to_max_backoff(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    async def busy(request: web.Request) -> web.Response:
        if request.path.endswith("/long"):
            return web.Response(status=503, headers={"Retry-After": "5"})
        return web.Response(status=503 if up.hits == 1 else 200, headers={"Retry-After": "1"})

    up = await upstream(busy)
    gw = await gateway(config(up.url, retry='attempts = 3, backoff = "1ms", max_backoff = "2s"'))
    started = time.monotonic()
    assert await status_of(http, url(gw, "/svc/short")) == 200
    assert 1.0 <= time.monotonic() - started < 1.8
    started = time.monotonic()
    async with http.get(url(gw, "/svc/long")) as response:  # asks for more than max_backoff: no retry
        assert response.status == 503
        assert response.headers["Retry-After"] == "5"
    assert time.monotonic() - started < 0.5
    assert up.hits == 3
    assert metric(await scrape(gw), RETRIES, route="svc", upstream="svc", reason="503") == 1


async def test_retries_never_go_to_an_open_breaker(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    up = await upstream(answering(503))
    gw = await gateway(config(up.url, extra='breaker = { failures = 1, reset_timeout = "10s" }'))
    await upstream_answer(http, url(gw, "/svc/x"), 503)  # trips the breaker: the answer is the upstream's
    assert up.hits == 1
    text = await scrape(gw)
    assert metric(text, RETRIES, route="svc", upstream="svc", reason="503") == 0
    assert metric(text, "gateway_circuit_breaker_rejected_total", route="svc", upstream="svc") == 0


async def test_a_retry_prefers_another_target(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    bad, good = await failing_and_healthy(upstream, 502)
    gw = await gateway(config(bad.url, good.url, retry='attempts = 2, backoff = "1ms", max_backoff = "5ms"'))
    assert await statuses(http, url(gw, "/svc/x"), 6) == [200] * 6
    assert bad.hits >= 1
    assert attempts(bad) == ["1"] * bad.hits  # never a retry to the target that just failed
    assert attempts(good).count("2") == bad.hits
    assert metric(await scrape(gw), RETRIES, route="svc", upstream="svc", reason="502") == bad.hits
