"""Upstreams that fail or hold their answers, a rate-limited route, and readers for what the
gateway made of them: what the error, metric, resilience, lifecycle and rate-limit tests share."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from gateway import Handler, Plugin, PluginConfig, Request, Response
from gateway.process import GatewayProcess
from tests.support.config import plugin_table, proxy_config
from tests.support.scraping import metric

if TYPE_CHECKING:
    from tests.conftest import Upstream

UpstreamHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]

FROM_UPSTREAM = {"from": "upstream"}  # the body of every ``answering`` upstream's answer


def answering(status: int) -> UpstreamHandler:
    """An upstream handler that answers every request with ``status`` and ``FROM_UPSTREAM``."""

    async def handler(_: web.Request) -> web.StreamResponse:
        return web.json_response(FROM_UPSTREAM, status=status)

    return handler


async def failing_and_healthy(
    upstream: Callable[..., Awaitable[Upstream]], status: int
) -> tuple[Upstream, Upstream]:
    """Two targets for one upstream: the first ``answering(status)``, the second a healthy one."""
    return await upstream(answering(status)), await upstream()


class Held:
    """An upstream whose ``handle`` holds every request until ``release`` is set (5 s at most),
    then answers 200 with ``text``; ``arrived`` is set once the first request is held."""

    def __init__(self, text: str = "late") -> None:
        self.text = text
        self.arrived = asyncio.Event()
        self.release = asyncio.Event()

    async def handle(self, _: web.Request) -> web.StreamResponse:
        self.arrived.set()
        async with asyncio.timeout(5):
            await self.release.wait()
        return web.Response(text=self.text)


async def held_upstream(upstream: Callable[..., Awaitable[Upstream]], text: str = "late") -> tuple[Held, Upstream]:
    """Start an upstream (with the ``upstream`` fixture) that holds its requests; see ``Held``."""
    held = Held(text)
    return held, await upstream(held.handle)


async def upstream_answer(http: aiohttp.ClientSession, target: str, status: int) -> None:
    """One GET that an ``answering(status)`` upstream answered itself (not the gateway)."""
    async with http.get(target) as response:
        assert response.status == status
        assert await response.json() == FROM_UPSTREAM


def reload_counts(metrics: str) -> tuple[float, float]:
    """How many config reloads succeeded and how many failed, by a gateway's metrics text."""
    return (metric(metrics, "gateway_config_reloads_total", result="success"),
            metric(metrics, "gateway_config_reloads_total", result="failure"))


# --- rate limiting ------------------------------------------------------------------------


class ConsumerFromHeader(Plugin[PluginConfig]):
    """Test stand-in for an auth plugin: ``X-Test-User`` names the consumer."""

    name = "consumer_from_header"

    async def handle(self, request: Request, call_next: Handler) -> Response:
        request.consumer = request.headers.get("X-Test-User") or None
        return await call_next(request)


SET_CONSUMER = f"{__name__}:ConsumerFromHeader"


def limited_route(upstream_url: str, plugin: str, *, gateway: str = "", name: str = "limited") -> str:
    """routes.toml text: one route ``name`` at /NAME/... with a consumer stand-in and ``plugin``
    (the rate_limit options, one per line)."""
    plugins = "\n".join([plugin_table(SET_CONSUMER), plugin_table("rate_limit"), plugin])
    return proxy_config(upstream_url, name=name, path=f"/{name}/{{rest:.*}}", gateway=gateway, upstream="",
                        after=plugins)


@dataclass
class Limited:
    """An upstream behind a rate-limited route, the gateway in front, and a URL on the route."""

    up: Upstream
    gw: GatewayProcess
    target: str


StartLimited = Callable[..., Awaitable[Limited]]
