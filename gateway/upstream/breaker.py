"""Circuit breakers (docs/resilience.md): pybreaker's state machine, driven from asyncio.

pybreaker counts consecutive failures and moves closed → open → half-open → closed. What it
lacks on an event loop is added here (docs/resilience.md): a bounded number of half-open probes
(pybreaker admits every concurrent call), a neutral outcome for a call whose client went
away (pybreaker knows only success and failure), and a monotonic clock for the open period.
Only the header phase of a call is judged; a body that breaks off later is not.

    admit()  ─ closed: go · open: CircuitOpen (503 + Retry-After) until reset_timeout,
               then half-open · half-open: go while probes < half_open_probes
    record() ─ failure / success / None (neutral: counts for nothing)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import pybreaker

from gateway.compose import Layer
from gateway.config_model import BreakerConfig
from gateway.errors import GatewayTimeout, ServiceUnavailable, UpstreamError
from gateway.http import Response
from gateway.redis_pool import RedisPool, RedisUnavailable
from gateway.upstream.request import UpstreamRequest

if TYPE_CHECKING:  # prometheus_client must not be imported before multiprocess mode is set up
    from redis.asyncio import Redis

    from gateway.metrics import UpstreamMetrics

log = logging.getLogger("gateway.upstream.breaker")

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
STATES = (CLOSED, OPEN, HALF_OPEN)
_FROM_PYBREAKER = {pybreaker.STATE_CLOSED: CLOSED, pybreaker.STATE_OPEN: OPEN, pybreaker.STATE_HALF_OPEN: HALF_OPEN}
Clock = Callable[[], float]


class CircuitOpen(ServiceUnavailable):
    """The upstream's breaker is open: answered at once, without calling the upstream."""

    slug = "circuit-open"
    outcome = "circuit_open"

    def __init__(self, retry_after: float) -> None:
        seconds = max(1, math.ceil(retry_after))
        super().__init__("the upstream is failing; calls to it are paused (circuit breaker open)",
                         headers={"Retry-After": str(seconds)})


class _Failed(Exception):
    """Stands in for the real failure inside pybreaker (the caller keeps the real one)."""


def _succeed() -> None:
    return None


def _fail() -> None:
    raise _Failed


class Breaker(pybreaker.CircuitBreakerListener):
    """One circuit. ``on_change(breaker, old, new, local)`` is called on every real transition;
    ``local`` is False when the trip came from another replica (``trip``)."""

    def __init__(self, config: BreakerConfig, key: str = "", *, clock: Clock = time.monotonic,
                 on_change: Callable[[Breaker, str, str, bool], None] | None = None) -> None:
        self.key = key
        self.reset_timeout = config.reset_timeout
        self.max_probes = config.half_open_probes
        self.state = CLOSED
        self.opened_at = 0.0
        self.probes = 0
        self.generation = 0  # bumped at every trip: calls admitted before it no longer count
        self.on_change = on_change
        self._clock = clock
        self._remote = False
        self._cb = pybreaker.CircuitBreaker(
            fail_max=config.failures, reset_timeout=config.reset_timeout,
            throw_new_error_on_trip=False, listeners=[self], name=key or None,
        )

    def remaining(self) -> float:
        """Seconds until an open circuit lets a probe through (0 when it would now)."""
        return max(0.0, self.opened_at + self.reset_timeout - self._clock())

    def available(self) -> bool:
        """Would ``admit`` let a call through now? (No state change.)"""
        if self.state == CLOSED:
            return True
        if self.state == OPEN and self.remaining() > 0:
            return False
        return self.probes < self.max_probes

    def admit(self) -> bool:
        """Let a call through or raise CircuitOpen; True when the call is a half-open probe."""
        if self.state == CLOSED:
            return False
        if self.state == OPEN:
            remaining = self.remaining()
            if remaining > 0:
                raise CircuitOpen(remaining)
            self._cb.half_open()
        if self.probes >= self.max_probes:
            raise CircuitOpen(1)
        self.probes += 1
        return True

    def record(self, failed: bool | None, probe: bool, generation: int | None = None) -> None:
        """Count a finished call: True a failure, False a success, None neither. A call
        admitted before the latest trip (``generation``) never decides the half-open state."""
        if probe:
            self.probes -= 1
        if failed is None or self.state == OPEN:  # an answer to a call made before the trip
            return
        if generation is not None and generation != self.generation:
            return
        if not failed and self.state == CLOSED and not self._cb.fail_counter:
            return  # pybreaker would only reset a counter that is 0 already (the hot path)
        with contextlib.suppress(_Failed):
            self._cb.call(_fail if failed else _succeed)

    def trip(self, remaining: float) -> None:
        """Open because another replica did; stays open for ``remaining`` seconds."""
        if self.state == OPEN and self.remaining() >= remaining:
            return
        self._remote = True
        try:
            self._cb.open()
        finally:
            self._remote = False
        self.opened_at = self._clock() - self.reset_timeout + remaining

    # pybreaker.CircuitBreakerListener
    def state_change(self, cb: pybreaker.CircuitBreaker, old_state: pybreaker.CircuitBreakerState | None,
                     new_state: pybreaker.CircuitBreakerState) -> None:
        old, new = self.state, _FROM_PYBREAKER[new_state.name]
        if new == OPEN:
            self.opened_at = self._clock()
            self.generation += 1
        if old == new:  # pybreaker repeats closed → closed; trip() may re-open
            return
        self.state = new
        if self.on_change is not None:
            self.on_change(self, old, new, not self._remote)


class BreakerGroup:
    """The breakers of one upstream: one (``scope = "upstream"``) or one per target."""

    def __init__(self, config: BreakerConfig, targets: tuple[str, ...], *, clock: Clock = time.monotonic) -> None:
        self.config = config
        self.per_target = config.scope == "target"
        keys = targets if self.per_target else ("",)
        self.breakers = {key: Breaker(config, key, clock=clock, on_change=self._changed) for key in keys}
        self.single = next(iter(self.breakers.values()))
        self.failing = frozenset(config.on)
        self.not_closed = 0
        self.on_change: Callable[[Breaker, bool], None] | None = None

    def _changed(self, breaker: Breaker, old: str, new: str, local: bool) -> None:
        self.not_closed += (new != CLOSED) - (old != CLOSED)
        if self.on_change is not None:
            self.on_change(breaker, local)

    def state(self) -> str:
        """``open`` when every circuit is open (the upstream rejects), ``half_open`` when some
        are not closed, else ``closed``."""
        if not self.not_closed:
            return CLOSED
        if all(b.state == OPEN for b in self.breakers.values()):
            return OPEN
        return HALF_OPEN

    def blocked(self) -> frozenset[str]:
        """Targets whose own breaker would reject a call now (``scope = "target"`` only)."""
        if not (self.per_target and self.not_closed):
            return frozenset()
        return frozenset(t for t, b in self.breakers.items() if not b.available())

    def available(self) -> bool:
        """Could any circuit take a call now?"""
        return not self.not_closed or any(b.available() for b in self.breakers.values())


def breaker_layer(group: BreakerGroup, metrics: UpstreamMetrics, rejected: Callable[[], None]
                  ) -> Layer[UpstreamRequest, Response]:
    """Guard each call's header phase: reject when open, then judge the outcome.

    Failures: connect errors, resets, timeouts and the statuses in ``breaker.on``. Anything
    else the upstream answers (4xx included) is a success; a cancelled call or an error that
    is not the upstream's (no healthy target, body too large) counts for nothing.
    """
    failing = group.failing
    count = metrics.count
    per_target = group.per_target
    breakers = group.breakers
    single = group.single

    async def guard(request: UpstreamRequest, call_next: Callable[[UpstreamRequest], Awaitable[Response]]
                    ) -> Response:
        breaker = breakers[request.target] if per_target else single
        try:
            probe = breaker.admit()
        except CircuitOpen:
            rejected()
            count(0, CircuitOpen.outcome)
            raise
        generation = breaker.generation
        failed: bool | None = None
        try:
            response = await call_next(request)
            failed = response.status in failing
            return response
        except (UpstreamError, GatewayTimeout):
            failed = True
            raise
        finally:
            breaker.record(failed, probe, generation)

    return guard


class BreakerSync:
    """``shared = true``: trips of one upstream's breakers go to Redis and come back from it,
    in a background task. A local trip is queued (no I/O on the request path) and published
    at once as ``SET gw:breaker:NAME[:TARGET] <replica> PX <open ms>``; every ``INTERVAL`` the
    task also reads those keys and opens a local breaker for what is left of another
    replica's trip. Redis down or slow: the pool fails fast, breakers stay local."""

    INTERVAL = 0.25

    def __init__(self, upstream: str, group: BreakerGroup, pool: RedisPool, replica: str) -> None:
        self.keys = {key: f"gw:breaker:{upstream}" + (f":{key}" if key else "") for key in group.breakers}
        self._group = group
        self.pool = pool
        self._replica = replica
        self._pending: dict[str, float] = {}  # breaker key → monotonic time its trip ends
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def tripped(self, breaker: Breaker) -> None:
        """A local breaker opened: publish it soon (called on the request path, so no I/O)."""
        self._pending[breaker.key] = time.monotonic() + breaker.remaining()
        self._wake.set()

    def start(self) -> None:
        self.pool.acquire()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self.pool.release()

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.sync()
            except RedisUnavailable as exc:
                log.debug("shared breaker: %s", exc)
            except Exception:  # keep sharing alive whatever one round trip did
                log.exception("shared breaker: sync failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.INTERVAL):
                    await self._wake.wait()

    async def sync(self) -> None:
        """One round trip: publish local trips, then adopt other replicas' trips."""
        now = time.monotonic()
        sending = {key: end for key, end in self._pending.items() if end - now > 0.001}
        keys = list(self.keys.items())

        async def exchange(client: Redis) -> list[Any]:
            pipe = client.pipeline(transaction=False)
            for key, end in sending.items():
                pipe.execute_command("SET", self.keys[key], self._replica, "PX", int((end - now) * 1000))
            for _, name in keys:
                pipe.execute_command("GET", name)
                pipe.execute_command("PTTL", name)
            return list(await pipe.execute())

        replies = (await self.pool.call(exchange))[len(sending):]
        for key, end in sending.items():
            if self._pending.get(key) == end:
                del self._pending[key]
        for index, (key, _) in enumerate(keys):
            owner, ttl = replies[2 * index], replies[2 * index + 1]
            owner = owner.decode() if isinstance(owner, bytes) else owner
            if owner is not None and ttl > 0 and owner != self._replica:
                self._group.breakers[key].trip(ttl / 1000)
