"""Where the response cache keeps its entries (docs/caching.md): in this process
(``LocalStore``) or in Redis, shared by every process and replica (``RedisStore``).

One interface, ``Store``. The caller builds the primary key (route, method, path, query,
``key_headers``; opaque here) and picks among the variants a lookup returns the one whose
Vary values match its request, so a lookup is one call — one round trip — even with Vary.

    get(key)                    → every live variant stored under ``key``, oldest first
    put(key, entry, ttl, *, route, path)
                                  stores ``entry`` for ``ttl`` seconds, replacing the variant
                                  with the same ``Entry.signature``; at most ``max_variants``
                                  per key (the oldest goes); False when not stored
    delete(key)                   drops every variant of ``key``
    purge(route, path=None)     → how many entries were dropped for a route, or for one of its
                                  paths (the normalized path, exactly as given to ``put``)

A store that cannot answer raises ``StoreUnavailable`` — within the Redis pool's short
timeout, or at once while its breaker is open — and the caller answers ``X-Cache: BYPASS``.

The Redis store and its key layout are in gateway.cache.redis_store.
"""

from __future__ import annotations

import abc
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway.cache.entry import Entry

if TYPE_CHECKING:

    pass

__all__ = ["MAX_VARIANTS", "LocalStore", "Store", "StoreUnavailable"]

MAX_VARIANTS = 8


class StoreUnavailable(Exception):
    """The store cannot answer now (Redis down, slow, refusing, or its breaker open): the
    request bypasses the cache."""


class Store(abc.ABC):
    """A cache store (see the module docstring); every method may raise ``StoreUnavailable``."""

    max_object_bytes: int
    """Entries whose ``size`` is larger are never stored (the caller need not buffer them)."""
    max_variants: int
    """Variants kept per primary key."""

    @property
    def available(self) -> bool:
        """False while calls would fail fast (a caller may bypass without trying)."""
        return True

    async def start(self) -> None:  # noqa: B027 - a store without resources needs no start
        """Get ready for traffic (called with the event loop running)."""

    async def close(self) -> None:  # noqa: B027
        """Let go of what ``start`` took."""

    @abc.abstractmethod
    async def get(self, key: str) -> list[Entry]:
        """Every unexpired variant stored under ``key``, oldest first; [] when none."""

    @abc.abstractmethod
    async def put(self, key: str, entry: Entry, ttl: float, *, route: str, path: str) -> bool:
        """Store ``entry`` under ``key`` for ``ttl`` seconds, found by ``purge(route, path)``;
        False when it is not stored (``ttl`` ≤ 0, larger than ``max_object_bytes``)."""

    @abc.abstractmethod
    async def delete(self, key: str) -> None:
        """Drop every variant stored under ``key``."""

    @abc.abstractmethod
    async def purge(self, route: str, path: str | None = None) -> int:
        """Drop the entries stored for ``route`` (only those of ``path`` when given); how many."""


# -- in this process ------------------------------------------------------------------------


class _Slot:
    """One stored variant, as the LRU holds it."""

    __slots__ = ("entry", "expires", "key", "signature", "size")

    def __init__(self, key: str, signature: bytes, entry: Entry, size: int, expires: float) -> None:
        self.key = key
        self.signature = signature
        self.entry = entry
        self.size = size
        self.expires = expires


class _Stored:
    """A primary key's variants (in store order) and where purge finds them."""

    __slots__ = ("path", "route", "variants")

    def __init__(self, route: str, path: str) -> None:
        self.route = route
        self.path = path
        self.variants: dict[bytes, _Slot] = {}


class LocalStore(Store):
    """An LRU in this process, bounded by entry count and bytes (``Entry.size``); O(1) per
    get and put. Expired entries are never returned, and a put drops up to two expired
    entries from the cold end, so unused dead entries do not stay for long. Lookups return
    the stored objects themselves: callers read them, never change them."""

    def __init__(self, *, max_entries: int = 10_000, max_bytes: int = 64 << 20, max_object_bytes: int = 1 << 20,
                 max_variants: int = MAX_VARIANTS, clock: Callable[[], float] = time.monotonic) -> None:
        if min(max_entries, max_bytes, max_variants) < 1:
            raise ValueError("max_entries, max_bytes and max_variants must be at least 1")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_object_bytes = min(max_object_bytes, max_bytes)
        self.max_variants = max_variants
        self.clock = clock
        self.bytes = 0
        self._lru: OrderedDict[tuple[str, bytes], _Slot] = OrderedDict()  # coldest first
        self._keys: dict[str, _Stored] = {}
        self._paths: dict[str, dict[str, set[str]]] = {}  # route → path → primary keys

    def __len__(self) -> int:
        """Variants stored (expired ones not yet dropped included)."""
        return len(self._lru)

    async def get(self, key: str) -> list[Entry]:
        stored = self._keys.get(key)
        if stored is None:
            return []
        now = self.clock()
        found = []
        for slot in list(stored.variants.values()):
            if slot.expires <= now:
                self._drop(slot)
            else:
                self._lru.move_to_end((key, slot.signature))
                found.append(slot.entry)
        return found

    async def put(self, key: str, entry: Entry, ttl: float, *, route: str, path: str) -> bool:
        size = entry.size
        if not ttl > 0 or size > self.max_object_bytes:
            return False
        now = self.clock()
        self._sweep(now)
        stored = self._keys.get(key)
        if stored is not None and (stored.route != route or stored.path != path):
            self._delete(key, stored)
            stored = None
        if stored is None:
            stored = self._keys[key] = _Stored(route, path)
            self._paths.setdefault(route, {}).setdefault(path, set()).add(key)
        signature = entry.signature
        variants = stored.variants
        old = variants.pop(signature, None)
        if old is not None:
            self._forget(old)
        while len(variants) >= self.max_variants:
            self._forget(variants.pop(next(iter(variants))))
        slot = _Slot(key, signature, entry, size, now + ttl)
        variants[signature] = slot
        self._lru[(key, signature)] = slot
        self.bytes += size
        lru = self._lru
        while len(lru) > self.max_entries or self.bytes > self.max_bytes:
            self._drop(next(iter(lru.values())))  # never the new slot: it fits and is hottest
        return True

    async def delete(self, key: str) -> None:
        stored = self._keys.get(key)
        if stored is not None:
            self._delete(key, stored)

    async def purge(self, route: str, path: str | None = None) -> int:
        paths = self._paths.get(route)
        if not paths:
            return 0
        keys = list(paths.get(path, ())) if path is not None else [key for keys in paths.values() for key in keys]
        dropped = 0
        for key in keys:
            stored = self._keys[key]
            dropped += len(stored.variants)
            self._delete(key, stored)
        return dropped

    def _sweep(self, now: float) -> None:
        # Two per put outpace the one slot a put adds: amortised O(1).
        for _ in range(2):
            if not self._lru:
                return
            slot = next(iter(self._lru.values()))
            if slot.expires > now:
                return
            self._drop(slot)

    def _forget(self, slot: _Slot) -> None:
        """Out of the LRU and the byte count (the caller updates the key's variants)."""
        del self._lru[(slot.key, slot.signature)]
        self.bytes -= slot.size

    def _drop(self, slot: _Slot) -> None:
        self._forget(slot)
        stored = self._keys[slot.key]
        del stored.variants[slot.signature]
        if not stored.variants:
            self._unindex(slot.key, stored)

    def _delete(self, key: str, stored: _Stored) -> None:
        for slot in stored.variants.values():
            self._forget(slot)
        stored.variants.clear()
        self._unindex(key, stored)

    def _unindex(self, key: str, stored: _Stored) -> None:
        del self._keys[key]
        paths = self._paths[stored.route]
        keys = paths[stored.path]
        keys.discard(key)
        if not keys:
            del paths[stored.path]
            if not paths:
                del self._paths[stored.route]
