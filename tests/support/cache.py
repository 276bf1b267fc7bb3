"""What the cache store tests share: entries to store, and the behaviour every Store (in this
process or in Redis) must show."""

from __future__ import annotations

from gateway.cache.entry import Entry
from gateway.cache.store import Store


def entry(body: bytes = b"hello", vary: tuple[str, ...] = (), values: tuple[str | None, ...] = (),
          status: int = 200) -> Entry:
    """A 60-second-fresh text entry, the variant for ``vary`` = ``values``."""
    return Entry(status, [("Content-Type", "text/plain")], body, 1_700_000_000.0, 0.0, 60.0,
                 vary=vary, vary_values=values)


async def purges_by_path_and_by_route(store: Store) -> None:
    """Two variants and another key under route a's /x, one under its /y, one under route b:
    purging a's /x drops 3 entries and nothing else, then the route drops the rest of a."""
    await store.put("a1", entry(b"1", ("v",), ("1",)), 10, route="a", path="/x")
    await store.put("a1", entry(b"2", ("v",), ("2",)), 10, route="a", path="/x")
    await store.put("a2", entry(), 10, route="a", path="/x")
    await store.put("a3", entry(), 10, route="a", path="/y")
    await store.put("b1", entry(), 10, route="b", path="/x")
    assert await store.purge("a", "/x") == 3
    assert await store.get("a1") == [] and await store.get("a2") == []
    assert len(await store.get("a3")) == 1
    assert await store.purge("a", "/x") == 0
    assert await store.purge("a", "/nothing") == 0
    assert await store.purge("a") == 1
    assert await store.get("a3") == []
    assert len(await store.get("b1")) == 1
