"""Where rate-limit state lives: in this process (``LocalStore``) or in Redis (``RedisStore``).

Both keep, per key and per limit, one GCRA theoretical arrival time (see ratelimit_algo) and
return a ``Decision``. The local store is O(1) per decision and bounded in memory: entries
are kept in last-update order, expired ones are evicted from the front as new ones come in,
and ``max_keys`` caps the total (the least recently updated entry goes first). The Redis
store makes one EVALSHA per decision: the Lua script below reads every limit's state, uses
Redis ``TIME`` as the clock (replica clocks never matter), decides and writes, atomically.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from gateway import RedisPool, RedisUnavailable
from plugins.ratelimit_algo import Decision, Limit, decide

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["LUA", "LocalStore", "RedisStore", "RedisUnavailable"]


def monotonic_us() -> int:
    """The local clock: microseconds that never go backwards."""
    return time.monotonic_ns() // 1000


class LocalStore:
    """State in a dict of this process: exact for one process, per-process with several."""

    def __init__(self, limits: Sequence[Limit], max_keys: int = 100_000,
                 clock: Callable[[], int] = monotonic_us) -> None:
        self.limits = tuple(limits)
        self.max_keys = max_keys
        self.clock = clock
        self._zeros = (0,) * len(self.limits)
        # key -> (expires_at, tat per limit); order = last update, oldest first
        self._entries: OrderedDict[str, tuple[int, tuple[int, ...]]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def decide(self, key: str) -> Decision:
        """Decide one request for ``key`` and charge it when it passes."""
        now = self.clock()
        entries = self._entries
        self._evict(now)
        entry = entries.get(key)
        decision = decide(self.limits, entry[1] if entry is not None else self._zeros, now)
        if decision.allowed:
            tats = tuple([now + debt for debt in decision.debts])
            entries[key] = (max(tats) if len(tats) > 1 else tats[0], tats)
            entries.move_to_end(key)
            if len(entries) > self.max_keys:
                entries.popitem(last=False)
        return decision

    def _evict(self, now: int) -> None:
        # Two per decision outpaces the at most one entry a decision adds: amortised O(1).
        entries = self._entries
        for _ in range(2):
            if not entries:
                return
            oldest, (expires, _) = next(iter(entries.items()))
            if expires > now:
                return
            del entries[oldest]


# KEYS: one per limit. ARGV: interval_us, tolerance_us for each limit, in the same order.
# Returns {allowed (0/1), debt_us per limit}. Integers only: Lua's doubles hold µs exactly.
LUA = """
local now_t = redis.call('TIME')
local now = tonumber(now_t[1]) * 1000000 + tonumber(now_t[2])
local stored = redis.call('MGET', unpack(KEYS))
local debts = {}
local allowed = 1
for i = 1, #KEYS do
  local debt = (tonumber(stored[i]) or 0) - now
  if debt < 0 then debt = 0 end
  debts[i] = debt
  if debt > tonumber(ARGV[2 * i]) then allowed = 0 end
end
if allowed == 1 then
  for i = 1, #KEYS do
    local debt = debts[i] + tonumber(ARGV[2 * i - 1])
    debts[i] = debt
    redis.call('SET', KEYS[i], string.format('%d', now + debt), 'PX', math.ceil(debt / 1000))
  end
end
table.insert(debts, 1, allowed)
return debts
"""
LUA_SHA = hashlib.sha1(LUA.encode()).hexdigest()


class RedisStore:
    """State in Redis, shared by every process and replica using the same keys."""

    def __init__(self, pool: RedisPool, limits: Sequence[Limit], prefix: str) -> None:
        self.pool = pool
        self.limits = tuple(limits)
        self.prefix = prefix
        self._args = tuple(str(v) for lim in self.limits for v in (lim.interval_us, lim.tolerance_us))
        self._suffixes = tuple(f":{lim.limit}/{lim.window_us}" for lim in self.limits)
        from redis.exceptions import NoScriptError  # imported only when Redis is used

        self._no_script = NoScriptError

    def keys(self, key: str) -> list[str]:
        """The Redis keys of ``key``: one per limit, one hash tag (same Cluster slot)."""
        base = f"{self.prefix}{{{key}}}"
        return [base + suffix for suffix in self._suffixes]

    async def decide(self, key: str) -> Decision:
        """One atomic round trip; RedisUnavailable when Redis does not answer in time."""
        keys = self.keys(key)
        no_script = self._no_script

        async def run(client: Redis) -> Any:
            try:
                return await client.evalsha(LUA_SHA, len(keys), *keys, *self._args)
            except no_script:  # a restarted Redis forgot the script: load it, once
                await client.script_load(LUA)
                return await client.evalsha(LUA_SHA, len(keys), *keys, *self._args)

        reply = await self.pool.call(run)
        return Decision(bool(reply[0]), tuple(int(debt) for debt in reply[1:]))

    async def load_script(self) -> bool:
        """Load the script ahead of the first request (False when Redis is not there now)."""
        try:
            await self.pool.call(lambda client: client.script_load(LUA))
        except RedisUnavailable:
            return False
        return True
