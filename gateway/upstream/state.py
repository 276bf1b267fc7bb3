"""What an upstream remembers between calls (docs/resilience.md): its balancer, health checks,
breakers and retry budget, and the gauges that show them.

A reload keeps an upstream's state while its config is unchanged: the process's
UpstreamStates (held by its Clients) shares states by name and config, and the one most
recently started owns the upstream's gauges.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import uuid
import weakref
from typing import TYPE_CHECKING

from gateway.config_model import UpstreamConfig
from gateway.errors import ServiceUnavailable
from gateway.upstream.balancer import Balancer
from gateway.upstream.breaker import OPEN, STATES, Breaker, BreakerGroup, BreakerSync
from gateway.upstream.health import Health
from gateway.upstream.retry import RetryBudget, RetryPolicy

if TYPE_CHECKING:  # prometheus_client must not be imported before multiprocess mode is set up
    from gateway.clients import Clients
    from gateway.metrics import Metrics

log = logging.getLogger("gateway.upstream.state")
_NONE: frozenset[str] = frozenset()


class UpstreamState:
    """What one upstream remembers between calls, shared by the runtimes that use it."""

    def __init__(self, name: str, config: UpstreamConfig, clients: Clients, registry: UpstreamStates) -> None:
        self.name = name
        self.config = config
        self.targets = tuple(config.targets)
        self.balancer = Balancer(config.balance, config.targets, config.weights)
        self.health = Health(config.targets, config.health) if config.health is not None else None
        self.breakers = BreakerGroup(config.breaker, self.targets) if config.breaker is not None else None
        self.retry = RetryPolicy(config.retry) if config.retry is not None else None
        self.budget = RetryBudget()
        self.metrics: Metrics | None = None
        self._clients = clients
        self._registry = registry
        self._users = 0
        self._task: asyncio.Task[None] | None = None
        self.sync: BreakerSync | None = None  # shared = true, once started with a redis_url
        if self.health is not None:
            self.health.on_change = self._target_changed
        if self.breakers is not None:
            self.breakers.on_change = self._breaker_changed

    def choose(self, tried: set[str] | None) -> str:
        """A target for the next attempt: healthy, breaker not open, not tried yet — relaxed
        in that order when nothing is left; 503 when every target is down."""
        health = self.health
        down = health.down if health is not None else _NONE
        blocked = self.breakers.blocked() if self.breakers is not None else _NONE
        if not (down or blocked or tried):
            return self.balancer.pick()
        if health is not None and health.all_down():
            wait = str(max(1, math.ceil(health.config.interval)))
            raise ServiceUnavailable("every target of this upstream is marked down", headers={"Retry-After": wait})
        avoid = down | blocked
        if tried:
            return self.balancer.pick_avoiding(avoid | tried, avoid, down)
        return self.balancer.pick_avoiding(avoid, down)

    def available(self) -> bool:
        """Could a call be made now (some target up, its breaker not open)?"""
        down = self.health.down if self.health is not None else _NONE
        if len(down) == len(self.targets):
            return False
        breakers = self.breakers
        if breakers is None or not breakers.not_closed:
            return True
        if not breakers.per_target:
            return breakers.single.available()
        return any(b.available() for t, b in breakers.breakers.items() if t not in down)

    # -- lifecycle and gauges ----------------------------------------------------------

    def bind(self, metrics: Metrics) -> None:
        self.metrics = metrics

    async def start(self, redis_url: str = "") -> None:
        self._users += 1
        self._registry.make_current(self)
        if self._users == 1 and self.health is not None:
            self._task = asyncio.get_running_loop().create_task(self.health.run(self._clients))
        if self.breakers is not None and self.breakers.config.shared:
            await self._share(redis_url)

    async def _share(self, redis_url: str) -> None:
        """Start (or move) the background Redis sync of a ``shared = true`` breaker."""
        if self.sync is not None and self.sync.pool.url == redis_url:
            return
        if self.sync is not None:
            await self.sync.stop()
            self.sync = None
        if not redis_url or self.breakers is None:
            log.warning("upstream %s: breaker.shared needs gateway.redis_url; the breaker stays local", self.name)
            return
        pool = self._clients.redis.get(redis_url, self.metrics)
        self.sync = BreakerSync(self.name, self.breakers, pool, self._registry.replica)
        self.sync.start()

    async def stop(self) -> None:
        self._users -= 1
        if self._users:
            return
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.sync is not None:
            await self.sync.stop()
            self.sync = None
        self._registry.retire(self)

    def _owns_gauges(self) -> bool:
        return self.metrics is not None and self._registry.current.get(self.name) is self

    def publish(self) -> None:
        """Write this upstream's gauges: breaker state and target health."""
        if self.metrics is None:
            return
        up = self.metrics.target_up
        for target in self.targets:
            up.labels(self.name, target).set(0 if self.health is not None and target in self.health.down else 1)
        if self.breakers is not None:
            self._breaker_changed(self.breakers.single, False)
        else:
            for state in STATES:
                with contextlib.suppress(KeyError):
                    self.metrics.breaker_state.remove(self.name, state)

    def unpublish(self, keep: tuple[str, ...] = ()) -> None:
        """Drop the gauge series of targets not in ``keep`` (and the breaker's, if none is kept)."""
        if self.metrics is None:
            return
        for target in self.targets:
            if target not in keep:
                with contextlib.suppress(KeyError):
                    self.metrics.target_up.remove(self.name, target)
        if not keep:
            for state in STATES:
                with contextlib.suppress(KeyError):
                    self.metrics.breaker_state.remove(self.name, state)

    def _target_changed(self, target: str, up: bool) -> None:
        if self.metrics is not None and self._owns_gauges():
            self.metrics.target_up.labels(self.name, target).set(1 if up else 0)

    def _breaker_changed(self, breaker: Breaker, local: bool) -> None:
        if local and self.sync is not None and breaker.state == OPEN:
            self.sync.tripped(breaker)
        if self.breakers is None or self.metrics is None or not self._owns_gauges():
            return
        current = self.breakers.state()
        for state in STATES:
            self.metrics.breaker_state.labels(self.name, state).set(1 if state == current else 0)


class UpstreamStates:
    """The UpstreamStates of one gateway process (held by its Clients), by name and config."""

    def __init__(self, clients: Clients) -> None:
        self._clients = clients
        self.states: weakref.WeakValueDictionary[tuple[str, str], UpstreamState] = weakref.WeakValueDictionary()
        self.current: dict[str, UpstreamState] = {}
        self.replica = uuid.uuid4().hex  # tells this process's shared-breaker trips from others'

    def get(self, name: str, config: UpstreamConfig) -> UpstreamState:
        """The running state for this upstream if its config is the same, else a new one."""
        key = (name, config.model_dump_json())
        state = self.states.get(key)
        if state is None:
            state = self.states[key] = UpstreamState(name, config, self._clients, self)
        return state

    def make_current(self, state: UpstreamState) -> None:
        previous = self.current.get(state.name)
        self.current[state.name] = state
        if previous is not None and previous is not state:
            previous.unpublish(keep=state.targets)
        state.publish()

    def retire(self, state: UpstreamState) -> None:
        if self.current.get(state.name) is state:
            del self.current[state.name]
            state.unpublish()
