"""``rate_limit`` without a server: keys, headers, errors, the local store, the Redis breaker."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from gateway import Request
from gateway.config_model import GatewaySettings
from gateway.metrics import Metrics
from gateway.redis_pool import Breaker, RedisPool, RedisUnavailable
from gateway.testing import FakeUpstream, ValidationError, build_plugin, make_request, run_plugin
from plugins.rate_limit import RateLimit
from plugins.ratelimit_algo import Limit
from plugins.ratelimit_store import LocalStore
from tests.support import free_port
from tests.support.units import Clock

S = 1_000_000
START = 1000 * S  # the local store's clock counts microseconds


def limiter(clock: Clock[int] | None = None, **options: Any) -> RateLimit:
    plugin = build_plugin(RateLimit, **options)
    if clock is not None:
        plugin.local.clock = clock
    return plugin


def decisions(metrics: Metrics, route: str = "test") -> dict[str, float]:
    return {
        s.labels["decision"]: s.value
        for family in metrics.registry.collect() if family.name == "gateway_ratelimit_decisions"
        for s in family.samples if s.labels["route"] == route and s.name.endswith("_total")
    }


async def test_limit_then_429_with_headers_and_counts() -> None:
    metrics, clock = Metrics(), Clock(START)
    plugin = limiter(clock, limit=2, window="10s", key="ip", metrics=metrics)
    upstream = FakeUpstream()
    out = [await run_plugin(plugin, make_request(), upstream) for _ in range(3)]
    assert [r.status for r in out] == [200, 200, 429]
    assert out[0].headers["RateLimit-Policy"] == '"test";q=2;w=10'
    assert [r.headers["RateLimit"] for r in out] == ['"test";r=1;t=5', '"test";r=0;t=5', '"test";r=0;t=5']
    assert out[2].headers["Retry-After"] == "5"
    problem = json.loads(out[2].body)
    assert (problem["status"], problem["title"], problem["route"]) == (429, "Too Many Requests", "test")
    assert problem["type"] == "https://gateway.dev/problems/rate-limited"
    assert len(upstream.requests) == 2
    clock.now += 5 * S  # one interval: exactly one more
    assert [(await run_plugin(plugin, make_request(), upstream)).status for _ in range(2)] == [200, 429]
    assert decisions(metrics) == {
        "allowed": 3, "limited": 2, "store_error_allowed": 0, "store_error_denied": 0, "local_fallback": 0}


def test_keys_by_kind() -> None:
    request = make_request(headers={"X-Tenant": "acme"}, client_ip="10.1.2.3", route="orders")
    assert limiter(limit=1, window="1s").key(request) == "ip:10.1.2.3"  # consumer, none set: the IP
    request.consumer = "alice"
    assert limiter(limit=1, window="1s").key(request) == "c:alice"
    assert limiter(limit=1, window="1s", key="ip").key(request) == "ip:10.1.2.3"
    assert limiter(limit=1, window="1s", key="route").key(request) == "r:orders"
    assert limiter(limit=1, window="1s", key="header:X-Tenant").key(request) == "h:acme"
    assert limiter(limit=1, window="1s", key="header:X-Other").key(request) == "ip:10.1.2.3"
    request.headers["X-Tenant"] = "x" * 500  # long client-chosen values are hashed, not stored
    hashed = limiter(limit=1, window="1s", key="header:X-Tenant").key(request)
    assert hashed.startswith("#") and len(hashed) == 33


def test_consumer_key_keeps_unmapped_subjects_apart_from_consumers() -> None:
    plugin = limiter(limit=1, window="1s")
    request = make_request(client_ip="10.1.2.3")
    request.subject = "alice"  # an authenticated sub that names no consumer
    assert plugin.key(request) == "s:alice"
    request.consumer = "alice"  # a consumer wins over a subject
    assert plugin.key(request) == "c:alice"
    assert limiter(limit=1, window="1s", key="ip").key(request) == "ip:10.1.2.3"
    request.consumer, request.subject = None, "s" * 100  # a long subject is hashed, not stored
    hashed = plugin.key(request)
    assert hashed.startswith("#") and len(hashed) == 33
    request.subject = ""
    assert plugin.key(request) == "ip:10.1.2.3"


async def test_a_subject_named_like_a_consumer_does_not_spend_its_quota() -> None:
    plugin = limiter(Clock(START), limit=1, window="1m")

    def request(consumer: str | None = None, subject: str | None = None, ip: str = "10.0.0.1") -> Request:
        made = make_request(client_ip=ip)
        made.consumer, made.subject = consumer, subject
        return made

    assert (await run_plugin(plugin, request(consumer="alice"))).status == 200
    assert (await run_plugin(plugin, request(subject="alice"))).status == 200  # its own quota
    assert (await run_plugin(plugin, request(subject="alice", ip="10.0.0.2"))).status == 429  # by sub, not IP
    assert (await run_plugin(plugin, request(consumer="alice", ip="10.0.0.3"))).status == 429
    assert (await run_plugin(plugin, request())).status == 200  # neither: the client IP


async def test_a_global_limiter_labels_each_route_and_keeps_one_quota() -> None:
    metrics = Metrics()
    plugin = limiter(Clock(START), limit=1, window="1m", key="ip", route=None, metrics=metrics)
    first = await run_plugin(plugin, make_request(route="a"))
    second = await run_plugin(plugin, make_request(route="b"))
    assert (first.status, second.status) == (200, 429)
    assert first.headers["RateLimit-Policy"] == '"a";q=1;w=60'
    assert second.headers["RateLimit-Policy"] == '"b";q=1;w=60'
    assert decisions(metrics, "a")["allowed"] == 1 and decisions(metrics, "b")["limited"] == 1


async def test_upstream_errors_keep_their_headers_and_get_ours() -> None:
    from gateway.errors import ServiceUnavailable

    async def failing(_: Any) -> Any:
        raise ServiceUnavailable("breaker open", headers={"Retry-After": "30"})

    response = await run_plugin(limiter(Clock(START), limit=3, window="3s"), make_request(), failing)
    assert response.status == 503
    assert response.headers["Retry-After"] == "30"
    assert response.headers["RateLimit"] == '"test";r=2;t=1'


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"limit": 1, "window": "1s", "limits": [{"limit": 1, "window": "1s"}]}, "not both"),
        ({"window": "1s"}, "needs `limit` and `window`"),
        ({"limits": []}, "must not be empty"),
        ({"limit": 1, "window": "1s", "store": "redis"}, 'store = "redis" needs gateway.redis_url'),
        ({"limit": 2_000_000, "window": "1s"}, "finer than one per microsecond"),
    ],
)
def test_bad_combinations_are_value_errors(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_plugin(RateLimit, **options)


def test_a_redis_url_redis_py_cannot_use_is_a_load_error() -> None:
    settings = GatewaySettings(redis_url="http://user:secret@cache:6379")
    with pytest.raises(ValueError, match="must start with redis://") as caught:
        build_plugin(RateLimit, limit=1, window="1s", settings=settings)
    assert "secret" not in str(caught.value)


@pytest.mark.parametrize(
    "options",
    [{"limit": 0, "window": "1s"}, {"limit": 1, "window": "250ms"}, {"limit": 1, "window": "1s", "key": "cookie"},
     {"limit": 1, "window": "1s", "headers": "ietf"}, {"limit": 1, "window": "1s", "store": "memcached"},
     {"limit": 1, "window": "1s", "bogus": 1}],
)
def test_bad_options_are_validation_errors(options: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        build_plugin(RateLimit, **options)


def test_store_auto_follows_redis_url() -> None:
    with_url = GatewaySettings(redis_url="redis://127.0.0.1:1/0")
    assert build_plugin(RateLimit, limit=1, window="1s", settings=with_url).uses_redis
    assert not build_plugin(RateLimit, limit=1, window="1s").uses_redis
    assert not build_plugin(RateLimit, limit=1, window="1s", store="local", settings=with_url).uses_redis


def test_local_store_evicts_expired_keys_and_stays_under_max_keys() -> None:
    clock = Clock(START)
    store = LocalStore([Limit.of(1, 10)], max_keys=1000, clock=clock)
    for i in range(100):
        assert store.decide(f"k{i}").allowed
    assert len(store) == 100
    clock.now += 11 * S  # every entry has expired: each new decision evicts up to two
    for i in range(30):
        store.decide(f"new{i}")
    assert len(store) == 100 - 2 * 30 + 30
    for i in range(30, 60):
        store.decide(f"new{i}")
    assert len(store) == 60  # the old ones are all gone, the new ones stay
    capped = LocalStore([Limit.of(1, 10)], max_keys=50, clock=clock)
    for i in range(500):
        capped.decide(f"k{i}")
    assert len(capped) == 50
    assert not capped.decide("k499").allowed  # the most recent keys are the ones kept


def test_breaker_opens_after_consecutive_failures_and_one_probe_closes_it() -> None:
    breaker = Breaker(failures=3, cooldown=1.0)
    for now in (0.0, 0.1):
        breaker.failure(now)
        assert breaker.allow(now, probe=False)
    breaker.success()  # a success resets the count
    for now in (1.0, 1.1, 1.2):
        breaker.failure(now)
    assert not breaker.closed
    assert not breaker.allow(1.3, probe=False)
    assert not breaker.allow(2.5, probe=False, after_cooldown=False)  # the PING alone probes
    assert breaker.allow(1.3, probe=True)
    assert not breaker.allow(1.3, probe=True)  # one probe at a time
    breaker.failure(1.35)  # failed probe: open again for a cooldown
    assert not breaker.allow(2.0, probe=False)
    assert breaker.allow(2.4, probe=False)  # cooldown over: one ordinary call may try
    breaker.success()
    assert breaker.closed and breaker.allow(2.5, probe=False)


async def test_pool_fails_fast_once_redis_refuses() -> None:
    metrics = Metrics()
    pool = RedisPool(f"redis://127.0.0.1:{free_port()}/0", metrics)
    try:
        for _ in range(3):
            with pytest.raises(RedisUnavailable):
                await pool.call(lambda client: client.ping())
        assert not pool.available
        assert metrics.registry.get_sample_value("gateway_redis_up") == 0
        started = time.perf_counter()
        with pytest.raises(RedisUnavailable, match="circuit open"):
            await pool.call(lambda client: client.ping())
        assert time.perf_counter() - started < 0.001
    finally:
        await pool.close()


async def test_store_errors_follow_on_store_error() -> None:
    url = GatewaySettings(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    outcomes = {}
    for policy in ("allow", "deny", "local"):
        metrics = Metrics()
        plugin = build_plugin(RateLimit, limit=1, window="1m", on_store_error=policy, settings=url, metrics=metrics)
        await plugin.startup()
        try:
            responses = [await run_plugin(plugin, make_request()) for _ in range(2)]
        finally:
            await plugin.shutdown()
            await plugin.context.redis.close()
        outcomes[policy] = [(r.status, r.headers.get("Retry-After"), "RateLimit" in r.headers) for r in responses]
        counted = {k: v for k, v in decisions(metrics).items() if v}
        outcomes[policy + " counted"] = counted  # type: ignore[assignment]
    assert outcomes == {
        "allow": [(200, None, False), (200, None, False)], "allow counted": {"store_error_allowed": 2},
        "deny": [(503, "1", False), (503, "1", False)], "deny counted": {"store_error_denied": 2},
        "local": [(200, None, True), (429, "60", True)], "local counted": {"local_fallback": 1, "limited": 1},
    }
