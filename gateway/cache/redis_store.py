"""The response cache in Redis, shared by every process and replica (docs/caching.md).

Redis layout (``{route}`` is a Cluster hash tag, so one route's indexes share a slot; route
names cannot contain braces, so no two routes' keys overlap)::

    gw:cache:e:<h(key)>             hash: one field per variant, its 16-byte signature →
                                    ``Entry.encode()``; field ``o`` lists the variants in store
                                    order with their expiry (signature + 14-digit wall-clock
                                    ms); PEXPIRE = the longest-lived variant's expiry
    gw:cache:{<route>}:p:<h(path)>  set of the entry keys stored for one path of the route
    gw:cache:{<route>}:paths        set of that route's path sets

``h`` is a 128-bit BLAKE2b in hex, so any primary key will do; entry hashes sit outside the
route's namespace because a lookup knows only the primary key. Every key has a TTL: an index
set's is raised, never lowered, to cover the longest-lived entry it names, and a put samples
two members of a set above 64 members and removes those whose key has expired, so neither
dead entries nor dead index members pile up. A put is one EVALSHA (variants, expiries and indexes updated atomically),
a lookup one HGETALL; the indexes are what ``purge`` follows (SSCAN over the route's set,
then a script that pops and unlinks a bounded batch per round trip). The scripts touch the
index members they read, which Redis allows outside Cluster mode.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from gateway.cache.entry import Entry
from gateway.cache.store import MAX_VARIANTS, Store, StoreUnavailable
from gateway.redis_pool import RedisUnavailable

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from gateway.redis_pool import RedisPool

__all__ = ["RedisStore", "entry_key", "path_key", "route_key", "variants"]


ORDER_FIELD = b"o"
_RECORD = 30  # one variant in the order field: 16-byte signature + 14 ASCII digits of expiry ms

# KEYS: entry hash, path set, route set. ARGV: signature, record, now ms, expires ms, max variants.
PUT_LUA = """
local sig, now, expires, max = ARGV[1], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local order = redis.call('HGET', KEYS[1], 'o')
local kept = {}
if order then
  for i = 1, #order - 29, 30 do
    local s = string.sub(order, i, i + 15)
    local e = tonumber(string.sub(order, i + 16, i + 29))
    if s ~= sig then
      if e and e > now then kept[#kept + 1] = string.sub(order, i, i + 29)
      else redis.call('HDEL', KEYS[1], s) end
    end
  end
end
while #kept >= max do
  redis.call('HDEL', KEYS[1], string.sub(kept[1], 1, 16))
  table.remove(kept, 1)
end
local latest = expires
for _, record in ipairs(kept) do
  local e = tonumber(string.sub(record, 17))
  if e > latest then latest = e end
end
kept[#kept + 1] = sig .. string.format('%014d', expires)
redis.call('HSET', KEYS[1], 'o', table.concat(kept), sig, ARGV[2])
local ttl = latest - now
redis.call('PEXPIRE', KEYS[1], ttl)
local function index(set, member)
  redis.call('SADD', set, member)
  if redis.call('PTTL', set) < ttl then redis.call('PEXPIRE', set, ttl) end
  if redis.call('SCARD', set) > 64 then
    for _, m in ipairs(redis.call('SRANDMEMBER', set, 2)) do
      if redis.call('EXISTS', m) == 0 then redis.call('SREM', set, m) end
    end
  end
end
index(KEYS[2], KEYS[1])
index(KEYS[3], KEYS[2])
return 1
"""

# KEYS: the route set, then path sets to empty. ARGV: at most this many entry keys per call.
# Returns {variants dropped, the path sets not yet empty}.
PURGE_LUA = """
local budget = tonumber(ARGV[1])
local dropped = 0
local left = {}
for i = 2, #KEYS do
  if budget > 0 then
    local members = redis.call('SPOP', KEYS[i], budget)
    budget = budget - #members
    for _, key in ipairs(members) do
      local n = redis.call('HLEN', key)
      if n > 1 then dropped = dropped + n - 1 end
      redis.call('UNLINK', key)
    end
  end
  if redis.call('SCARD', KEYS[i]) == 0 then
    redis.call('SREM', KEYS[1], KEYS[i])
  else
    left[#left + 1] = KEYS[i]
  end
end
return {dropped, left}
"""


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def entry_key(key: str) -> str:
    """The Redis hash holding ``key``'s variants."""
    return "gw:cache:e:" + _digest(key)


def path_key(route: str, path: str) -> str:
    """The Redis set of the entry keys stored for ``path`` of ``route``."""
    return f"gw:cache:{{{route}}}:p:{_digest(path)}"


def route_key(route: str) -> str:
    """The Redis set of ``route``'s path sets."""
    return f"gw:cache:{{{route}}}:paths"


def variants(fields: dict[bytes, bytes], now: float) -> list[Entry]:
    """The unexpired, intact variants in an entry hash as HGETALL returns it, oldest first."""
    order = fields.get(ORDER_FIELD, b"")
    now_ms = now * 1000
    found = []
    for start in range(0, len(order) - _RECORD + 1, _RECORD):
        expires = order[start + 16:start + _RECORD]
        if not expires.isdigit() or int(expires) <= now_ms:
            continue
        value = fields.get(order[start:start + 16])
        entry = Entry.decode(value) if value is not None else None
        if entry is not None:
            found.append(entry)
    return found


class _Script:
    """A Lua script run by its SHA, loaded again when Redis has forgotten it (a restart)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def run(self, client: Redis, keys: list[str], args: list[Any]) -> Any:
        from redis.exceptions import NoScriptError

        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await client.script_load(self.source)
            return await client.evalsha(self.sha, len(keys), *keys, *args)


_PUT = _Script(PUT_LUA)
_PURGE = _Script(PURGE_LUA)


class RedisStore(Store):
    """Entries in Redis through the process's shared pool (its timeout and breaker): every
    process using the same Redis sees the same entries. Wall-clock expiries (``clock``)."""

    def __init__(self, pool: RedisPool, *, max_object_bytes: int = 1 << 20, max_variants: int = MAX_VARIANTS,
                 purge_batch: int = 500, clock: Callable[[], float] = time.time) -> None:
        if min(max_object_bytes, max_variants, purge_batch) < 1:
            raise ValueError("max_object_bytes, max_variants and purge_batch must be at least 1")
        self.pool = pool
        self.max_object_bytes = max_object_bytes
        self.max_variants = max_variants
        self.purge_batch = purge_batch
        self.clock = clock
        self._started = False

    @property
    def available(self) -> bool:
        return self.pool.available

    async def start(self) -> None:
        """Keep the pool's background PING going (it ends an outage for every user) and load
        the scripts; Redis being down now is not an error."""
        if not self._started:
            self._started = True
            self.pool.acquire()
            try:
                await self._call(lambda client: client.script_load(PUT_LUA))
                await self._call(lambda client: client.script_load(PURGE_LUA))
            except StoreUnavailable:
                return
            await self.pool.warm()

    async def close(self) -> None:
        """Release the pool (it stays open for its other users; the process closes it)."""
        if self._started:
            self._started = False
            self.pool.release()

    async def get(self, key: str) -> list[Entry]:
        name = entry_key(key)
        fields: dict[bytes, bytes] = await self._call(lambda client: client.hgetall(name))
        return variants(fields, self.clock())

    async def put(self, key: str, entry: Entry, ttl: float, *, route: str, path: str) -> bool:
        if not ttl > 0 or entry.size > self.max_object_bytes:
            return False
        try:
            record = entry.encode()
        except ValueError:
            return False
        now = math.floor(self.clock() * 1000)
        keys = [entry_key(key), path_key(route, path), route_key(route)]
        args = [entry.signature, record, now, now + max(1, math.ceil(ttl * 1000)), self.max_variants]
        await self._call(partial(_PUT.run, keys=keys, args=args))
        return True

    async def delete(self, key: str) -> None:
        name = entry_key(key)
        await self._call(lambda client: client.unlink(name))

    async def purge(self, route: str, path: str | None = None) -> int:
        routes = route_key(route)
        if path is not None:
            return await self._empty(routes, [path_key(route, path)])
        dropped, cursor = 0, 0
        while True:
            cursor, members = await self._scan(routes, cursor)
            if members:
                dropped += await self._empty(routes, [m.decode() for m in members])
            if cursor == 0:
                return dropped

    async def _scan(self, name: str, cursor: int) -> tuple[int, list[bytes]]:
        reply = await self._call(lambda client: client.sscan(name, cursor, count=self.purge_batch))
        next_cursor, members = reply
        return int(next_cursor), list(members)

    async def _empty(self, routes: str, sets: list[str]) -> int:
        """Pop and unlink the entries of ``sets`` a bounded batch per round trip."""
        dropped = 0
        while sets:
            keys = [routes, *sets]
            count, left = await self._call(partial(_PURGE.run, keys=keys, args=[self.purge_batch]))
            dropped += int(count)
            sets = [name.decode() for name in left]
        return dropped

    async def _call(self, operation: Callable[[Redis], Awaitable[Any]]) -> Any:
        try:
            return await self.pool.call(operation)
        except RedisUnavailable as exc:
            raise StoreUnavailable(str(exc)) from exc
