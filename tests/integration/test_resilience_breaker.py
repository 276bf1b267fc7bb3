"""The circuit breaker against real failing upstreams on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import shutil
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from gateway.config_load import load_config
from gateway.process import GatewayProcess
from tests.conftest import StartGateway, StartUpstream, metric, scrape, url
from tests.support import RedisServer, assert_problem, free_port

REQUESTS = "gateway_upstream_requests_total"
REJECTED = "gateway_circuit_breaker_rejected_total"
STATE = "gateway_circuit_breaker_state"


def config(*targets: str, breaker: str, extra: str = "") -> str:
    listed = ", ".join(f'"{t}"' for t in targets)
    return f"""
        [upstreams.svc]
        targets = [{listed}]
        timeout = {{ connect = "1s", response = "5s" }}
        breaker = {{ {breaker} }}
        {extra}
        [[routes]]
        name = "svc"
        path = "/svc/{{rest:.*}}"
        upstream = "svc"
    """


async def states(gw: GatewayProcess) -> dict[str, float]:
    text = await scrape(gw)
    return {s: metric(text, STATE, upstream="svc", state=s) for s in ("closed", "open", "half_open")}


def answering(status: int) -> web.Response:
    return web.json_response({"from": "upstream"}, status=status)


async def test_breaker_opens_after_n_failures_and_rejects_without_calling_the_upstream(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    async def failing(_: web.Request) -> web.Response:
        return answering(503)

    up = await upstream(failing)
    gw = await gateway(config(up.url, breaker='failures = 3, reset_timeout = "10s"'))
    assert await states(gw) == {"closed": 1, "open": 0, "half_open": 0}
    for _ in range(3):  # the failures themselves still get the upstream's answer
        async with http.get(url(gw, "/svc/x")) as response:
            assert response.status == 503
            assert await response.json() == {"from": "upstream"}
    for _ in range(2):
        async with http.get(url(gw, "/svc/x")) as response:
            document = assert_problem(response.status, response.headers, await response.read(), 503, route="svc")
            assert 1 <= int(response.headers["Retry-After"]) <= 10
    assert document["type"].endswith("/circuit-open")
    assert up.hits == 3
    text = await scrape(gw)
    assert metric(text, REQUESTS, route="svc", upstream="svc", code="503", outcome="http_error") == 3
    assert metric(text, REQUESTS, route="svc", upstream="svc", code="", outcome="circuit_open") == 2
    assert metric(text, REJECTED, route="svc", upstream="svc") == 2
    assert metric(text, "gateway_requests_total", route="svc", code="503", source="gateway") == 2
    assert await states(gw) == {"closed": 0, "open": 1, "half_open": 0}


async def test_half_open_admits_one_probe_among_ten_concurrent_requests_and_success_closes(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    release = asyncio.Event()

    async def handler(request: web.Request) -> web.Response:
        if up.hits == 1:
            return answering(503)
        async with asyncio.timeout(5):
            await release.wait()
        return answering(200)

    up = await upstream(handler)
    gw = await gateway(config(up.url, breaker='failures = 1, reset_timeout = "100ms"'))
    async with http.get(url(gw, "/svc/x")) as response:
        assert response.status == 503
    assert (await states(gw))["open"] == 1
    await asyncio.sleep(0.15)

    async def one() -> int:
        async with http.get(url(gw, "/svc/x")) as response:
            await response.read()
            return response.status

    calls = [asyncio.ensure_future(one()) for _ in range(10)]
    for _ in range(100):  # the nine rejections come back while the probe is held upstream
        if sum(c.done() for c in calls) == 9:
            break
        await asyncio.sleep(0.02)
    assert up.hits == 2
    assert await states(gw) == {"closed": 0, "open": 0, "half_open": 1}
    release.set()
    statuses = await asyncio.wait_for(asyncio.gather(*calls), 5)
    assert sorted(statuses) == [200] + [503] * 9
    assert up.hits == 2
    assert await states(gw) == {"closed": 1, "open": 0, "half_open": 0}
    async with http.get(url(gw, "/svc/x")) as response:
        assert response.status == 200
    text = await scrape(gw)
    assert metric(text, REJECTED, route="svc", upstream="svc") == 9
    assert metric(text, REQUESTS, route="svc", upstream="svc", code="", outcome="circuit_open") == 9
    assert metric(text, REQUESTS, route="svc", upstream="svc", code="200", outcome="ok") == 2


async def test_failed_probe_reopens_the_breaker(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    async def failing(_: web.Request) -> web.Response:
        return answering(502)

    up = await upstream(failing)
    gw = await gateway(config(up.url, breaker='failures = 1, reset_timeout = "100ms"'))
    async with http.get(url(gw, "/svc/x")) as response:
        assert response.status == 502
    await asyncio.sleep(0.15)
    async with http.get(url(gw, "/svc/x")) as response:  # the probe
        assert response.status == 502
        assert await response.json() == {"from": "upstream"}
    async with http.get(url(gw, "/svc/x")) as response:
        assert_problem(response.status, response.headers, await response.read(), 503, route="svc")
        assert response.headers["Retry-After"] == "1"
    assert up.hits == 2
    assert await states(gw) == {"closed": 0, "open": 1, "half_open": 0}


async def test_4xx_never_trips_the_breaker(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    async def missing(_: web.Request) -> web.Response:
        return answering(404)

    up = await upstream(missing)
    gw = await gateway(config(up.url, breaker='failures = 2, reset_timeout = "10s"'))
    for _ in range(6):
        async with http.get(url(gw, "/svc/x")) as response:
            assert response.status == 404
    assert up.hits == 6
    text = await scrape(gw)
    assert metric(text, REJECTED, route="svc", upstream="svc") == 0
    assert metric(text, REQUESTS, route="svc", upstream="svc", code="404", outcome="ok") == 6
    assert await states(gw) == {"closed": 1, "open": 0, "half_open": 0}


async def test_connect_refused_trips_the_breaker(gateway: StartGateway, http: aiohttp.ClientSession) -> None:
    gw = await gateway(config(f"http://127.0.0.1:{free_port()}", breaker='failures = 2, reset_timeout = "10s"'))
    for expected in (502, 502, 503):
        async with http.get(url(gw, "/svc/x")) as response:
            assert_problem(response.status, response.headers, await response.read(), expected, route="svc")
    text = await scrape(gw)
    assert metric(text, REQUESTS, route="svc", upstream="svc", code="", outcome="connect_error") == 2
    assert metric(text, REQUESTS, route="svc", upstream="svc", code="", outcome="circuit_open") == 1


async def test_a_client_that_goes_away_never_trips_the_breaker(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    answer = asyncio.Event()

    async def slow(_: web.Request) -> web.Response:
        async with asyncio.timeout(5):
            await answer.wait()
        return answering(200)

    up = await upstream(slow)
    gw = await gateway(config(up.url, breaker='failures = 1, reset_timeout = "10s"'))
    for _ in range(3):
        try:
            async with asyncio.timeout(0.2):
                async with http.get(url(gw, "/svc/x")) as response:
                    await response.read()
        except TimeoutError:
            pass
    for _ in range(100):  # the gateway notices each client leaving and cancels the call
        if metric(await scrape(gw), "gateway_requests_total", route="svc", code="499") == 3:
            break
        await asyncio.sleep(0.02)
    assert metric(await scrape(gw), "gateway_requests_total", route="svc", code="499") == 3
    answer.set()
    async with http.get(url(gw, "/svc/x")) as response:
        assert response.status == 200
    assert up.hits == 4
    assert metric(await scrape(gw), REJECTED, route="svc", upstream="svc") == 0
    assert await states(gw) == {"closed": 1, "open": 0, "half_open": 0}


async def test_a_body_that_breaks_off_after_the_headers_is_not_judged(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    async def broken(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = 1_000_000
        await response.prepare(request)
        await response.write(b"x" * 70_000)
        assert request.transport is not None
        request.transport.close()
        return response

    up = await upstream(broken)
    gw = await gateway(config(up.url, breaker='failures = 1, reset_timeout = "10s"'))
    for _ in range(3):
        try:
            async with http.get(url(gw, "/svc/x")) as response:
                assert response.status == 200
                await response.read()
        except aiohttp.ClientPayloadError:
            pass
    assert up.hits == 3  # never rejected: only the header phase is guarded
    assert await states(gw) == {"closed": 1, "open": 0, "half_open": 0}


async def test_scope_target_skips_the_target_whose_breaker_is_open(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    async def failing(_: web.Request) -> web.Response:
        return answering(503)

    bad = await upstream(failing)
    good = await upstream()
    gw = await gateway(config(bad.url, good.url, breaker='failures = 1, reset_timeout = "10s", scope = "target"'))
    statuses = []
    for _ in range(7):
        async with http.get(url(gw, "/svc/x")) as response:
            statuses.append(response.status)
            await response.read()
    assert statuses == [503] + [200] * 6  # round robin starts with the bad target, then avoids it
    assert (bad.hits, good.hits) == (1, 6)
    # One of two circuits open: the upstream is degraded (half_open), not rejecting (open).
    assert await states(gw) == {"closed": 0, "open": 0, "half_open": 1}
    assert metric(await scrape(gw), REJECTED, route="svc", upstream="svc") == 0


async def test_reload_keeps_breaker_state_while_the_upstream_config_is_unchanged(
    upstream: StartUpstream, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    async def failing(_: web.Request) -> web.Response:
        return answering(503)

    up = await upstream(failing)
    routes = tmp_path / "routes.toml"
    original = textwrap.dedent(config(up.url, breaker='failures = 1, reset_timeout = "10s"'))
    routes.write_text(original)
    gw = GatewayProcess(load_config(routes), listen="127.0.0.1:0", admin_listen="127.0.0.1:0")
    await gw.start()
    try:
        async with http.get(url(gw, "/svc/x")) as response:
            assert response.status == 503
        assert (await states(gw))["open"] == 1
        routes.write_text(original + '\n[[routes]]\nname = "other"\npath = "/other"\nupstream = "svc"\n')
        assert (await gw.reload())[0]
        async with http.get(url(gw, "/svc/x")) as response:  # still open: no call reaches the upstream
            assert_problem(response.status, response.headers, await response.read(), 503, route="svc")
        assert up.hits == 1
        assert await states(gw) == {"closed": 0, "open": 1, "half_open": 0}
        routes.write_text(textwrap.dedent(config(up.url, breaker='failures = 2, reset_timeout = "10s"')))
        assert (await gw.reload())[0]  # the upstream changed: a fresh breaker
        assert await states(gw) == {"closed": 1, "open": 0, "half_open": 0}
        async with http.get(url(gw, "/svc/x")) as response:
            assert response.status == 503
            assert await response.json() == {"from": "upstream"}
        assert up.hits == 2
    finally:
        await gw.drain()


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server for this test (CI must not skip the Redis tests)."""
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("redis-server is not installed: CI must run the Redis tests")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer(binary, tmp_path / "redis")
    server.start()
    yield server
    server.stop()


async def test_shared_breaker_trip_reaches_another_replica_within_a_second(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession, redis: RedisServer
) -> None:
    async def failing(_: web.Request) -> web.Response:
        return answering(503)

    up = await upstream(failing)
    text = config(up.url, breaker='failures = 2, reset_timeout = "10s", shared = true')
    text = f'[gateway]\nredis_url = "{redis.url}"\n' + textwrap.dedent(text)
    first, second = await gateway(text), await gateway(text)
    for _ in range(2):
        async with http.get(url(first, "/svc/x")) as response:
            assert response.status == 503
    tripped = time.monotonic()
    while (await states(second))["open"] != 1:
        assert time.monotonic() - tripped < 1.0, "the trip did not reach the other replica within 1 s"
        await asyncio.sleep(0.02)
    async with http.get(url(second, "/svc/x")) as response:
        assert_problem(response.status, response.headers, await response.read(), 503, route="svc")
        assert 1 <= int(response.headers["Retry-After"]) <= 10
    assert up.hits == 2
    assert 0 < int(redis.command("PTTL", "gw:breaker:svc").strip(b":\r\n")) <= 10_000
    assert metric(await scrape(second), REJECTED, route="svc", upstream="svc") == 1


@pytest.mark.parametrize("outage", ["hung", "refused"])
async def test_shared_breaker_with_redis_down_never_blocks_traffic_and_still_works_locally(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession, redis: RedisServer, outage: str
) -> None:
    async def failing(_: web.Request) -> web.Response:
        return answering(503 if up.hits > 5 else 200)

    up = await upstream(failing)
    if outage == "hung":
        redis.blackhole()  # accepts connections, never answers
    else:
        redis.kill()
    text = config(up.url, breaker='failures = 2, reset_timeout = "10s", shared = true')
    gw = await gateway(f'[gateway]\nredis_url = "{redis.url}"\n' + textwrap.dedent(text))
    statuses = []
    for _ in range(8):
        started = time.monotonic()
        async with http.get(url(gw, "/svc/x")) as response:
            statuses.append(response.status)
            await response.read()
        assert time.monotonic() - started < 0.2
    assert statuses == [200] * 5 + [503] * 3
    assert up.hits == 7  # the eighth was rejected by the (local) breaker
    text = await scrape(gw)
    assert metric(text, REJECTED, route="svc", upstream="svc") == 1
    assert metric(text, "gateway_redis_up") == 0
