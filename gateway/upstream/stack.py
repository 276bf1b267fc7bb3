"""An upstream and the stack every call to it goes through (docs/configuration.md, docs/resilience.md):

    retry ─▶ breaker ─▶ balancer ─▶ measure ─▶ sender (pooled client)    scope = "upstream"
    retry ─▶ balancer ─▶ breaker ─▶ measure ─▶ sender                    scope = "target"

A policy is in the stack only when configured. Built once per config and route; proxy routes
and orchestration steps call the same stack. What an upstream remembers between calls —
balancer, health, breakers, retry budget — is its UpstreamState (gateway.upstream.state).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from gateway.compose import compose
from gateway.config_model import UpstreamConfig
from gateway.errors import GatewayError, UpstreamConnectError
from gateway.http import BodyStream, Response
from gateway.request_scope import CLIENT, RequestScope, Span, current, end_span
from gateway.trace_context import new_span_id
from gateway.upstream.breaker import breaker_layer
from gateway.upstream.request import UpstreamHandler, UpstreamLayer, UpstreamRequest
from gateway.upstream.retry import retry_layer
from gateway.upstream.sender import Sender
from gateway.upstream.websocket import WebSocketSender

if TYPE_CHECKING:  # prometheus_client must not be imported before multiprocess mode is set up
    from gateway.clients import Clients
    from gateway.metrics import Metrics, UpstreamMetrics


class Upstream:
    """One ``[upstreams.NAME]`` in one config version: its state, client settings and stacks."""

    def __init__(self, name: str, config: UpstreamConfig, clients: Clients, max_msg_size: int,
                 *, sender: UpstreamHandler | None = None) -> None:
        """``sender``: the innermost hop in place of the pooled HTTP client (a test's MockSender)."""
        self.name = name
        self.config = config
        self.state = clients.upstreams.get(name, config)
        self.balancer = self.state.balancer
        self.sender: UpstreamHandler = sender or Sender(clients, config.timeout, max_msg_size)
        self._clients = clients
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
            return compose(WebSocketSender(self._clients, self.config.timeout.response, self._max_msg_size), layers)
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
    one (the client's upload broke off: 413/408) is neither timed nor counted.

    Each attempt also sends the request's trace onward with a span id of its own (W3C
    ``traceparent``, ``tracestate`` passed on), records a client span when the trace is
    sampled, and notes itself for the access log (docs/operations.md)."""
    observe = metrics.duration.observe
    count = metrics.count

    async def measure(request: UpstreamRequest, call_next: UpstreamHandler) -> Response:
        scope = current()
        span = None
        if scope is not None:
            span = _propagate(scope, request)
        start = time.perf_counter()
        try:
            response = await call_next(request)
        except GatewayError as exc:
            outcome = exc.outcome
            if outcome is not None:
                observe(time.perf_counter() - start)
                count(0, outcome)
            if scope is not None:
                if scope.upstreams is not None:
                    scope.upstreams.ended(None)
                if span is not None:
                    span.attributes["error.type"] = outcome or type(exc).__name__
                    end_span(span, exc.detail)
            raise
        observe(time.perf_counter() - start)
        status = response.status
        count(status, "http_error" if status >= 500 else "ok")
        if scope is not None:
            if scope.upstreams is not None:
                scope.upstreams.ended(status)
            if span is not None:
                span.attributes["http.response.status_code"] = status
                end_span(span, f"answered {status}" if status >= 500 else None)
        return response

    return measure


def _propagate(scope: RequestScope, request: UpstreamRequest) -> Span | None:
    """Put this attempt's trace context on the request; its client span when recording."""
    if scope.upstreams is not None:
        scope.upstreams.started(request.upstream)
    headers = request.headers
    if scope.spans is None:
        headers["traceparent"] = scope.header_for(new_span_id())
        span = None
    else:
        span = scope.start_span(f"{request.method} {request.upstream}", CLIENT, {
            "http.request.method": request.method,
            "server.address": request.target,
            "url.full": request.target + request.path_qs.partition("?")[0],
            "gateway.upstream": request.upstream,
            "gateway.attempt": request.attempt,
            "http.request.resend_count": request.attempt - 1,
        })
        headers["traceparent"] = scope.header_for(span.span_id if span is not None else new_span_id())
    if scope.tracestate:
        headers["tracestate"] = scope.tracestate
    elif "tracestate" in headers:
        del headers["tracestate"]
    return span
