"""An upstream and the stack every call to it goes through (docs/configuration.md, docs/resilience.md):

    retry ─▶ breaker ─▶ balancer ─▶ measure ─▶ sender (pooled client)    scope = "upstream"
    retry ─▶ balancer ─▶ breaker ─▶ measure ─▶ sender                    scope = "target"

A policy is in the stack only when configured. Built once per config and route; proxy routes
and orchestration steps call the same stack. What an upstream remembers between calls —
balancer, health, breakers, retry budget — is its UpstreamState. A reload keeps that state
while the upstream's config is unchanged: states are shared per process (per ClientHolder)
by name and config, and the one most recently started owns the upstream's gauges.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from gateway.compose import compose
from gateway.config_model import UpstreamConfig
from gateway.errors import GatewayError, ServiceUnavailable, UpstreamConnectError
from gateway.http import BodyStream, Response
from gateway.plugin import ClientHolder
from gateway.upstream.balancer import Balancer
from gateway.upstream.breaker import OPEN, STATES, Breaker, BreakerGroup, BreakerSync, breaker_layer
from gateway.upstream.health import Health
from gateway.upstream.request import UpstreamHandler, UpstreamLayer, UpstreamRequest
from gateway.upstream.retry import RetryBudget, RetryPolicy, retry_layer
from gateway.upstream.sender import Sender
from gateway.upstream.websocket import WebSocketSender

if TYPE_CHECKING:  # prometheus_client must not be imported before multiprocess mode is set up
    from gateway.metrics import Metrics, UpstreamMetrics

log = logging.getLogger("gateway.upstream.stack")
_NONE: frozenset[str] = frozenset()


class UpstreamState:
    """What one upstream remembers between calls, shared by the runtimes that use it."""

    def __init__(self, name: str, config: UpstreamConfig, client: ClientHolder, registry: _Registry) -> None:
        self.name = name
        self.config = config
        self.targets = tuple(config.targets)
        self.balancer = Balancer(config.balance, config.targets, config.weights)
        self.health = Health(config.targets, config.health) if config.health is not None else None
        self.breakers = BreakerGroup(config.breaker, self.targets) if config.breaker is not None else None
        self.retry = RetryPolicy(config.retry) if config.retry is not None else None
        self.budget = RetryBudget()
        self.metrics: Metrics | None = None
        self._client = client
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
            self._task = asyncio.get_running_loop().create_task(self.health.run(self._client))
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
        pool = self._client.redis.get(redis_url, self.metrics)
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


class _Registry:
    """The UpstreamStates of one gateway process, by name and config."""

    def __init__(self) -> None:
        self.states: weakref.WeakValueDictionary[tuple[str, str], UpstreamState] = weakref.WeakValueDictionary()
        self.current: dict[str, UpstreamState] = {}
        self.replica = uuid.uuid4().hex  # tells this process's shared-breaker trips from others'

    def get(self, name: str, config: UpstreamConfig, client: ClientHolder) -> UpstreamState:
        key = (name, config.model_dump_json())
        state = self.states.get(key)
        if state is None:
            state = self.states[key] = UpstreamState(name, config, client, self)
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


_REGISTRIES: weakref.WeakKeyDictionary[ClientHolder, _Registry] = weakref.WeakKeyDictionary()


def shared_state(name: str, config: UpstreamConfig, client: ClientHolder) -> UpstreamState:
    """The state for this upstream in this process: the running one if its config is the same."""
    registry = _REGISTRIES.get(client)
    if registry is None:
        registry = _REGISTRIES[client] = _Registry()
    return registry.get(name, config, client)


class Upstream:
    """One ``[upstreams.NAME]`` in one config version: its state, client settings and stacks."""

    def __init__(self, name: str, config: UpstreamConfig, client: ClientHolder, max_msg_size: int) -> None:
        self.name = name
        self.config = config
        self.state = shared_state(name, config, client)
        self.balancer = self.state.balancer
        self.sender: UpstreamHandler = Sender(client, config.timeout, max_msg_size)
        self._client = client
        self._max_msg_size = max_msg_size
        self._started = False

    async def start(self, redis_url: str = "") -> None:
        """Start health checks and a shared breaker's sync (once per state); take over the
        upstream's gauges. ``redis_url`` is ``gateway.redis_url`` (for ``breaker.shared``)."""
        if not self._started:
            self._started = True
            await self.state.start(redis_url)

    async def stop(self) -> None:
        """Let go of the state; the last user stops its health checks."""
        if self._started:
            self._started = False
            await self.state.stop()

    def stack(self, route: str, metrics: Metrics, *, websocket: bool = False) -> UpstreamHandler:
        """The composed call path to this upstream for one route; ``websocket``: the path an
        upgrade takes on a ``websocket = true`` route (no retry: a handshake is not replayed;
        the WebSocket sender in place of the HTTP one)."""
        from gateway.metrics import UpstreamMetrics

        state = self.state
        state.bind(metrics)
        measured = UpstreamMetrics(metrics, route, self.name)
        layers: list[UpstreamLayer] = []
        if state.retry is not None and not websocket:
            layers.append(retry_layer(state.retry, state.budget, state.available, metrics.retries, route, self.name))
        guard = None
        if state.breakers is not None:
            guard = breaker_layer(state.breakers, measured, metrics.breaker_rejected.labels(route, self.name).inc)
            if not state.breakers.per_target:
                layers.append(guard)
        layers.append(self._balance)
        if guard is not None and state.breakers is not None and state.breakers.per_target:
            layers.append(guard)
        layers.append(_measure(measured))
        if websocket:
            return compose(WebSocketSender(self._client, self.config.timeout.response, self._max_msg_size), layers)
        return compose(self.sender, layers)

    async def _balance(self, request: UpstreamRequest, call_next: UpstreamHandler) -> Response:
        state = self.state
        balancer = state.balancer
        health = state.health
        target = state.choose(request.tried)
        request.target = target
        balancer.acquire(target)
        try:
            response = await call_next(request)
        except BaseException as exc:
            balancer.release(target)
            if health is not None and isinstance(exc, UpstreamConnectError):
                health.passive(target, ok=False)
            raise
        if health is not None:
            health.passive(target, ok=response.status < 500)
        if response.stream is None or response.upgrade is not None or balancer.policy != "least_requests":
            balancer.release(target)  # a tunnel is not a request in flight; only least_requests counts bodies
        else:
            response.stream = _Tracked(response.stream, lambda: balancer.release(target))
        return response


class _Tracked:
    """A body stream that runs ``on_release`` once when released (in-flight accounting)."""

    __slots__ = ("_inner", "_on_release", "length")

    def __init__(self, inner: BodyStream, on_release: Callable[[], None]) -> None:
        self._inner = inner
        self._on_release: Callable[[], None] | None = on_release
        self.length = getattr(inner, "length", None)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._inner.__aiter__()

    async def read(self) -> bytes:
        return await self._inner.read()  # type: ignore[attr-defined,no-any-return]

    def release(self) -> None:
        self._inner.release()
        if self._on_release is not None:
            self._on_release()
            self._on_release = None


def _measure(metrics: UpstreamMetrics) -> UpstreamLayer:
    """Time each attempt to its response headers and count it by outcome: the answer's
    (ok, http_error) or the error's own ``outcome``. An attempt ended by an error without
    one (the client's upload broke off: 413/408) is neither timed nor counted."""
    observe = metrics.duration.observe
    count = metrics.count

    async def measure(request: UpstreamRequest, call_next: UpstreamHandler) -> Response:
        start = time.perf_counter()
        try:
            response = await call_next(request)
        except GatewayError as exc:
            outcome = exc.outcome
            if outcome is not None:
                observe(time.perf_counter() - start)
                count(0, outcome)
            raise
        observe(time.perf_counter() - start)
        status = response.status
        count(status, "http_error" if status >= 500 else "ok")
        return response

    return measure
