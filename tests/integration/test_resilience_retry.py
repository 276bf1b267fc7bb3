"""Retries against real failing upstreams on 127.0.0.1."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from gateway.process import GatewayProcess
from tests.conftest import StartGateway, StartUpstream, Upstream, metric, scrape, url
from tests.support import assert_problem, free_port

REQUESTS = "gateway_upstream_requests_total"
RETRIES = "gateway_retries_total"


def config(*targets: str, retry: str = "", extra: str = "", route_extra: str = "", response: str = "5s") -> str:
    listed = ", ".join(f'"{t}"' for t in targets)
    return f"""
        [upstreams.svc]
        targets = [{listed}]
        timeout = {{ connect = "1s", response = "{response}" }}
        retry = {{ {retry or 'attempts = 3, backoff = "1ms", max_backoff = "5ms"'} }}
        {extra}
        [[routes]]
        name = "svc"
        path = "/svc/{{rest:.*}}"
        upstream = "svc"
        {route_extra}
    """


def attempts(up: Upstream) -> list[str]:
    """The X-Gateway-Attempt header of each request the upstream received."""
    return [r.headers.get("X-Gateway-Attempt", "") for r in up.requests]


async def counts(gw: GatewayProcess, **labels: str) -> float:
    return metric(await scrape(gw), REQUESTS, route="svc", upstream="svc", **labels)


async def test_503_503_200_is_200_after_three_attempts(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    async def flaky(_: web.Request) -> web.Response:
        return web.json_response({"hit": up.hits}, status=503 if up.hits < 3 else 200)

    up = await upstream(flaky)
    gw = await gateway(config(up.url))
    async with http.get(url(gw, "/svc/x")) as response:
        assert response.status == 200
        assert await response.json() == {"hit": 3}
    assert up.hits == 3
    assert attempts(up) == ["1", "2", "3"]
    text = await scrape(gw)
    assert metric(text, RETRIES, route="svc", upstream="svc", reason="503") == 2
    assert metric(text, REQUESTS, route="svc", upstream="svc", code="503", outcome="http_error") == 2
    assert metric(text, REQUESTS, route="svc", upstream="svc", code="200", outcome="ok") == 1
    assert metric(text, "gateway_requests_total", route="svc", code="200", source="upstream") == 1


async def test_post_is_not_retried(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    async def failing(_: web.Request) -> web.Response:
        return web.json_response({}, status=503)

    up = await upstream(failing)
    gw = await gateway(config(up.url))
    async with http.post(url(gw, "/svc/x"), data=b"order") as response:
        assert response.status == 503
    async with http.post(url(gw, "/svc/x")) as response:  # no body to replay: still not idempotent
        assert response.status == 503
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
        async with http.post(url(gw, "/svc/x"), data=body) as response:
            assert response.status == 200
    assert up.bodies == [small, large]
    assert [r.headers["Content-Length"] for r in up.requests] == [str(len(small)), str(len(large))]
    assert attempts(up) == ["2", "2"]
    text = await scrape(gw)
    assert metric(text, RETRIES, route="svc", upstream="svc", reason="connect") == 2
    assert metric(text, REQUESTS, route="svc", upstream="svc", code="", outcome="connect_error") == 2
    assert metric(text, REQUESTS, route="svc", upstream="svc", code="200", outcome="ok") == 2


async def test_small_body_is_replayed_but_a_streamed_one_is_not(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    async def flaky(_: web.Request) -> web.Response:
        return web.json_response({}, status=503 if up.hits % 2 else 200)

    up = await upstream(flaky)
    gw = await gateway(config(up.url))
    async with http.put(url(gw, "/svc/x"), data=b"p" * 1000) as response:
        assert response.status == 200
    assert up.bodies == [b"p" * 1000] * 2
    assert [r.headers.get("Content-Length") for r in up.requests] == ["1000", "1000"]

    async def chunked() -> AsyncIterator[bytes]:
        yield b"part-1 "
        yield b"part-2"

    async with http.put(url(gw, "/svc/x"), data=chunked()) as response:
        assert response.status == 503  # the stream is gone: the upstream's answer is the answer
    assert up.hits == 3
    assert up.bodies[2] == b"part-1 part-2"
    assert metric(await scrape(gw), RETRIES, route="svc", upstream="svc", reason="503") == 1


async def test_large_503_body_is_released_before_retrying_with_one_connection(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    async def heavy(_: web.Request) -> web.Response:
        if up.hits < 3:
            return web.Response(status=503, body=b"e" * (4 * 1024 * 1024))
        return web.Response(text="ok")

    up = await upstream(heavy)
    gw = await gateway(config(up.url, route_extra='timeout = "3s"'))
    old = gw.client.session
    gw.client.set(aiohttp.ClientSession(  # one connection to the upstream, in all
        connector=aiohttp.TCPConnector(limit=1), auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
    ))
    await old.close()
    started = time.monotonic()
    async with http.get(url(gw, "/svc/x")) as response:
        assert response.status == 200
        assert await response.text() == "ok"
    assert time.monotonic() - started < 2.0
    assert up.hits == 3


async def test_slow_upstream_with_a_per_try_deadline_is_504_within_the_route_timeout(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    done = asyncio.Event()

    async def slow(_: web.Request) -> web.Response:
        async with asyncio.timeout(5):
            await done.wait()
        return web.Response(text="late")

    up = await upstream(slow)
    gw = await gateway(config(up.url, retry='attempts = 5, backoff = "1ms", max_backoff = "5ms"',
                              response="150ms", route_extra='timeout = "400ms"'))
    started = time.monotonic()
    try:
        async with http.get(url(gw, "/svc/x")) as response:
            assert_problem(response.status, response.headers, await response.read(), 504, route="svc")
            elapsed = time.monotonic() - started
    finally:
        done.set()
    assert 0.35 <= elapsed < 1.0, elapsed
    assert up.hits in (2, 3)  # 150 ms per try: the third one is cut at the route's 400 ms
    assert attempts(up) == [str(n) for n in range(1, up.hits + 1)]
    text = await scrape(gw)
    assert metric(text, RETRIES, route="svc", upstream="svc", reason="timeout") == up.hits - 1
    assert metric(text, REQUESTS, route="svc", upstream="svc", code="", outcome="timeout") == up.hits


async def test_retry_storm_is_capped_by_the_retry_budget(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    async def failing(_: web.Request) -> web.Response:
        await asyncio.sleep(0.05)
        return web.Response(status=503)

    up = await upstream(failing)
    gw = await gateway(config(up.url))

    async def one() -> int:
        async with http.get(url(gw, "/svc/x")) as response:
            await response.read()
            return response.status

    statuses = await asyncio.wait_for(asyncio.gather(*(one() for _ in range(100))), 10)
    assert statuses == [503] * 100
    # Without a budget: 300 hits. Retries in flight ≤ max(3, 20% of 100 requests in flight) = 20
    # while all 100 are waiting; once most have given up only the minimum of 3 is left.
    assert 100 < up.hits <= 100 + 20 + 3, up.hits
    text = await scrape(gw)
    assert metric(text, RETRIES, route="svc", upstream="svc", reason="503") == up.hits - 100
    assert metric(text, REQUESTS, route="svc", upstream="svc", code="503", outcome="http_error") == up.hits


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
    async with http.get(url(gw, "/svc/short")) as response:
        assert response.status == 200
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
    async def failing(_: web.Request) -> web.Response:
        return web.json_response({"from": "upstream"}, status=503)

    up = await upstream(failing)
    gw = await gateway(config(up.url, extra='breaker = { failures = 1, reset_timeout = "10s" }'))
    async with http.get(url(gw, "/svc/x")) as response:  # trips the breaker: the answer is the upstream's
        assert response.status == 503
        assert await response.json() == {"from": "upstream"}
    assert up.hits == 1
    text = await scrape(gw)
    assert metric(text, RETRIES, route="svc", upstream="svc", reason="503") == 0
    assert metric(text, "gateway_circuit_breaker_rejected_total", route="svc", upstream="svc") == 0


async def test_a_retry_prefers_another_target(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    async def failing(_: web.Request) -> web.Response:
        return web.Response(status=502)

    bad = await upstream(failing)
    good = await upstream()
    gw = await gateway(config(bad.url, good.url, retry='attempts = 2, backoff = "1ms", max_backoff = "5ms"'))
    for _ in range(6):
        async with http.get(url(gw, "/svc/x")) as response:
            assert response.status == 200
    assert bad.hits >= 1
    assert attempts(bad) == ["1"] * bad.hits  # never a retry to the target that just failed
    assert attempts(good).count("2") == bad.hits
    assert metric(await scrape(gw), RETRIES, route="svc", upstream="svc", reason="502") == bad.hits
