"""The process's shared Redis client: one redis.asyncio connection pool per worker, a short
timeout on every call, and a small client-side breaker, so a Redis outage costs the request
path at most a few timeouts and then nothing.

    holder = context.redis                   # one RedisHolder per process (PluginContext)
    pool = holder.get(settings.redis_url, metrics)
    pool.acquire()                           # a user: keeps a light background PING going
    value = await pool.call(lambda r: r.get("k"))   # raises RedisUnavailable, never hangs
    pool.release()

``gateway_redis_up`` is set from the outcome of real calls and of the background PING.
The breaker: after ``failures`` consecutive failures, calls fail fast (no I/O) until a probe
succeeds. The background PING is the probe while someone holds the pool; without it, one
call is let through per ``cooldown``. redis-py itself never retries (we fail fast instead).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from gateway.metrics import Metrics

log = logging.getLogger("gateway.redis")
T = TypeVar("T")


SCHEMES = ("redis://", "rediss://", "unix://")


def check_url(url: str) -> str:
    """``url`` if redis-py can use it, else ValueError (for load-time checks)."""
    if not url.startswith(SCHEMES):
        raise ValueError(f"gateway.redis_url must start with redis://, rediss:// or unix://, got {_safe(url)!r}")
    return url


class RedisUnavailable(Exception):
    """Redis refused, timed out or failed, or the breaker is open: the caller decides what now."""


class Breaker:
    """Consecutive-failure breaker: closed -> open (fail fast) -> one probe -> closed."""

    def __init__(self, failures: int = 3, cooldown: float = 1.0) -> None:
        self.threshold = failures
        self.cooldown = cooldown
        self.failures = 0
        self.open_until = 0.0  # 0: closed
        self.probing = False

    @property
    def closed(self) -> bool:
        return self.open_until == 0.0

    def allow(self, now: float, probe: bool, after_cooldown: bool = True) -> bool:
        """May a call go to Redis now? While open, one trial at a time: a ``probe`` any time,
        an ordinary call once the cooldown is over (when ``after_cooldown``)."""
        if self.open_until == 0.0:
            return True
        if self.probing or not (probe or (after_cooldown and now >= self.open_until)):
            return False
        self.probing = True
        return True

    def success(self) -> None:
        self.failures = 0
        self.open_until = 0.0
        self.probing = False

    def failure(self, now: float) -> None:
        self.failures += 1
        self.probing = False
        if self.failures >= self.threshold or self.open_until:
            self.open_until = now + self.cooldown


class RedisPool:
    """One Redis URL's client (created lazily), its breaker and its ``gateway_redis_up``."""

    def __init__(
        self, url: str, metrics: Metrics | None = None, *, timeout: float = 0.05, failures: int = 3,
        cooldown: float = 1.0, ping_interval: float = 0.5, max_connections: int = 32,
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.max_connections = max_connections
        self._warmed = False
        self.ping_interval = ping_interval
        self.breaker = Breaker(failures, cooldown)
        self._up = metrics.redis_up if metrics is not None else None
        self._client: Redis | None = None
        self._errors: tuple[type[BaseException], ...] = (OSError, TimeoutError)
        self._answered: tuple[type[BaseException], ...] = ()
        self._users = 0
        self._pinger: asyncio.Task[None] | None = None

    @property
    def client(self) -> Redis:
        """The redis.asyncio client (no I/O until the first command)."""
        if self._client is None:
            from redis.asyncio import BlockingConnectionPool, Redis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
            from redis.exceptions import RedisError, ResponseError

            self._errors = (RedisError, OSError, TimeoutError)
            self._answered = (ResponseError,)  # Redis is up; the command itself was refused
            # A bounded pool: a burst waits a moment for a warm connection instead of opening
            # dozens (redis-py spends ~1 ms of CPU per new connection). Waiting counts toward
            # the call's timeout. No CLIENT SETINFO on connect: one round trip less.
            connections = BlockingConnectionPool.from_url(
                self.url, max_connections=self.max_connections, timeout=None,
                socket_timeout=self.timeout * 2, socket_connect_timeout=self.timeout * 2,
                retry=Retry(NoBackoff(), 0), health_check_interval=0, driver_info=None,
            )
            self._client = Redis(connection_pool=connections)
        return self._client

    @property
    def available(self) -> bool:
        """False while the breaker is open (calls would fail fast)."""
        return self.breaker.closed

    async def call(self, operation: Callable[[Redis], Awaitable[T]], *, probe: bool = False) -> T:
        """Run ``operation`` within the timeout; RedisUnavailable on any failure or open breaker."""
        breaker = self.breaker
        # While the background PING runs, it alone probes: requests never wait on a dead Redis.
        if not breaker.allow(time.monotonic(), probe, after_cooldown=self._pinger is None):
            raise RedisUnavailable("redis: circuit open after repeated failures")
        trial = not breaker.closed
        client = self.client
        try:
            async with asyncio.timeout(self.timeout):
                result = await operation(client)
        except self._answered as exc:
            self._record(True)
            raise RedisUnavailable(f"redis: {exc}") from exc
        except self._errors as exc:
            self._record(False)
            raise RedisUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc
        except asyncio.CancelledError:
            if trial:
                breaker.probing = False  # the caller went away: no verdict on Redis
            raise
        self._record(True)
        return result

    def _record(self, ok: bool) -> None:
        was_closed = self.breaker.closed
        if ok:
            self.breaker.success()
        else:
            self.breaker.failure(time.monotonic())
        if self._up is not None:
            self._up.set(1 if ok else 0)
        if was_closed != self.breaker.closed:
            log.warning("redis at %s is %s", _safe(self.url), "back" if ok else "failing: failing fast")

    # -- users and the background PING -------------------------------------------------

    def acquire(self) -> None:
        """Register a user; the first one starts the background PING (needs a running loop)."""
        self._users += 1
        if self._pinger is None:
            self._pinger = asyncio.get_running_loop().create_task(self._ping_loop())

    def release(self) -> None:
        """Unregister a user; the last one stops the PING (the connections stay pooled)."""
        self._users = max(0, self._users - 1)
        if self._users == 0 and self._pinger is not None:
            self._pinger.cancel()
            self._pinger = None

    async def ping(self) -> bool:
        """One probe; True when Redis answered."""
        try:
            await self.call(_ping, probe=True)
        except RedisUnavailable:
            return False
        return True

    async def warm(self, connections: int = 8) -> None:
        """Open a few connections ahead of traffic (once per pool; failures only count)."""
        if self._warmed:
            return
        self._warmed = True
        await asyncio.gather(*(self.ping() for _ in range(min(connections, self.max_connections))))

    async def _ping_loop(self) -> None:
        while True:
            try:
                await self.ping()
            except Exception:  # a bug must not end the probing silently
                log.exception("redis ping failed unexpectedly")
            await asyncio.sleep(self.ping_interval)

    async def close(self) -> None:
        """Stop the PING and close every connection."""
        if self._pinger is not None:
            self._pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pinger
            self._pinger = None
        if self._client is not None:
            client, self._client = self._client, None
            with contextlib.suppress(Exception):
                await client.aclose()


async def _ping(client: Redis) -> Any:
    return await client.ping()


def _safe(url: str) -> str:
    """The URL without credentials, for logs."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}" if sep else url


class RedisHolder:
    """Gives a process's plugins (and other features) one RedisPool per URL, made on first use."""

    def __init__(self) -> None:
        self._pools: dict[str, RedisPool] = {}

    def get(self, url: str, metrics: Metrics | None = None) -> RedisPool:
        """The pool for ``url``, created (without I/O) the first time it is asked for."""
        if not url:
            raise ValueError("no redis_url is configured")
        pool = self._pools.get(url)
        if pool is None:
            pool = self._pools[url] = RedisPool(url, metrics)
        return pool

    async def close(self) -> None:
        """Close every pool (the process is draining)."""
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            await pool.close()
