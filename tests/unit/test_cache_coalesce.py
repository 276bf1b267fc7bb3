"""Request coalescing: one call per key at a time, its stored answer shared, its failure not."""

from __future__ import annotations

import asyncio

from gateway.cache.coalesce import Coalescer


async def test_concurrent_requests_for_a_key_share_one_call() -> None:
    coalescer: Coalescer[str] = Coalescer()
    calls = 0
    release = asyncio.Event()

    async def request() -> str:
        nonlocal calls
        flight = coalescer.join("k")
        if not flight.leader:
            entry = await flight.wait(5.0)
            assert entry is not None
            return f"hit:{entry}"
        try:
            calls += 1
            await release.wait()
            return "miss:answer"
        finally:
            flight.finish("answer")

    tasks = [asyncio.ensure_future(request()) for _ in range(20)]
    await asyncio.sleep(0)
    assert coalescer.in_flight() == 1
    release.set()
    results = await asyncio.gather(*tasks)
    assert calls == 1
    assert sorted(results) == ["hit:answer"] * 19 + ["miss:answer"]
    assert coalescer.in_flight() == 0


async def test_a_failed_or_unstorable_call_is_not_shared() -> None:
    coalescer: Coalescer[str] = Coalescer()
    leader = coalescer.join("k")
    waiters = [coalescer.join("k") for _ in range(3)]
    assert leader.leader and not any(w.leader for w in waiters)
    leader.finish(None)  # the upstream failed, or answered `private`
    assert await asyncio.gather(*(w.wait(1.0) for w in waiters)) == [None, None, None]
    # the key is free again: the next request leads its own call
    assert coalescer.join("k").leader


async def test_keys_do_not_wait_for_each_other_and_waits_are_bounded() -> None:
    coalescer: Coalescer[str] = Coalescer()
    a, b = coalescer.join("a"), coalescer.join("b")
    assert a.leader and b.leader
    waiter = coalescer.join("a")
    started = asyncio.get_running_loop().time()
    assert await waiter.wait(0.05) is None  # the leader never finished: the waiter goes on
    assert asyncio.get_running_loop().time() - started < 1.0
    a.finish("late")
    assert coalescer.join("a").leader  # landed: the next call leads


async def test_a_cancelled_waiter_leaves_the_call_alone() -> None:
    coalescer: Coalescer[str] = Coalescer()
    leader = coalescer.join("k")
    waiter = asyncio.ensure_future(coalescer.join("k").wait(5.0))
    other = coalescer.join("k")
    await asyncio.sleep(0)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    leader.finish("answer")
    assert await other.wait(1.0) == "answer"
