"""The circuit breaker against real failing upstreams on 127.0.0.1."""

from __future__ import annotations

import asyncio
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from gateway.config_load import load_config
from gateway.process import GatewayProcess
from tests.conftest import StartGateway, StartUpstream
from tests.support import RedisServer, free_port, metric, metric_of, proxy_config, scrape, url, wait_for
from tests.support.config import DEFAULT_TIMEOUT
from tests.support.redis_server import running_redis
from tests.support.resilience import answering, failing_and_healthy, held_upstream, upstream_answer
from tests.support.scraping import problem_of, status_of, statuses

REQUESTS = "gateway_upstream_requests_total"
REJECTED = "gateway_circuit_breaker_rejected_total"
STATE = "gateway_circuit_breaker_state"
CLOSED = {"closed": 1, "open": 0, "half_open": 0}
OPEN = {"closed": 0, "open": 1, "half_open": 0}
HALF_OPEN = {"closed": 0, "open": 0, "half_open": 1}


def config(*targets: str, breaker: str, gateway: str = "") -> str:
    return proxy_config(*targets, gateway=gateway, upstream=f"{DEFAULT_TIMEOUT}\nbreaker = {{ {breaker} }}")


async def states(gw: GatewayProcess) -> dict[str, float]:
    text = await scrape(gw)
    return {s: metric(text, STATE, upstream="svc", state=s) for s in ("closed", "open", "half_open")}


async def rejected(http: aiohttp.ClientSession, target: str) -> str:
    """One GET the open breaker answers itself, without calling the upstream; its Retry-After."""
    async with http.get(target) as response:
        document = await problem_of(response, 503)
        assert document["type"].endswith("/circuit-open")
        return response.headers["Retry-After"]


async def test_breaker_opens_after_n_failures_and_rejects_without_calling_the_upstream(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    up = await upstream(answering(503))
    gw = await gateway(config(up.url, breaker='failures = 3, reset_timeout = "10s"'))
    assert await states(gw) == CLOSED
    for _ in range(3):  # the failures themselves still get the upstream's answer
        await upstream_answer(http, url(gw, "/svc/x"), 503)
    for _ in range(2):
        assert 1 <= int(await rejected(http, url(gw, "/svc/x"))) <= 10
    assert up.hits == 3
    text = await scrape(gw)
    assert metric(text, REQUESTS, route="svc", upstream="svc", code="503", outcome="http_error") == 3
    assert metric(text, REQUESTS, route="svc", upstream="svc", code="", outcome="circuit_open") == 2
    assert metric(text, REJECTED, route="svc", upstream="svc") == 2
    assert metric(text, "gateway_requests_total", route="svc", code="503", source="gateway") == 2
    assert await states(gw) == OPEN


async def test_half_open_admits_one_probe_among_ten_concurrent_requests_and_success_closes(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    release = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        if up.hits == 1:
            return await answering(503)(request)
        async with asyncio.timeout(5):
            await release.wait()
        return await answering(200)(request)

    up = await upstream(handler)
    gw = await gateway(config(up.url, breaker='failures = 1, reset_timeout = "100ms"'))
    assert await status_of(http, url(gw, "/svc/x")) == 503
    assert (await states(gw))["open"] == 1
    await asyncio.sleep(0.15)
    calls = [asyncio.ensure_future(status_of(http, url(gw, "/svc/x"))) for _ in range(10)]
    for _ in range(100):  # the nine rejections come back while the probe is held upstream
        if sum(c.done() for c in calls) == 9:
            break
        await asyncio.sleep(0.02)
    assert up.hits == 2
    assert await states(gw) == HALF_OPEN
    release.set()
    assert sorted(await asyncio.wait_for(asyncio.gather(*calls), 5)) == [200] + [503] * 9
    assert up.hits == 2
    assert await states(gw) == CLOSED
    assert await status_of(http, url(gw, "/svc/x")) == 200
    text = await scrape(gw)
    assert metric(text, REJECTED, route="svc", upstream="svc") == 9
    assert metric(text, REQUESTS, route="svc", upstream="svc", code="", outcome="circuit_open") == 9
    assert metric(text, REQUESTS, route="svc", upstream="svc", code="200", outcome="ok") == 2


async def test_failed_probe_reopens_the_breaker(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    up = await upstream(answering(502))
    gw = await gateway(config(up.url, breaker='failures = 1, reset_timeout = "100ms"'))
    assert await status_of(http, url(gw, "/svc/x")) == 502
    await asyncio.sleep(0.15)
    await upstream_answer(http, url(gw, "/svc/x"), 502)  # the probe
    assert await rejected(http, url(gw, "/svc/x")) == "1"
    assert up.hits == 2
    assert await states(gw) == OPEN


async def test_4xx_never_trips_the_breaker(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    up = await upstream(answering(404))
    gw = await gateway(config(up.url, breaker='failures = 2, reset_timeout = "10s"'))
    assert await statuses(http, url(gw, "/svc/x"), 6) == [404] * 6
    assert up.hits == 6
    text = await scrape(gw)
    assert metric(text, REJECTED, route="svc", upstream="svc") == 0
    assert metric(text, REQUESTS, route="svc", upstream="svc", code="404", outcome="ok") == 6
    assert await states(gw) == CLOSED


async def test_connect_refused_trips_the_breaker(gateway: StartGateway, http: aiohttp.ClientSession) -> None:
    gw = await gateway(config(f"http://127.0.0.1:{free_port()}", breaker='failures = 2, reset_timeout = "10s"'))
    for _ in range(2):
        async with http.get(url(gw, "/svc/x")) as response:
            await problem_of(response, 502)
    await rejected(http, url(gw, "/svc/x"))
    text = await scrape(gw)
    assert metric(text, REQUESTS, route="svc", upstream="svc", code="", outcome="connect_error") == 2
    assert metric(text, REQUESTS, route="svc", upstream="svc", code="", outcome="circuit_open") == 1


async def test_a_client_that_goes_away_never_trips_the_breaker(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    held, up = await held_upstream(upstream)
    gw = await gateway(config(up.url, breaker='failures = 1, reset_timeout = "10s"'))
    for _ in range(3):
        try:
            async with asyncio.timeout(0.2):
                await status_of(http, url(gw, "/svc/x"))
        except TimeoutError:
            pass

    async def all_gone() -> bool:  # the gateway notices each client leaving and cancels the call
        return await metric_of(gw, "gateway_requests_total", route="svc", code="499") == 3

    await wait_for(all_gone, 2.0, "the gateway did not count the three clients that went away")
    held.release.set()
    assert await status_of(http, url(gw, "/svc/x")) == 200
    assert up.hits == 4
    assert await metric_of(gw, REJECTED, route="svc", upstream="svc") == 0
    assert await states(gw) == CLOSED


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
    assert await states(gw) == CLOSED


async def test_scope_target_skips_the_target_whose_breaker_is_open(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    bad, good = await failing_and_healthy(upstream, 503)
    gw = await gateway(config(bad.url, good.url, breaker='failures = 1, reset_timeout = "10s", scope = "target"'))
    # round robin starts with the bad target, then avoids it
    assert await statuses(http, url(gw, "/svc/x"), 7) == [503] + [200] * 6
    assert (bad.hits, good.hits) == (1, 6)
    # One of two circuits open: the upstream is degraded (half_open), not rejecting (open).
    assert await states(gw) == HALF_OPEN
    assert await metric_of(gw, REJECTED, route="svc", upstream="svc") == 0


async def test_reload_keeps_breaker_state_while_the_upstream_config_is_unchanged(
    upstream: StartUpstream, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    up = await upstream(answering(503))
    routes = tmp_path / "routes.toml"
    original = textwrap.dedent(config(up.url, breaker='failures = 1, reset_timeout = "10s"'))
    routes.write_text(original)
    gw = GatewayProcess(load_config(routes), listen="127.0.0.1:0", admin_listen="127.0.0.1:0")
    await gw.start()
    try:
        assert await status_of(http, url(gw, "/svc/x")) == 503
        assert (await states(gw))["open"] == 1
        routes.write_text(original + '\n[[routes]]\nname = "other"\npath = "/other"\nupstream = "svc"\n')
        assert (await gw.reload())[0]
        await rejected(http, url(gw, "/svc/x"))  # still open: no call reaches the upstream
        assert up.hits == 1
        assert await states(gw) == OPEN
        routes.write_text(textwrap.dedent(config(up.url, breaker='failures = 2, reset_timeout = "10s"')))
        assert (await gw.reload())[0]  # the upstream changed: a fresh breaker
        assert await states(gw) == CLOSED
        await upstream_answer(http, url(gw, "/svc/x"), 503)
        assert up.hits == 2
    finally:
        await gw.drain()


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server for this test (CI must not skip the Redis tests)."""
    with running_redis(tmp_path / "redis") as server:
        yield server


def shared_config(target: str, redis: RedisServer) -> str:
    """A breaker shared through ``redis``: two failures open it for 10 s."""
    return config(target, breaker='failures = 2, reset_timeout = "10s", shared = true',
                  gateway=f'redis_url = "{redis.url}"')


async def test_shared_breaker_trip_reaches_another_replica_within_a_second(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession, redis: RedisServer
) -> None:
    up = await upstream(answering(503))
    first, second = await gateway(shared_config(up.url, redis)), await gateway(shared_config(up.url, redis))
    assert await statuses(http, url(first, "/svc/x"), 2) == [503, 503]
    tripped = time.monotonic()
    while (await states(second))["open"] != 1:
        assert time.monotonic() - tripped < 1.0, "the trip did not reach the other replica within 1 s"
        await asyncio.sleep(0.02)
    assert 1 <= int(await rejected(http, url(second, "/svc/x"))) <= 10
    assert up.hits == 2
    assert 0 < int(redis.command("PTTL", "gw:breaker:svc").strip(b":\r\n")) <= 10_000
    assert await metric_of(second, REJECTED, route="svc", upstream="svc") == 1


@pytest.mark.parametrize("outage", ["hung", "refused"])
async def test_shared_breaker_with_redis_down_never_blocks_traffic_and_still_works_locally(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession, redis: RedisServer, outage: str
) -> None:
    async def failing(request: web.Request) -> web.StreamResponse:
        return await answering(503 if up.hits > 5 else 200)(request)

    up = await upstream(failing)
    if outage == "hung":
        redis.blackhole()  # accepts connections, never answers
    else:
        redis.kill()
    gw = await gateway(shared_config(up.url, redis))
    seen = []
    for _ in range(8):
        started = time.monotonic()
        seen.append(await status_of(http, url(gw, "/svc/x")))
        assert time.monotonic() - started < 0.2
    assert seen == [200] * 5 + [503] * 3
    assert up.hits == 7  # the eighth was rejected by the (local) breaker
    text = await scrape(gw)
    assert metric(text, REJECTED, route="svc", upstream="svc") == 1
    assert metric(text, "gateway_redis_up") == 0
