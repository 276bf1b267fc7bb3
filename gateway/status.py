"""What the admin status page shows (docs/operations.md, "Status page"), as /status.json.

Per route: requests since start and, over the last minute, requests per second, the share of
5xx answers and the p99 duration. Per upstream: each target's health and breaker state.

The last-minute numbers are differences of the cumulative series /metrics exports
(``gateway_requests_total`` and the buckets of ``gateway_request_duration_seconds``): a
snapshot is taken every ``interval`` seconds and kept while it may still be needed; a figure
compares the counts now with the newest snapshot at least ``span`` seconds old (the oldest
one while the gateway is younger than that). The supervisor reads the workers' series merged
(prometheus-client multiprocess mode), so the same code gives numbers over all workers.

prometheus-client is not imported here: the supervisor imports this module before
multiprocess mode is set up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import gateway

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from gateway.config_load import LoadedConfig
    from gateway.config_model import Config
    from gateway.upstream.state import UpstreamState

log = logging.getLogger("gateway.status")

SPAN = 60.0  # seconds the rates, error ratios and p99s look back
INTERVAL = 5.0  # seconds between two snapshots
NO_HEALTH_CHECK = "in rotation (no health check)"  # never "up": nothing checks it
UP, DOWN, UNKNOWN = "up", "down", "unknown"
REQUESTS = "gateway_requests_total"
DURATION_BUCKETS = "gateway_request_duration_seconds_bucket"
TARGET_UP = "gateway_upstream_target_up"
BREAKER_STATE = "gateway_circuit_breaker_state"
Clock = Callable[[], float]


# --- the window -----------------------------------------------------------------------------


@dataclass(slots=True)
class RouteCounts:
    """One route's cumulative counts at one moment, summed over methods, codes and sources."""

    requests: float = 0.0
    errors: float = 0.0  # 5xx answers
    buckets: dict[float, float] = field(default_factory=dict)  # upper bound (s) -> cumulative count


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every route's counts at ``at`` (seconds on the window's clock)."""

    at: float
    routes: Mapping[str, RouteCounts]

    @classmethod
    def of(cls, families: Iterable[Metric], at: float) -> Snapshot:
        """Read the request counter and duration buckets out of collected metric families."""
        routes: dict[str, RouteCounts] = {}
        for family in families:
            for sample in family.samples:
                if sample.name == REQUESTS:
                    counts = routes.setdefault(sample.labels["route"], RouteCounts())
                    counts.requests += sample.value
                    if sample.labels.get("code", "").startswith("5"):
                        counts.errors += sample.value
                elif sample.name == DURATION_BUCKETS:
                    buckets = routes.setdefault(sample.labels["route"], RouteCounts()).buckets
                    bound = float(sample.labels["le"])
                    buckets[bound] = buckets.get(bound, 0.0) + sample.value
        return cls(at, routes)


@dataclass(frozen=True, slots=True)
class RouteFigures:
    """What the page shows for one route."""

    requests: int  # since start
    rps: float  # over the window
    error_ratio: float | None  # 5xx share over the window; None without requests
    p99_ms: float | None  # None without requests

    def as_json(self, name: str) -> dict[str, Any]:
        return {"name": name, "requests": self.requests, "rps": self.rps, "error_ratio": self.error_ratio,
                "p99_ms": self.p99_ms}


NO_TRAFFIC = RouteFigures(0, 0.0, None, None)


class TrafficWindow:
    """Snapshots of the cumulative counts, one every ``interval`` seconds, kept while needed:
    those of the last ``span`` seconds and the newest one before. ``clock`` (monotonic seconds)
    can be replaced in tests."""

    def __init__(self, *, span: float = SPAN, interval: float = INTERVAL, clock: Clock = time.monotonic) -> None:
        if span <= 0 or interval <= 0:
            raise ValueError("span and interval must be positive")
        self.span = span
        self.interval = interval
        self.clock = clock
        self._snapshots: deque[Snapshot] = deque()

    def record(self, snapshot: Snapshot) -> None:
        """Keep ``snapshot``; forget those older than the newest one at least ``span`` old."""
        snapshots = self._snapshots
        snapshots.append(snapshot)
        horizon = snapshot.at - self.span
        while len(snapshots) > 1 and snapshots[1].at <= horizon:
            snapshots.popleft()

    def base(self, now: float) -> Snapshot | None:
        """What ``now`` is compared with: the newest snapshot at least ``span`` old, else the
        oldest (the gateway is younger than ``span``), or None before the first."""
        chosen = self._snapshots[0] if self._snapshots else None
        for snapshot in self._snapshots:
            if snapshot.at > now - self.span:
                break
            chosen = snapshot
        return chosen

    def figures(self, now: Snapshot) -> tuple[float, dict[str, RouteFigures]]:
        """The window's length in seconds, and each route's figures over it."""
        base = self.base(now.at)
        seconds = max(0.0, now.at - base.at) if base is not None else 0.0
        before = base.routes if base is not None else {}
        return seconds, {name: route_figures(counts, before.get(name), seconds)
                         for name, counts in now.routes.items()}


def route_figures(now: RouteCounts, before: RouteCounts | None, seconds: float) -> RouteFigures:
    """One route's figures from its counts now and at the start of a window ``seconds`` long."""
    then = before if before is not None else RouteCounts()
    requests = max(0.0, now.requests - then.requests)
    errors = max(0.0, now.errors - then.errors)
    buckets = [(bound, max(0.0, count - then.buckets.get(bound, 0.0))) for bound, count in sorted(now.buckets.items())]
    p99 = quantile(0.99, buckets)
    return RouteFigures(
        requests=int(now.requests),
        rps=requests / seconds if seconds > 0 else 0.0,
        error_ratio=errors / requests if requests > 0 else None,
        p99_ms=p99 * 1000 if p99 is not None else None,
    )


def quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """The ``q`` quantile of a histogram given as (upper bound, cumulative count) pairs in
    order, last +Inf, computed as Prometheus' ``histogram_quantile`` does: linear within the
    bucket it falls in, and the highest finite bound when it falls in the +Inf bucket."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound


# --- upstreams ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TargetView:
    url: str
    health: str  # up, down, NO_HEALTH_CHECK (or unknown: not reported yet)
    breaker: str | None  # closed, open, half_open; None without a breaker


@dataclass(frozen=True, slots=True)
class UpstreamView:
    name: str
    balance: str
    breaker: str | None
    targets: tuple[TargetView, ...]

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "balance": self.balance, "breaker": self.breaker,
                "targets": [{"url": t.url, "health": t.health, "breaker": t.breaker} for t in self.targets]}


def upstreams_from_states(config: Config, states: Mapping[str, UpstreamState]) -> list[UpstreamView]:
    """What this process itself knows of its upstreams (one process, no supervisor): each
    target's own breaker when breakers are per target."""
    views = []
    for name, upstream in config.upstreams.items():
        state = states.get(name)
        if state is None:
            continue
        group, health = state.breakers, state.health
        overall = group.state() if group is not None else None
        targets = []
        for target in state.targets:
            up = NO_HEALTH_CHECK if health is None else UP if health.is_up(target) else DOWN
            breaker = group.breakers[target].state if group is not None and group.per_target else overall
            targets.append(TargetView(target, up, breaker))
        views.append(UpstreamView(name, upstream.balance, overall, tuple(targets)))
    return views


def upstreams_from_gauges(config: Config, families: Iterable[Metric]) -> list[UpstreamView]:
    """The upstreams as the workers' merged gauges tell (``max`` over workers): a target is up
    while any worker sees it up; a breaker shows the most open state any worker has."""
    up: dict[tuple[str, str], float] = {}
    breakers: dict[str, set[str]] = {}
    for family in families:
        for sample in family.samples:
            if sample.name == TARGET_UP:
                key = (sample.labels["upstream"], sample.labels["target"])
                up[key] = max(up.get(key, 0.0), sample.value)
            elif sample.name == BREAKER_STATE and sample.value >= 1:
                breakers.setdefault(sample.labels["upstream"], set()).add(sample.labels["state"])
    views = []
    for name, upstream in config.upstreams.items():
        overall = None
        if upstream.breaker is not None:
            states = breakers.get(name, set())
            overall = next((s for s in ("open", "half_open") if s in states), "closed")
        targets = []
        for target in upstream.targets:
            if upstream.health is None:
                health = NO_HEALTH_CHECK
            else:
                value = up.get((name, target))
                health = UNKNOWN if value is None else UP if value >= 1 else DOWN
            targets.append(TargetView(target, health, overall))
        views.append(UpstreamView(name, upstream.balance, overall, tuple(targets)))
    return views


# --- the document -------------------------------------------------------------------------


class StatusSource(Protocol):
    """What the status needs of a gateway process or a supervisor (gateway.admin.AdminSource)."""

    traffic: TrafficWindow
    started_at: float  # time.monotonic() at start
    workers: int
    last_reload: tuple[float, str] | None  # (time.time(), "success" | "failure")

    def is_ready(self) -> bool: ...

    def current_config(self) -> LoadedConfig: ...

    def read_metrics(self) -> list[Metric]:
        """The metric families the status reads (blocking: called in a thread)."""
        ...

    def upstream_views(self, families: list[Metric]) -> list[UpstreamView]: ...


async def sample(source: StatusSource) -> None:
    """Take one snapshot into the source's window."""
    window = source.traffic
    families = await asyncio.to_thread(source.read_metrics)
    window.record(Snapshot.of(families, window.clock()))


async def keep_sampling(source: StatusSource) -> None:
    """A snapshot every ``interval`` seconds, until cancelled; a failed reading is logged and
    the next one tried."""
    while True:
        await asyncio.sleep(source.traffic.interval)
        try:
            await sample(source)
        except Exception:
            log.exception("reading the metrics for the status page failed")


@contextlib.asynccontextmanager
async def sampling(source: StatusSource) -> AsyncIterator[None]:
    """The first snapshot now (the start of every window), then one every interval."""
    await sample(source)
    task = asyncio.get_running_loop().create_task(keep_sampling(source))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def status_document(source: StatusSource) -> dict[str, Any]:
    """/status.json: version, uptime, workers, readiness, last reload, the routes' figures
    and the upstreams' targets."""
    families = await asyncio.to_thread(source.read_metrics)
    seconds, figures = source.traffic.figures(Snapshot.of(families, source.traffic.clock()))
    config = source.current_config().config
    last_reload = None
    if source.last_reload is not None:
        when, result = source.last_reload
        last_reload = {"time": rfc3339(when), "result": result}
    return {
        "version": gateway.__version__,
        "uptime_seconds": round(time.monotonic() - source.started_at, 3),
        "workers": source.workers,
        "ready": source.is_ready(),
        "last_reload": last_reload,
        "window_seconds": round(seconds, 3),
        "routes": [figures.get(route.name, NO_TRAFFIC).as_json(route.name) for route in config.routes],
        "upstreams": [view.as_json() for view in source.upstream_views(families)],
    }


def rfc3339(when: float) -> str:
    """``when`` (seconds since the epoch) as RFC 3339 UTC with milliseconds."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when)) + f".{int(when % 1 * 1000):03d}Z"
