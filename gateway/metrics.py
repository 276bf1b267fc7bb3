"""Prometheus metrics: defined once per gateway, children bound when a config is built.

Labels are always config names (route, upstream, plugin) or small closed sets
(method, code, outcome); raw paths and client data never become labels.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.multiprocess import MultiProcessCollector

import gateway
from gateway.process_metrics import add_process_collector

UNMATCHED = "_unmatched"
MALFORMED = "_malformed"  # requests the HTTP parser rejected
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"})
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# ``*_created`` series double the output and are rarely queried; gateways usually omit them.
disable_created_metrics()  # type: ignore[no-untyped-call]

HOP_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1)
# body sizes: 0 (no body) and powers of 4 from 256 B to 64 MiB
SIZE_BUCKETS = (0, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)


def render(registry: CollectorRegistry) -> bytes:
    """The text exposition: of ``registry``, or summed over every process in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return generate_latest(registry)


def mark_process_dead(pid: int) -> None:
    """Forget a dead worker's live gauges (multiprocess mode)."""
    multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


class Metrics:
    """Every metric in docs/operations.md, registered in this gateway's own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # workers copy theirs (gateway.process_metrics)
            add_process_collector(r)
        self.requests = Counter(
            "gateway_requests_total", "Requests answered, by route, method, status code and who answered.",
            ["route", "method", "code", "source"], registry=r)
        self.request_duration = Histogram(
            "gateway_request_duration_seconds", "Time from request received to response fully sent.",
            ["route", "method"], buckets=REQUEST_BUCKETS, registry=r)
        self.request_size = Histogram(
            "gateway_request_size_bytes", "Request body bytes read from the client.",
            ["route"], buckets=SIZE_BUCKETS, registry=r)
        self.response_size = Histogram(
            "gateway_response_size_bytes", "Response body bytes sent to the client.",
            ["route"], buckets=SIZE_BUCKETS, registry=r)
        self.plugin_duration = Histogram(
            "gateway_plugin_duration_seconds",
            "Time spent in each plugin itself (the rest of the chain excluded).",
            ["route", "plugin"], buckets=HOP_BUCKETS, registry=r)
        self.upstream_requests = Counter(
            "gateway_upstream_requests_total", "Calls to upstreams (each attempt), by outcome.",
            ["route", "upstream", "code", "outcome"], registry=r)
        self.upstream_duration = Histogram(
            "gateway_upstream_request_duration_seconds",
            "Time from sending an upstream call to its response headers.",
            ["route", "upstream"], buckets=REQUEST_BUCKETS, registry=r)
        self.steps = Counter(
            "gateway_steps_total", "Orchestration steps by outcome.",
            ["route", "step", "outcome"], registry=r)
        self.step_duration = Histogram(
            "gateway_step_duration_seconds", "Time an orchestration step took (all its calls).",
            ["route", "step"], buckets=REQUEST_BUCKETS, registry=r)
        self.inflight = Gauge(
            "gateway_inflight_requests", "Requests being handled now.", ["route"],
            multiprocess_mode="livesum", registry=r)
        self.client_connections = Gauge(
            "gateway_client_connections", "Open client connections on the public listener.",
            multiprocess_mode="livesum", registry=r)
        self.auth_failures = Counter(
            "gateway_auth_failures_total", "Requests refused by an auth plugin.",
            ["route", "plugin", "reason"], registry=r)
        self.ratelimit_decisions = Counter(
            "gateway_ratelimit_decisions_total", "Rate-limit decisions.",
            ["route", "decision"], registry=r)
        self.breaker_state = Gauge(
            "gateway_circuit_breaker_state", "Circuit breaker state (1 for the current one).",
            ["upstream", "state"], multiprocess_mode="max", registry=r)
        self.breaker_rejected = Counter(
            "gateway_circuit_breaker_rejected_total", "Calls rejected by an open breaker.",
            ["route", "upstream"], registry=r)
        self.retries = Counter(
            "gateway_retries_total", "Retried upstream calls.", ["route", "upstream", "reason"], registry=r)
        self.target_up = Gauge(
            "gateway_upstream_target_up", "Whether an upstream target is considered healthy.",
            ["upstream", "target"], multiprocess_mode="max", registry=r)
        self.redis_up = Gauge(
            "gateway_redis_up", "Whether the shared Redis answers.", multiprocess_mode="max", registry=r)
        self.cache_requests = Counter(
            "gateway_cache_requests_total", "Requests to a route or step cache, by result.",
            ["route", "result"], registry=r)
        self.access_log_dropped = Counter(
            "gateway_access_log_dropped_total", "Access-log lines dropped because writing fell too far behind.",
            registry=r)
        self.config_reloads = Counter(
            "gateway_config_reloads_total", "Configuration reloads by result.", ["result"], registry=r)
        self.build_info = Gauge(
            "gateway_build_info", "The running gateway version.", ["version"],
            multiprocess_mode="max", registry=r)
        self.build_info.labels(gateway.__version__).set(1)
        for result in ("success", "failure"):
            self.config_reloads.labels(result)


class RequestMetrics:
    """The children one route needs per request, bound once per config."""

    __slots__ = ("_metrics", "route", "inflight", "_durations", "_counts", "_size_in", "_size_out")

    def __init__(self, metrics: Metrics, route: str) -> None:
        self._metrics = metrics
        self.route = route
        self.inflight = metrics.inflight.labels(route)
        self._durations: dict[str, MetricWrapperBase] = {}
        self._counts: dict[tuple[str, int, str], Counter] = {}
        self._size_in = metrics.request_size.labels(route).observe
        self._size_out = metrics.response_size.labels(route).observe

    def observe(self, method: str, status: int, source: str, seconds: float, size_in: int = 0,
                size_out: int = 0) -> None:
        """Count one finished request and record its duration and body sizes."""
        self._size_in(size_in)
        self._size_out(size_out)
        method = method if method in METHODS else "other"  # keys stay bounded too
        key = (method, status, source)
        counter = self._counts.get(key)
        if counter is None:
            counter = self._metrics.requests.labels(self.route, method, str(status), source)
            self._counts[key] = counter
        counter.inc()
        duration = self._durations.get(method)
        if duration is None:
            duration = self._metrics.request_duration.labels(self.route, method)
            self._durations[method] = duration
        duration.observe(seconds)  # type: ignore[attr-defined]


class UpstreamMetrics:
    """The children for calls from one route to one upstream, bound once per config."""

    __slots__ = ("_metrics", "route", "upstream", "duration", "_counts")

    def __init__(self, metrics: Metrics, route: str, upstream: str) -> None:
        self._metrics = metrics
        self.route = route
        self.upstream = upstream
        self.duration = metrics.upstream_duration.labels(route, upstream)
        self._counts: dict[tuple[int, str], Counter] = {}

    def count(self, status: int, outcome: str) -> None:
        """Count one upstream call; ``status`` 0 means no HTTP status was received."""
        key = (status, outcome)
        counter = self._counts.get(key)
        if counter is None:
            code = str(status) if status else ""
            counter = self._metrics.upstream_requests.labels(self.route, self.upstream, code, outcome)
            self._counts[key] = counter
        counter.inc()
