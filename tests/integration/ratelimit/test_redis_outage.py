"""Redis killed or blackholed under a rate-limited route: ``on_store_error`` decides, the added
latency stays small (p99 within 30 ms of the p99 before the outage, measured here in the
client), and Redis coming back is picked up by itself."""

from __future__ import annotations

import asyncio
import json
import math
import time

import aiohttp
import pytest

from gateway.process import GatewayProcess
from tests.support import RedisServer, metric, scrape, url
from tests.support.resilience import StartLimited

DECISIONS = "gateway_ratelimit_decisions_total"
Sample = tuple[int, float, dict[str, str], bytes]


async def _traffic(http: aiohttp.ClientSession, target: str, count: int, workers: int = 4) -> list[Sample]:
    """``count`` requests from ``workers`` concurrent clients: status, seconds, headers, body."""
    out: list[Sample] = []
    queue = iter(range(count))

    async def worker() -> None:
        for _ in queue:
            start = time.perf_counter()
            async with http.get(target) as response:
                body = await response.read()
            out.append((response.status, time.perf_counter() - start, dict(response.headers), body))

    async with asyncio.timeout(20):
        await asyncio.gather(*(worker() for _ in range(workers)))
    return out


def _percentile(samples: list[Sample], fraction: float) -> float:
    ordered = sorted(seconds for _, seconds, _, _ in samples)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


async def _recovered(gw: GatewayProcess, http: aiohttp.ClientSession, target: str) -> Sample:
    """Poll until a request was decided by Redis again (RateLimit header back, redis_up 1)."""
    deadline = time.monotonic() + 5
    while True:
        sample = (await _traffic(http, target, 1, 1))[0]
        if "RateLimit" in sample[2] and metric(await scrape(gw), "gateway_redis_up") == 1:
            return sample
        if time.monotonic() > deadline:
            raise AssertionError(f"not recovered within 5 s: {sample[:3]}")
        await asyncio.sleep(0.1)


@pytest.fixture(params=["killed", "frozen"])
def kind(request: pytest.FixtureRequest) -> str:
    """How Redis fails. killed: connections reset, the port refuses. frozen (SIGSTOP): the port
    listens and open connections stay open, but nothing ever answers (a hung Redis, a
    blackholed network path)."""
    return str(request.param)


def _outage(redis: RedisServer, kind: str) -> None:
    if kind == "killed":
        redis.kill()
    else:
        redis.freeze()


_EARLY: dict[int, float] = {}  # per gateway: store errors decided during its baseline


def early_errors(gw: GatewayProcess) -> float:
    return _EARLY.get(id(gw), 0.0)


async def _through_outage(
    limited: StartLimited, redis: RedisServer, http: aiohttp.ClientSession, options: str, outage: str, label: str
) -> tuple[GatewayProcess, str, list[Sample]]:
    """A route limited with ``options`` on ``redis``, decided by Redis for a baseline of 40
    requests; then 150 requests while Redis is ``outage`` (killed or frozen), each waiting on
    it only as long as its breaker allows."""
    route = await limited(options, redis=redis.url)
    baseline = await _traffic(http, route.target, 40)
    statuses = [status for status, *_ in baseline]
    # On a busy machine a Redis call may exceed its 50 ms timeout now and then even before the
    # outage: on_store_error then decides that request (503 with "deny").
    assert statuses.count(200) >= len(baseline) - 2, statuses
    assert all("RateLimit" in headers for status, _, headers, _ in baseline if status == 200)  # decided by Redis
    scraped = await scrape(route.gw)
    _EARLY[id(route.gw)] = sum(metric(scraped, DECISIONS, route="limited", decision=d)
                               for d in ("store_error_allowed", "store_error_denied", "local_fallback"))
    assert metric(await scrape(route.gw), "gateway_redis_up") == 1
    _outage(redis, outage)
    during = await _traffic(http, route.target, 150)
    # against the baseline's own p99, so what the machine's load adds to both cancels out; a
    # call waiting on Redis would add a whole timeout (50 ms)
    assert _added_p99(during, _percentile(baseline, 0.99), f"{label}/{outage}") < 0.030
    return route.gw, route.target, during


def _restore(redis: RedisServer, kind: str) -> None:
    if kind == "killed":
        redis.start()  # empty: no persistence
    else:
        redis.thaw()  # with its data; it also runs the commands that timed out meanwhile


BREAKER_TRIALS = 3  # gateway.redis_pool: calls that may each wait one Redis timeout before its breaker opens


def _added_p99(samples: list[Sample], baseline: float, label: str) -> float:
    """p99 added latency once the Redis client's breaker has opened. The calls that met the
    outage first may each wait one Redis timeout (50 ms) — never longer — and after them no
    call waits at all; the percentile is taken over the calls after those trials."""
    ordered = sorted(seconds for _, seconds, _, _ in samples)
    assert ordered[-1] - baseline < 0.250, f"{label}: a call waited {ordered[-1] * 1000:.0f} ms"
    rest = ordered[:-BREAKER_TRIALS]
    added = rest[max(0, math.ceil(0.99 * len(rest)) - 1)] - baseline
    print(f"\n{label}: p99 added latency {added * 1000:.1f} ms over {len(samples)} requests "
          f"(slowest {ordered[-1] * 1000:.1f} ms)")
    return added


async def test_allow_lets_traffic_through_without_waiting_on_redis(
    kind: str, limited: StartLimited, http: aiohttp.ClientSession, own_redis: RedisServer
) -> None:
    gw, target, during = await _through_outage(limited, own_redis, http, 'limit = 1000\nwindow = "1m"', kind, "allow")
    assert [status for status, *_ in during] == [200] * 150
    text = await scrape(gw)
    assert metric(text, "gateway_redis_up") == 0
    # the 150 outage requests, plus any baseline request that met a slow Redis (see _through_outage)
    assert metric(text, DECISIONS, route="limited", decision="store_error_allowed") == 150 + early_errors(gw)
    assert not any("RateLimit" in headers for _, _, headers, _ in during[-100:])
    _restore(own_redis, kind)
    status, _, headers, _ = await _recovered(gw, http, target)
    assert status == 200 and headers["RateLimit"].startswith('"limited";r=9')


async def test_deny_answers_503_with_retry_after_quickly(
    kind: str, limited: StartLimited, http: aiohttp.ClientSession, own_redis: RedisServer
) -> None:
    options = 'limit = 1000\nwindow = "1m"\non_store_error = "deny"'
    gw, target, during = await _through_outage(limited, own_redis, http, options, kind, "deny")
    assert [status for status, *_ in during] == [503] * 150
    for _, _, headers, body in during:
        assert headers["Retry-After"] == "1"
        assert headers["Content-Type"] == "application/problem+json"
        assert json.loads(body)["status"] == 503
    text = await scrape(gw)
    assert metric(text, DECISIONS, route="limited", decision="store_error_denied") == 150 + early_errors(gw)
    assert metric(text, "gateway_requests_total", route="limited", code="500") == 0
    _restore(own_redis, kind)
    status, *_ = await _recovered(gw, http, target)
    assert status == 200


async def test_local_fallback_keeps_limiting_in_process(
    kind: str, limited: StartLimited, http: aiohttp.ClientSession, own_redis: RedisServer
) -> None:
    options = 'limit = 50\nwindow = "1m"\non_store_error = "local"'
    gw, target, during = await _through_outage(limited, own_redis, http, options, kind, "local")
    # The local limiter starts empty: exactly 50 more pass in this process, then 429.
    assert sorted(status for status, *_ in during) == [200] * 50 + [429] * 100
    assert all(headers["RateLimit-Policy"] == '"limited";q=50;w=60' for _, _, headers, _ in during)
    text = await scrape(gw)
    assert metric(text, DECISIONS, route="limited", decision="local_fallback") == 50
    assert metric(text, DECISIONS, route="limited", decision="limited") == 100
    assert metric(text, DECISIONS, route="limited", decision="allowed") == 40
    _restore(own_redis, kind)
    # Back on Redis: its quota again (10 at most used there), not the exhausted local one.
    deadline = time.monotonic() + 5
    while (await _traffic(http, target, 1, 1))[0][0] != 200:
        assert time.monotonic() < deadline, "Redis was not used again within 5 s"
        await asyncio.sleep(0.1)
    assert metric(await scrape(gw), "gateway_redis_up") == 1


async def test_a_redis_that_never_answers_hangs_neither_startup_nor_requests(
    limited: StartLimited, http: aiohttp.ClientSession, own_redis: RedisServer
) -> None:
    own_redis.blackhole()  # a listening socket that never accepts nor answers
    started = time.perf_counter()
    route = await limited('limit = 5\nwindow = "1m"\non_store_error = "deny"', redis=own_redis.url)
    assert time.perf_counter() - started < 1.0
    gw, target = route.gw, route.target
    assert {s for s, *_ in await _traffic(http, url(gw, "/elsewhere"), 8)} == {404}  # client connections open
    during = await _traffic(http, target, 150)
    assert [status for status, *_ in during] == [503] * 150
    # No Redis-up baseline here: the added latency is over the run's own median (a fail-fast 503).
    assert _added_p99(during, _percentile(during, 0.5), "deny/blackhole from the start") < 0.030
    assert metric(await scrape(gw), "gateway_redis_up") == 0
    _restore_from_blackhole(own_redis)
    status, _, headers, _ = await _recovered(gw, http, target)
    assert (status, headers["RateLimit"]) == (200, '"limited";r=4;t=12')


def _restore_from_blackhole(redis: RedisServer) -> None:
    redis.end_blackhole()
    redis.start()
