"""A loaded config made runnable: upstreams, plugin instances and the route table.

Built without I/O (so ``gateway check`` builds it too); ``start``/``stop`` run the plugins'
hooks. A reload builds a new Runtime and swaps it in; requests in flight keep the old one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.web_urldispatcher import AbstractRoute

from gateway.access_log import AccessLog
from gateway.chain import build_chain
from gateway.clients import Clients
from gateway.compose import Handler
from gateway.config_load import ConfigError, LoadedConfig, PluginUse, Problem
from gateway.config_model import RouteConfig
from gateway.errors import MethodNotAllowed, NotFound
from gateway.forwarding import TrustedProxies
from gateway.hygiene import EXPLICIT_ONLY
from gateway.metrics import UNMATCHED, Metrics, RequestMetrics
from gateway.orchestration.callers import UpstreamCaller
from gateway.orchestration.plan import Plan
from gateway.orchestration.terminal import OrchestrationTerminal
from gateway.plugin import Plugin, PluginContext
from gateway.proxy import ProxyTerminal
from gateway.tracing import Exporter
from gateway.upstream.stack import Upstream


@dataclass(frozen=True)
class CompiledRoute:
    """Everything the edge needs for one route, resolved once."""

    name: str
    config: RouteConfig
    handler: Any  # gateway.compose.Handler
    metrics: RequestMetrics
    max_body_bytes: int
    plugins: tuple[Plugin[Any], ...]


async def _route_marker(request: web.Request) -> web.StreamResponse:  # pragma: no cover
    """aiohttp's router needs a handler per route; the Runtime maps routes to chains instead."""
    raise RuntimeError("routes are dispatched by gateway.edge, not by aiohttp")


# What a route without `methods` answers (TRACE and CONNECT only when a route names them).
WILDCARD_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


class _Lookup:
    """What aiohttp's route table reads of a request: its method and its path (the
    normalized one, in routing form), never the raw request-target."""

    __slots__ = ("method", "path_safe", "rel_url")

    def __init__(self, method: str, path: str) -> None:
        self.method = method
        self.path_safe = path
        self.rel_url = self


class Runtime:
    """Routes, plugins and upstreams of one config version."""

    def __init__(self, loaded: LoadedConfig, metrics: Metrics, clients: Clients) -> None:
        config = loaded.config
        settings = config.gateway
        self.loaded = loaded
        self.metrics = metrics
        self.settings = settings
        self.trusted = TrustedProxies(settings.trusted_proxies)
        self.upstreams = {
            name: Upstream(name, up, clients, settings.max_body_bytes) for name, up in config.upstreams.items()
        }
        problems: list[Problem] = []

        def session() -> aiohttp.ClientSession:
            return clients.session

        def instantiate(uses: Sequence[PluginUse], route: str | None) -> list[Plugin[Any]]:
            context = PluginContext(route, settings, config.consumers, metrics, clients.redis, session)
            out = []
            for use in uses:
                try:
                    out.append(use.cls(use.config, context))
                except (ValueError, TypeError) as exc:
                    problems.append((use.location, str(exc)))
            return out

        self.global_plugins = tuple(instantiate(loaded.global_plugins, None))
        self.router = web.UrlDispatcher()
        self._by_route: dict[AbstractRoute, CompiledRoute] = {}
        self.routes: list[CompiledRoute] = []
        for route, uses, plan in zip(config.routes, loaded.route_plugins, loaded.plans, strict=True):
            plugins = (*self.global_plugins, *instantiate(uses, route.name))
            terminal = self._terminal(route, plan)
            handler = build_chain(route.name, plugins, terminal, metrics.plugin_duration)
            compiled = CompiledRoute(
                route.name, route, handler, RequestMetrics(metrics, route.name),
                route.max_body_bytes if route.max_body_bytes is not None else settings.max_body_bytes,
                plugins,
            )
            self.routes.append(compiled)
            for method in route.method_list():
                self._by_route[self.router.add_route(method, route.path, _route_marker)] = compiled
        if problems:
            raise ConfigError(loaded.source, problems)
        self.router.freeze()
        # TRACE / CONNECT named by some route's `methods`: the others are refused before routing.
        self.explicit_methods = frozenset(
            m for route in config.routes for m in (route.methods or ()) if m in EXPLICIT_ONLY
        )
        self.unmatched = RequestMetrics(metrics, UNMATCHED)
        log_config = settings.access_log
        self.access_log = (AccessLog(log_config, _key_params(self.all_plugins()), metrics.access_log_dropped.inc)
                           if log_config is not None and log_config.enabled else None)
        self.sample_ratio = settings.tracing.sample_ratio if settings.tracing is not None else 0.0
        self.exporter: Exporter | None = None  # made by start(): it runs a worker thread
        self.active = 0  # requests in flight on this version (a retired version waits for 0)
        self._idle: asyncio.Event | None = None

    def _terminal(self, route: RouteConfig, plan: Plan | None) -> Handler:
        budget = route.timeout if route.timeout is not None else self.settings.timeout
        if plan is not None:
            stacks = {name: self.upstreams[name].stack(route.name, self.metrics) for name in plan.upstreams}
            caller = UpstreamCaller(stacks, route.name, self.settings.max_body_bytes)
            return OrchestrationTerminal(route.name, plan, caller, budget, self.metrics,
                                         self.settings.max_json_depth)
        upstream_name = route.upstream or ""
        upstream = self.upstreams[upstream_name]
        return ProxyTerminal(
            route=route.name,
            upstream=upstream_name,
            stack=upstream.stack(route.name, self.metrics),
            trusted=self.trusted,
            timeout=budget,
            rewrite=route.rewrite,
            preserve_host=route.preserve_host,
            upgrade_stack=upstream.stack(route.name, self.metrics, websocket=True) if route.websocket else None,
            route_path=route.path,
            keep_encoded_slashes=self.settings.encoded_slashes == "keep",
        )

    def check_method(self, method: str) -> None:
        """TRACE and CONNECT are answered 405 unless a route names them."""
        if method in EXPLICIT_ONLY and method not in self.explicit_methods:
            raise MethodNotAllowed(method, WILDCARD_METHODS)

    async def match(self, method: str, path: str) -> tuple[CompiledRoute, dict[str, str]]:
        """The route for a normalized path (routing form, gateway.normalize.routing_form)
        and its path parameters; NotFound/MethodNotAllowed otherwise."""
        info = await self.router.resolve(_Lookup(method, path))  # type: ignore[arg-type]
        if info.http_exception is None:
            compiled = self._by_route[info.route]
            if method in EXPLICIT_ONLY and compiled.config.methods is None:
                raise MethodNotAllowed(method, WILDCARD_METHODS)
            return compiled, dict(info)
        if isinstance(info.http_exception, web.HTTPMethodNotAllowed):
            raise MethodNotAllowed(method, info.http_exception.allowed_methods)
        raise NotFound(f"no route matches {method} {path}")

    def enter(self) -> None:
        self.active += 1

    def leave(self) -> None:
        self.active -= 1
        if self.active == 0 and self._idle is not None:
            self._idle.set()

    async def idle(self) -> None:
        """Return once no request is in flight on this version (after it was swapped out)."""
        if self.active:
            self._idle = asyncio.Event()
            await self._idle.wait()

    def all_plugins(self) -> list[Plugin[Any]]:
        """Each plugin instance once (global ones are shared by every route)."""
        seen: dict[int, Plugin[Any]] = {}
        for route in self.routes:
            for plugin in route.plugins:
                seen.setdefault(id(plugin), plugin)
        for plugin in self.global_plugins:
            seen.setdefault(id(plugin), plugin)
        return list(seen.values())

    async def start(self) -> None:
        started: list[Plugin[Any]] = []
        try:
            for plugin in self.all_plugins():
                await plugin.startup()
                started.append(plugin)
        except BaseException:
            for plugin in reversed(started):
                await plugin.shutdown()
            raise
        for upstream in self.upstreams.values():
            await upstream.start(self.settings.redis_url)  # health checks, shared breakers, gauges
        if self.access_log is not None:
            await self.access_log.start()
        if self.settings.tracing is not None:
            self.exporter = Exporter(self.settings.tracing)

    async def stop(self) -> None:
        for upstream in self.upstreams.values():
            await upstream.stop()
        for plugin in reversed(self.all_plugins()):
            await plugin.shutdown()
        if self.access_log is not None:
            await self.access_log.close()
        exporter, self.exporter = self.exporter, None
        if exporter is not None:
            await exporter.close()


def _key_params(plugins: Sequence[Plugin[Any]]) -> list[str]:
    """The query parameters api_key plugins read keys from (never written to the access log)."""
    return [name for plugin in plugins if plugin.name == "api_key"
            and isinstance(name := getattr(plugin.config, "query", None), str)]


