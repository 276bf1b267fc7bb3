"""Helpers to test a plugin without a server.

    plugin = build_plugin(MyPlugin, greeting="hi")
    upstream = FakeUpstream(body=b"ok")
    response = await run_plugin(plugin, make_request("GET", "/x"), upstream)
    assert upstream.requests[0].headers["X-Greeting"] == "hi"

``MockSender`` does for an upstream stack what ``FakeUpstream`` does for a chain: it stands
where the pooled HTTP client would, so retry, breaker and balancer run without sockets.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import aiohttp
from multidict import CIMultiDict
from pydantic import ValidationError

from gateway.compose import Handler
from gateway.config_model import ConsumerConfig, GatewaySettings
from gateway.http import Body, Request, Response
from gateway.ids import new_request_id
from gateway.metrics import Metrics
from gateway.plugin import Plugin, PluginContext
from gateway.upstream.request import UpstreamRequest

P = TypeVar("P", bound=Plugin[Any])


def make_request(
    method: str = "GET",
    path: str = "/",
    *,
    query: str = "",
    headers: Mapping[str, str] | None = None,
    body: bytes = b"",
    params: Mapping[str, str] | None = None,
    client_ip: str = "127.0.0.1",
    route: str = "test",
) -> Request:
    """A request as the chain would see it."""
    return Request(
        method, path, query, CIMultiDict(headers or {}), Body.of(body) if body else Body(None, None, 1),
        params=params, client_ip=client_ip, peer=client_ip, route=route, request_id=new_request_id(),
    )


def build_plugin(
    cls: type[P],
    *,
    route: str | None = "test",
    settings: GatewaySettings | None = None,
    consumers: Mapping[str, ConsumerConfig] | None = None,
    metrics: Metrics | None = None,
    http_session: aiohttp.ClientSession | None = None,
    **options: Any,
) -> P:
    """Validate ``options`` as the plugin's config (raising ValidationError like a bad
    routes.toml would) and construct the plugin; ``http_session`` is what ``context.http`` gives."""
    config = cls.Config.model_validate(options)
    context = PluginContext(route, settings or GatewaySettings(), consumers or {}, metrics or Metrics())
    if http_session is not None:
        session = http_session
        context = dataclasses.replace(context, sessions=lambda: session)
    return cls(config, context)


class FakeUpstream:
    """A terminal that records what reached it and answers with a fixed response."""

    def __init__(self, status: int = 200, body: bytes = b"", headers: Mapping[str, str] | None = None) -> None:
        self.status = status
        self.body = body
        self.headers = dict(headers or {})
        self.requests: list[Request] = []

    async def __call__(self, request: Request) -> Response:
        self.requests.append(request)
        return Response(self.status, CIMultiDict(self.headers), self.body, source="upstream")


Answer = Callable[[UpstreamRequest], "Response | Awaitable[Response]"]


class MockSender:
    """The innermost hop of an upstream stack, answered by ``answer`` instead of a socket (like
    httpx's MockTransport). ``answer`` gets each attempt and returns a Response (or an
    awaitable of one) or raises the error a real call would (``UpstreamConnectError``,
    ``UpstreamTimeout``, ...). Every attempt is recorded as (target, attempt number), with a
    copy of the headers it carried (the stack passes one request object from attempt to attempt)."""

    def __init__(self, answer: Answer | None = None) -> None:
        self.answer = answer
        self.calls: list[tuple[str, int]] = []
        self.headers: list[CIMultiDict[str]] = []

    async def __call__(self, request: UpstreamRequest) -> Response:
        self.calls.append((request.target, request.attempt))
        self.headers.append(CIMultiDict(request.headers))
        if self.answer is None:
            return Response(200, CIMultiDict(), b"", source="upstream")
        result = self.answer(request)
        if isinstance(result, Response):
            return result
        return await result

    @property
    def targets(self) -> list[str]:
        return [target for target, _ in self.calls]


def upstream_request(method: str = "GET", path_qs: str = "/", *, route: str = "test", upstream: str = "svc",
                     timeout: float = 5.0, body: bytes | None = None) -> UpstreamRequest:
    """A call as a terminal hands it to an upstream stack (inside a running event loop)."""
    deadline = asyncio.get_running_loop().time() + timeout
    return UpstreamRequest(method, path_qs, CIMultiDict(), body, route=route, upstream=upstream, deadline=deadline)


async def run_plugin(plugin: Plugin[Any], request: Request, upstream: Handler | None = None) -> Response:
    """Run one plugin with ``upstream`` as the rest of the chain; a raised GatewayError comes
    back as the problem response the client would get."""
    from gateway.errors import GatewayError, error_response

    terminal = upstream if upstream is not None else FakeUpstream()
    try:
        return await plugin.handle(request, terminal)
    except GatewayError as exc:
        return error_response(exc, request.route, request.request_id)


__all__ = [
    "FakeUpstream", "MockSender", "ValidationError", "build_plugin", "make_request", "run_plugin", "upstream_request",
]
