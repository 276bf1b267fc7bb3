"""Request coalescing (docs/caching.md): concurrent misses for one key make one upstream call.

The first request for a key leads: it calls the upstream and, once the answer is stored,
hands the stored entry to the requests that arrived meanwhile, which answer from it (a HIT).
A leader whose call fails, or whose answer cannot be stored, hands over nothing: each waiter
then calls the upstream itself — a failure is never shared as if it were a cached answer.
A leader finishes even when it fails or is cancelled (in a ``finally``), and a waiter never
waits longer than it is told, so no request hangs on another one.
"""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

T = TypeVar("T")


class Flight(Generic[T]):
    """One key's call in progress, as seen by one request: its leader or a waiter."""

    __slots__ = ("_coalescer", "_future", "key", "leader")

    def __init__(self, coalescer: Coalescer[T], key: str, future: asyncio.Future[T | None], leader: bool) -> None:
        self._coalescer = coalescer
        self.key = key
        self._future = future
        self.leader = leader

    async def wait(self, within: float) -> T | None:
        """A waiter: the leader's stored entry, or None (the leader failed, or ``within`` seconds passed)."""
        try:
            return await asyncio.wait_for(asyncio.shield(self._future), within)
        except TimeoutError:
            return None

    def finish(self, entry: T | None) -> None:
        """The leader: hand ``entry`` (None: nothing storable) to the waiters and let the key go."""
        if not self.leader:
            return
        self._coalescer._land(self.key, self._future)
        if not self._future.done():
            self._future.set_result(entry)


class Coalescer(Generic[T]):
    """The calls in progress, by key (one per route cache or step cache)."""

    def __init__(self) -> None:
        self._flights: dict[str, asyncio.Future[T | None]] = {}

    def join(self, key: str) -> Flight[T]:
        """Lead the call for ``key``, or wait for the one in progress. A leader must call
        ``finish`` exactly once, also when it fails (``finally``)."""
        future = self._flights.get(key)
        if future is not None:
            return Flight(self, key, future, leader=False)
        future = asyncio.get_running_loop().create_future()
        self._flights[key] = future
        return Flight(self, key, future, leader=True)

    def in_flight(self) -> int:
        return len(self._flights)

    def _land(self, key: str, future: asyncio.Future[T | None]) -> None:
        if self._flights.get(key) is future:
            del self._flights[key]
