"""``rate_limit`` with the in-process store, through a real gateway: counts, headers, keys (docs/rate-limiting.md)."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from tests.conftest import StartGateway
from tests.support import free_port, metric, scrape, url
from tests.support.resilience import StartLimited, limited_route

DECISIONS = "gateway_ratelimit_decisions_total"


async def _get(http: aiohttp.ClientSession, target: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    async with http.get(target, headers=headers) as response:
        return response.status, dict(response.headers), await response.read()


def _limit_headers(headers: dict[str, str]) -> dict[str, str]:
    names = ("RateLimit-Policy", "RateLimit", "Retry-After", "X-RateLimit-Limit", "X-RateLimit-Remaining",
             "X-RateLimit-Reset")
    return {name: headers[name] for name in names if name in headers}


async def test_exactly_limit_requests_pass_with_exact_headers_and_metrics(
    limited: StartLimited, http: aiohttp.ClientSession
) -> None:
    route = await limited('limit = 5\nwindow = "1m"\nkey = "ip"\nstore = "local"')
    seen = [await _get(http, route.target) for _ in range(8)]
    assert [status for status, _, _ in seen] == [200] * 5 + [429] * 3
    policy = '"limited";q=5;w=60'
    for remaining, (_, headers, _) in zip([4, 3, 2, 1, 0], seen, strict=False):
        assert _limit_headers(headers) == {"RateLimit-Policy": policy, "RateLimit": f'"limited";r={remaining};t=12'}
    for _, headers, body in seen[5:]:
        assert _limit_headers(headers) == {
            "RateLimit-Policy": policy, "RateLimit": '"limited";r=0;t=12', "Retry-After": "12"}
        assert headers["Content-Type"] == "application/problem+json"
        problem = json.loads(body)
        assert problem["status"] == 429
        assert problem["type"].endswith("/rate-limited")
        assert problem["title"] == "Too Many Requests"
        assert problem["route"] == "limited"
    assert route.up.hits == 5
    text = await scrape(route.gw)
    assert metric(text, DECISIONS, route="limited", decision="allowed") == 5
    assert metric(text, DECISIONS, route="limited", decision="limited") == 3
    assert metric(text, DECISIONS, route="limited", decision="store_error_allowed") == 0
    assert metric(text, "gateway_requests_total", route="limited", code="429", source="gateway") == 3


async def test_concurrent_burst_lets_exactly_limit_through(limited: StartLimited, http: aiohttp.ClientSession) -> None:
    route = await limited('limit = 10\nwindow = "1m"\nkey = "route"')
    statuses = await asyncio.gather(*(_get(http, url(route.gw, f"/limited/{i}")) for i in range(40)))
    assert sorted(status for status, _, _ in statuses) == [200] * 10 + [429] * 30
    assert route.up.hits == 10


async def test_consumers_and_tenants_have_separate_quotas(limited: StartLimited, http: aiohttp.ClientSession) -> None:
    target = (await limited('limit = 2\nwindow = "1m"')).target
    alice = [(await _get(http, target, **{"X-Test-User": "alice"}))[0] for _ in range(3)]
    bob = [(await _get(http, target, **{"X-Test-User": "bob"}))[0] for _ in range(3)]
    # No consumer: the client IP is the key, a quota of its own (not alice's nor bob's).
    anonymous = [(await _get(http, target))[0] for _ in range(3)]
    assert alice == bob == anonymous == [200, 200, 429]

    tenants = (await limited('limit = 1\nwindow = "1m"\nkey = "header:X-Tenant"', name="tenants")).target
    got = [(await _get(http, tenants, **{"X-Tenant": t}))[0] for t in ("a", "b", "a", "b", "c")]
    assert got == [200, 200, 429, 429, 200]


async def test_spoofed_forwarded_for_from_an_untrusted_peer_does_not_change_the_ip_key(
    limited: StartLimited, http: aiohttp.ClientSession
) -> None:
    target = (await limited('limit = 2\nwindow = "1m"\nkey = "ip"')).target  # no trusted proxies
    got = [(await _get(http, target, **{"X-Forwarded-For": f"203.0.113.{i}"}))[0] for i in range(4)]
    assert got == [200, 200, 429, 429]

    # From a trusted proxy the forwarded address is the client, so each one has its own quota.
    trusted = await limited('limit = 2\nwindow = "1m"\nkey = "ip"', settings='trusted_proxies = ["127.0.0.1/32"]',
                            name="behind")
    target = trusted.target
    got = [(await _get(http, target, **{"X-Forwarded-For": f"203.0.113.{i % 2}"}))[0] for i in range(6)]
    assert got == [200, 200, 200, 200, 429, 429]


async def test_several_limits_are_all_enforced_and_headers_show_the_tightest(
    limited: StartLimited, http: aiohttp.ClientSession
) -> None:
    route = await limited('limits = [{ limit = 2, window = "1s" }, { limit = 3, window = "1h" }]\nkey = "ip"')
    target = route.target
    first = [await _get(http, target) for _ in range(3)]
    assert [s for s, _, _ in first] == [200, 200, 429]
    assert _limit_headers(first[0][1]) == {"RateLimit-Policy": '"limited";q=2;w=1', "RateLimit": '"limited";r=1;t=1'}
    assert _limit_headers(first[1][1]) == {"RateLimit-Policy": '"limited";q=2;w=1', "RateLimit": '"limited";r=0;t=1'}
    assert _limit_headers(first[2][1]) == {
        "RateLimit-Policy": '"limited";q=2;w=1', "RateLimit": '"limited";r=0;t=1', "Retry-After": "1"}
    await asyncio.sleep(1.05)  # the per-second limit has refilled; the hourly one has 1 left, and
    # its first unit comes back 1200 s after the first request: 1199 s from now (rounded up)
    status, headers, _ = await _get(http, target)
    assert status == 200
    assert _limit_headers(headers) == {
        "RateLimit-Policy": '"limited";q=3;w=3600', "RateLimit": '"limited";r=0;t=1199'}
    status, headers, _ = await _get(http, target)
    assert status == 429  # the hourly limit, although the per-second one would allow it
    assert _limit_headers(headers) == {
        "RateLimit-Policy": '"limited";q=3;w=3600', "RateLimit": '"limited";r=0;t=1199', "Retry-After": "1199"}
    assert route.up.hits == 3


async def test_legacy_and_no_headers(limited: StartLimited, http: aiohttp.ClientSession) -> None:
    legacy = (await limited('limit = 1\nwindow = "10s"\nheaders = "legacy"')).target
    ok, denied = [await _get(http, legacy) for _ in range(2)]
    assert _limit_headers(ok[1]) == {"X-RateLimit-Limit": "1", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "10"}
    assert _limit_headers(denied[1]) == {
        "X-RateLimit-Limit": "1", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "10", "Retry-After": "10"}
    quiet = (await limited('limit = 1\nwindow = "10s"\nheaders = "none"')).target
    ok, denied = [await _get(http, quiet) for _ in range(2)]
    assert (ok[0], denied[0]) == (200, 429)
    assert _limit_headers(ok[1]) == {}
    assert _limit_headers(denied[1]) == {"Retry-After": "10"}  # a 429 always says when to come back


async def test_gateway_errors_on_a_limited_route_carry_the_headers_too(
    gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    gw = await gateway(limited_route(f"http://127.0.0.1:{free_port()}", 'limit = 3\nwindow = "1m"'))
    status, headers, _ = await _get(http, url(gw, "/limited/x"))
    assert status == 502
    assert _limit_headers(headers) == {"RateLimit-Policy": '"limited";q=3;w=60', "RateLimit": '"limited";r=2;t=20'}
