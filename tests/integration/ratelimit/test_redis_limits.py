"""``rate_limit`` with the Redis store: exact counts in one gateway and across two processes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import aiohttp
import pytest

from gateway.clients import Clients
from gateway.config_load import ConfigError, load_text
from gateway.metrics import Metrics
from gateway.runtime import Runtime
from tests.conftest import GatewaySubprocess, StartUpstream
from tests.support import RedisServer, metric, scrape
from tests.support.resilience import StartLimited, limited_route

DECISIONS = "gateway_ratelimit_decisions_total"
Spawn = Callable[..., Awaitable[GatewaySubprocess]]


async def test_redis_store_lets_exactly_limit_through_with_exact_headers(
    limited: StartLimited, http: aiohttp.ClientSession, redis_url: str, redis_server: RedisServer
) -> None:
    route = await limited('limit = 4\nwindow = "1m"\nkey = "ip"', redis=redis_url)
    seen = []
    for _ in range(6):
        async with http.get(route.target) as response:
            seen.append((response.status, response.headers.get("RateLimit"), response.headers.get("Retry-After")))
            await response.read()
    assert seen == [
        (200, '"limited";r=3;t=15', None), (200, '"limited";r=2;t=15', None), (200, '"limited";r=1;t=15', None),
        (200, '"limited";r=0;t=15', None), (429, '"limited";r=0;t=15', "15"), (429, '"limited";r=0;t=15', "15"),
    ]
    assert route.up.hits == 4
    # The state is in Redis (one key, expiring with the quota), not in the gateway.
    keys = redis_server.command("KEYS", "gw:rl:*").decode()
    assert keys.count("gw:rl:") == 1 and "limited|ip|ip:127.0.0.1" in keys
    text = await scrape(route.gw)
    assert metric(text, DECISIONS, route="limited", decision="allowed") == 4
    assert metric(text, DECISIONS, route="limited", decision="limited") == 2
    assert metric(text, "gateway_redis_up") == 1


async def test_two_gateway_processes_sharing_redis_allow_exactly_limit_under_concurrency(
    upstream: StartUpstream, spawn_gateway: Spawn, redis_url: str
) -> None:
    up = await upstream()
    config = limited_route(up.url, 'limit = 10\nwindow = "1m"', gateway=f'redis_url = "{redis_url}"')
    first, second = await asyncio.gather(spawn_gateway(config), spawn_gateway(config))
    async with aiohttp.ClientSession() as session:
        # Warm each process up (first-request code paths, upstream and Redis connections)
        # on another key, so the burst measures the limit and not a cold start.
        for gw in (first, second):
            warm = [session.get(gw.url("/limited/warm"), headers={"X-Test-User": f"w{i}"}) for i in range(10)]
            for response in await asyncio.gather(*warm):
                response.release()

        async def one(i: int) -> int:
            gw = first if i % 2 else second
            async with session.get(gw.url(f"/limited/{i}")) as response:
                await response.read()
                return response.status

        statuses = await asyncio.gather(*(one(i) for i in range(40)))
        texts = []
        for gw in (first, second):
            async with session.get(gw.admin("/metrics")) as response:
                texts.append(await response.text())
    assert sorted(statuses) == [200] * 10 + [429] * 30
    assert up.hits == 20 + 10
    allowed = [metric(t, DECISIONS, route="limited", decision="allowed") for t in texts]
    limited = [metric(t, DECISIONS, route="limited", decision="limited") for t in texts]
    assert sum(allowed) == 20 + 10 and sum(limited) == 30
    assert all(a + b == 10 + 20 for a, b in zip(allowed, limited, strict=True))  # each served its half


def test_store_redis_without_redis_url_is_a_located_load_error() -> None:
    loaded = load_text(limited_route("http://127.0.0.1:9", 'limit = 1\nwindow = "1s"\nstore = "redis"'))
    with pytest.raises(ConfigError) as caught:
        Runtime(loaded, Metrics(), Clients())
    assert caught.value.lines() == [
        'routes.toml: routes[0].plugins[1] (rate_limit): store = "redis" needs gateway.redis_url']


def test_bad_options_are_located_load_errors() -> None:
    bad = [
        ('limit = -5\nwindow = "1s"', "routes[0].plugins[1] (rate_limit).limit: must be a positive integer, got -5"),
        ('limit = 5\nwindow = "1500ms"',
         "routes[0].plugins[1] (rate_limit).window: must be a whole number of seconds "
         "(the RateLimit headers count seconds), got 1.5s"),
        ('limit = 5\nwindow = "1s"\nkey = "user"',
         'routes[0].plugins[1] (rate_limit).key: must be "consumer", "ip", "route" or "header:NAME", got \'user\''),
        ('limit = 5\nwindow = "1s"\non_store_error = "ignore"',
         "routes[0].plugins[1] (rate_limit).on_store_error: must be one of 'allow', 'deny' or 'local', got 'ignore'"),
    ]
    for options, line in bad:
        with pytest.raises(ConfigError) as caught:
            load_text(limited_route("http://127.0.0.1:9", options))
        assert caught.value.lines() == [f"routes.toml: {line}"], options
    for options, message in [
        ('limit = 5\nwindow = "1s"\nlimits = [{ limit = 1, window = "1s" }]',
         "give either `limit` and `window` or `limits = [...]`, not both"),
        ("limit = 5", 'needs `limit` and `window` (e.g. limit = 100, window = "1m") or `limits = [...]`'),
    ]:
        with pytest.raises(ConfigError) as caught:
            Runtime(load_text(limited_route("http://127.0.0.1:9", options)), Metrics(), Clients())
        assert caught.value.lines() == [f"routes.toml: routes[0].plugins[1] (rate_limit): {message}"]


async def test_limited_answer_is_a_problem_document_from_redis_too(
    limited: StartLimited, http: aiohttp.ClientSession, redis_url: str
) -> None:
    route = await limited('limit = 1\nwindow = "5s"', redis=redis_url)
    async with http.get(route.target, headers={"X-Test-User": "carol"}) as response:
        assert response.status == 200
    async with http.get(route.target, headers={"X-Test-User": "carol"}) as response:
        body = json.loads(await response.read())
        assert response.status == 429
        assert response.headers["Retry-After"] == "5"
    assert body["status"] == 429 and body["route"] == "limited" and body["type"].endswith("/rate-limited")
