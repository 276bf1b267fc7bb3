"""An upstream and the stack every call to it goes through (SPEC §2, §5):

    [retry ─▶ breaker ─▶] balancer ─▶ measure ─▶ sender (pooled client)

Built once per config; proxy routes and orchestration steps call the same stack.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp

from gateway.balancer import Balancer
from gateway.client import Sender, UpstreamRequest, outcome_of
from gateway.compose import Layer, compose
from gateway.config_model import UpstreamConfig
from gateway.errors import GatewayError
from gateway.http import BodyStream, Response
from gateway.metrics import Metrics, UpstreamMetrics
from gateway.plugin import ClientHolder

UpstreamHandler = Callable[[UpstreamRequest], Awaitable[Response]]
UpstreamLayer = Layer[UpstreamRequest, Response]


class Upstream:
    """One ``[upstreams.NAME]``: its targets, balancer and client settings."""

    def __init__(self, name: str, config: UpstreamConfig, client: ClientHolder, max_msg_size: int) -> None:
        self.name = name
        self.config = config
        self.balancer = Balancer(config.balance, config.targets, config.weights)
        timeouts = aiohttp.ClientTimeout(
            total=None, sock_connect=config.timeout.connect, sock_read=config.timeout.idle
        )
        self.sender = Sender(client, timeouts, config.timeout.response, max_msg_size)

    def stack(self, route: str, metrics: Metrics) -> UpstreamHandler:
        """The composed call path to this upstream for one route."""
        measured = UpstreamMetrics(metrics, route, self.name)
        layers: list[UpstreamLayer] = [self._balance, _measure(measured)]
        return compose(self.sender, layers)

    async def _balance(self, request: UpstreamRequest, call_next: UpstreamHandler) -> Response:
        balancer = self.balancer
        target = balancer.pick()
        request.target = target
        balancer.acquire(target)
        try:
            response = await call_next(request)
        except BaseException:
            balancer.release(target)
            raise
        if response.upgrade is not None:
            balancer.release(target)  # a long-lived tunnel is not a request in flight
        elif response.stream is None:
            balancer.release(target)
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
    """Time each attempt to its response headers and count it by outcome."""
    observe = metrics.duration.observe
    count = metrics.count

    async def measure(request: UpstreamRequest, call_next: UpstreamHandler) -> Response:
        start = time.perf_counter()
        try:
            response = await call_next(request)
        except GatewayError as exc:
            observe(time.perf_counter() - start)
            count(0, outcome_of(exc))
            raise
        observe(time.perf_counter() - start)
        status = response.status
        count(status, "http_error" if status >= 500 else "ok")
        return response

    return measure
