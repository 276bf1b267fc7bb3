"""The Redis cache store against a real private redis-server: entries, variants, TTLs and purge
as another gateway process sees them, the key layout, and an outage (killed, frozen,
unreachable) turned into StoreUnavailable within the pool's timeout, then recovery."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from gateway.cache.entry import Entry
from gateway.cache.redis_store import RedisStore, entry_key, path_key, route_key
from gateway.cache.store import StoreUnavailable
from gateway.redis_pool import RedisHolder
from tests.support import RedisServer
from tests.support.cache import purges_by_path_and_by_route

OUTAGE_BOUND = 0.5  # seconds; the pool's timeout is 50 ms


def entry(body: bytes = b"hello", vary: tuple[str, ...] = (), values: tuple[str | None, ...] = ()) -> Entry:
    return Entry(200, [("Content-Type", "text/plain"), ("ETag", '"v1"')], body, time.time(), 0.0, 60.0,
                 vary=vary, vary_values=values)


StartStore = Callable[..., Awaitable[RedisStore]]


@pytest.fixture
async def open_store() -> AsyncIterator[StartStore]:
    """``await open_store(url, **options)``: a started RedisStore on a pool of its own, as in
    a separate gateway process; closed at the end of the test."""
    holders: list[RedisHolder] = []
    stores: list[RedisStore] = []

    async def start(url: str, **options: Any) -> RedisStore:
        holder = RedisHolder()
        holders.append(holder)
        store = RedisStore(holder.get(url), **options)
        stores.append(store)
        await store.start()
        return store

    yield start
    for store in stores:
        await store.close()
    for holder in holders:
        await holder.close()


@pytest.fixture
async def store(open_store: StartStore, redis_url: str) -> RedisStore:
    return await open_store(redis_url)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    """A plain client to look at what the store wrote."""
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def test_a_stored_entry_comes_back_whole(store: RedisStore) -> None:
    e = Entry(203, [("X-Odd", "caf\udce9"), ("Set", "a"), ("Set", "b")], bytes(range(256)) * 40, time.time(),
              3.0, 120.0, 30.0, 10.0)
    assert await store.put("GET /a", e, 10, route="r", path="/a")
    assert await store.get("GET /a") == [e]
    assert await store.get("GET /never") == []


async def test_variants_come_back_in_one_lookup_and_equal_vary_values_replace_one(
        open_store: StartStore, redis_url: str) -> None:
    store = await open_store(redis_url, max_variants=3)
    variants = [entry(str(i).encode(), ("accept-language",), (lang,)) for i, lang in enumerate(["en", "de", "fr"])]
    for e in variants:
        await store.put("k", e, 10, route="r", path="/")
    assert await store.get("k") == variants
    newer = entry(b"de again", ("Accept-Language",), ("de",))
    await store.put("k", newer, 10, route="r", path="/")
    assert await store.get("k") == [variants[0], variants[2], newer]
    fourth = entry(b"it", ("accept-language",), ("it",))
    await store.put("k", fourth, 10, route="r", path="/")
    assert await store.get("k") == [variants[2], newer, fourth], "the oldest variant went"


async def test_entries_expire_with_their_ttl_and_so_do_all_keys(store: RedisStore, redis: Redis) -> None:
    await store.put("short", entry(), 0.5, route="r", path="/p")
    await store.put("long", entry(), 30, route="r", path="/p")
    keys = [entry_key("short"), entry_key("long"), path_key("r", "/p"), route_key("r")]
    assert sorted(await redis.keys("gw:cache:*")) == sorted(k.encode() for k in keys)
    assert 0 < await redis.pttl(entry_key("short")) <= 500
    assert 29_000 < await redis.pttl(entry_key("long")) <= 30_000
    for name in keys[2:]:  # an index lives as long as the longest entry it names
        assert 29_000 < await redis.pttl(name) <= 30_000
    assert len(await store.get("short")) == 1
    await asyncio.sleep(0.6)
    assert await store.get("short") == []
    assert await redis.exists(entry_key("short")) == 0
    assert len(await store.get("long")) == 1


async def test_a_variant_expires_on_its_own_and_the_key_lives_as_long_as_the_longest(
        store: RedisStore, redis: Redis) -> None:
    short, long = entry(b"s", ("a",), ("1",)), entry(b"l", ("a",), ("2",))
    await store.put("k", long, 1.5, route="r", path="/")
    await store.put("k", short, 0.2, route="r", path="/")
    assert 1000 < await redis.pttl(entry_key("k")) <= 1500
    await asyncio.sleep(0.4)
    assert await store.get("k") == [long]
    await store.put("k", entry(b"n", ("a",), ("3",)), 5, route="r", path="/")
    assert await redis.hlen(entry_key("k")) == 3, "the expired variant was dropped by the put: o, long, new"


async def test_purge_drops_a_path_or_a_route_and_counts_the_entries(store: RedisStore, redis: Redis) -> None:
    await purges_by_path_and_by_route(store)
    assert await store.purge("never") == 0
    assert sorted(await redis.keys("gw:cache:*")) == sorted(
        k.encode() for k in [entry_key("b1"), path_key("b", "/x"), route_key("b")])


async def test_purge_of_a_large_route_works_in_bounded_batches(open_store: StartStore, redis_url: str) -> None:
    store = await open_store(redis_url, purge_batch=3)
    for path in range(7):
        for query in range(5):
            await store.put(f"/p{path}?q={query}", entry(), 10, route="big", path=f"/p{path}")
    await store.put("other", entry(), 10, route="big2", path="/p0")
    assert await store.purge("big", "/p0") == 5
    assert await store.purge("big") == 30
    assert await store.get("/p3?q=1") == []
    assert len(await store.get("other")) == 1


async def test_delete_drops_every_variant_of_a_key(store: RedisStore) -> None:
    await store.put("k", entry(b"1", ("a",), ("1",)), 10, route="r", path="/")
    await store.put("k", entry(b"2", ("a",), ("2",)), 10, route="r", path="/")
    await store.delete("k")
    await store.delete("never")
    assert await store.get("k") == []
    assert await store.purge("r") == 0


async def test_two_gateway_processes_share_entries_and_purges(open_store: StartStore, redis_url: str) -> None:
    one, two = await open_store(redis_url), await open_store(redis_url)
    assert one.pool is not two.pool
    e = entry(b"shared", ("accept-encoding",), ("gzip",))
    await one.put("k", e, 10, route="r", path="/s")
    assert await two.get("k") == [e]
    other = entry(b"br", ("accept-encoding",), ("br",))
    await two.put("k", other, 10, route="r", path="/s")
    assert await one.get("k") == [e, other]
    assert await two.purge("r", "/s") == 2
    assert await one.get("k") == []


async def test_a_garbled_record_is_a_miss_not_an_error(store: RedisStore, redis: Redis) -> None:
    good, bad = entry(b"good", ("a",), ("1",)), entry(b"bad", ("a",), ("2",))
    await store.put("k", good, 10, route="r", path="/")
    await store.put("k", bad, 10, route="r", path="/")
    await redis.hset(entry_key("k"), bad.signature, b"GWc\x01garbage")
    assert await store.get("k") == [good]
    await redis.hset(entry_key("k"), "o", b"\xff" * 7)
    assert await store.get("k") == []
    await redis.delete(entry_key("k"))
    await redis.set(entry_key("k"), b"not a hash")
    with pytest.raises(StoreUnavailable):  # Redis refused the command: bypass, no crash
        await store.get("k")


async def test_an_oversized_entry_or_no_ttl_is_not_sent(open_store: StartStore, redis_url: str, redis: Redis) -> None:
    store = await open_store(redis_url, max_object_bytes=entry(b"x" * 100).size)
    assert await store.put("ok", entry(b"x" * 100), 10, route="r", path="/")
    assert not await store.put("big", entry(b"x" * 101), 10, route="r", path="/")
    assert not await store.put("none", entry(), 0, route="r", path="/")
    assert await redis.exists(entry_key("big"), entry_key("none")) == 0


async def test_dead_index_members_are_pruned_by_later_puts(store: RedisStore, redis: Redis) -> None:
    for query in range(70):
        await store.put(f"/p?q={query}", entry(), 0.3, route="r", path="/p")
    await store.put("/p?live", entry(), 10, route="r", path="/p")
    await asyncio.sleep(0.35)
    before = await redis.scard(path_key("r", "/p"))
    for _ in range(30):
        await store.put("/p?live", entry(), 10, route="r", path="/p")
    assert before == 71
    assert await redis.scard(path_key("r", "/p")) < before


# -- outages --------------------------------------------------------------------------------


async def unavailable_within(call: Callable[[], Awaitable[Any]]) -> float:
    """Seconds ``call`` took to raise StoreUnavailable."""
    started = time.perf_counter()
    with pytest.raises(StoreUnavailable):
        await call()
    return time.perf_counter() - started


async def recovers(store: RedisStore, within: float = 5.0) -> float:
    """Seconds until the store answers again (fails the test after ``within``)."""
    started = time.perf_counter()
    while True:
        try:
            await store.get("probe")
            return time.perf_counter() - started
        except StoreUnavailable:
            if time.perf_counter() - started > within:
                pytest.fail(f"the store did not recover within {within} s")
            await asyncio.sleep(0.05)


async def outage_calls(store: RedisStore) -> list[float]:
    """Every kind of call during an outage: each raises StoreUnavailable, each within the bound."""
    calls: list[Callable[[], Awaitable[Any]]] = [
        lambda: store.get("k"), lambda: store.put("k", entry(), 10, route="r", path="/"),
        lambda: store.delete("k"), lambda: store.purge("r", "/"), lambda: store.purge("r"),
    ] * 3
    took = [await unavailable_within(call) for call in calls]
    assert max(took) < OUTAGE_BOUND, took
    return took


async def test_a_killed_redis_is_unavailable_at_once_then_recovers(
        open_store: StartStore, own_redis: RedisServer) -> None:
    store = await open_store(own_redis.url)
    await store.put("k", entry(), 10, route="r", path="/")
    own_redis.kill()
    took = await outage_calls(store)
    assert not store.available
    own_redis.start()
    back = await recovers(store)
    assert store.available
    assert await store.get("k") == []  # a restarted Redis has forgotten everything (and its scripts)
    assert await store.put("k", entry(b"again"), 10, route="r", path="/")
    assert (await store.get("k"))[0].body == b"again"
    print(f"killed: first call {took[0] * 1e3:.1f} ms, slowest {max(took) * 1e3:.1f} ms, back in {back:.2f} s")


async def test_a_frozen_redis_costs_one_timeout_then_fails_fast_then_recovers(
        open_store: StartStore, own_redis: RedisServer) -> None:
    store = await open_store(own_redis.url)
    await store.put("k", entry(), 10, route="r", path="/")
    own_redis.freeze()
    took = await outage_calls(store)
    assert took[0] >= store.pool.timeout * 0.9, "the first call waited for the pool's timeout"
    assert max(took[3:]) < 0.01, "once the breaker opened, calls fail without waiting"
    own_redis.thaw()
    back = await recovers(store)
    assert len(await store.get("k")) == 1
    print(f"frozen: first call {took[0] * 1e3:.1f} ms, open breaker {max(took[3:]) * 1e6:.0f} µs, back in {back:.2f} s")


async def test_a_redis_that_never_accepts_is_unavailable_within_the_timeout(open_store: StartStore,
                                                                            own_redis: RedisServer) -> None:
    store = await open_store(own_redis.url)
    own_redis.blackhole()
    await outage_calls(store)
    own_redis.end_blackhole()
    own_redis.start()
    await recovers(store)
    assert await store.put("k", entry(), 10, route="r", path="/")


async def test_store_starts_while_redis_is_down_and_works_once_it_is_up(open_store: StartStore,
                                                                        own_redis: RedisServer) -> None:
    own_redis.kill()
    store = await open_store(own_redis.url)  # start() does not fail
    assert await unavailable_within(lambda: store.get("k")) < OUTAGE_BOUND
    own_redis.start()
    await recovers(store)
    assert await store.put("k", entry(), 10, route="r", path="/")
    assert len(await store.get("k")) == 1
