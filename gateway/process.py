"""One gateway process: the public listener (Edge), the admin listener, the HTTP client,
the current Runtime, reloads and the graceful drain."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric

from gateway.admin import AdminSource, admin_app
from gateway.clients import Clients
from gateway.config_load import ConfigError, LoadedConfig, load_config
from gateway.connections import BoundedServer, ConnectionLimits
from gateway.edge import Edge
from gateway.metrics import MALFORMED, Metrics, RequestMetrics, render
from gateway.runtime import Runtime
from gateway.status import TrafficWindow, UpstreamView, upstreams_from_states

log = logging.getLogger("gateway")


def split_listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


class GatewayProcess(AdminSource):
    """Serve one config; reload it; drain on request."""

    def __init__(
        self,
        loaded: LoadedConfig,
        *,
        listen: str | None = None,
        admin_listen: str | None = None,
        reuse_port: bool = False,
        metrics: Metrics | None = None,
        count_reloads: bool = True,
        traffic: TrafficWindow | None = None,
    ) -> None:
        super().__init__(traffic)
        settings = loaded.config.gateway
        self.loaded = loaded
        self.listen = listen if listen is not None else settings.listen
        self.admin_listen = admin_listen if admin_listen is not None else settings.admin_listen
        self.reuse_port = reuse_port
        self.count_reloads = count_reloads  # a supervisor counts reloads for its workers
        self.metrics = metrics if metrics is not None else Metrics()
        self.clients = Clients()
        self.runtime = Runtime(loaded, self.metrics, self.clients)
        self.edge = Edge(self.runtime)
        self.limits = ConnectionLimits(
            loaded.config.gateway, self.metrics.client_connections, RequestMetrics(self.metrics, MALFORMED),
            lambda: self.edge.runtime.access_log)
        self.draining = False
        self.started = False
        self.last_reload: tuple[float, str] | None = None
        self._runner: web.ServerRunner | None = None
        self._admin_runner: web.AppRunner | None = None
        self._reload_lock = asyncio.Lock()

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        await self.clients.start()
        await self.runtime.start()
        settings = self.loaded.config.gateway
        server = BoundedServer(
            self.edge, self.limits, handler_cancellation=True, auto_decompress=False, access_log=None,
        )
        self._runner = web.ServerRunner(server, shutdown_timeout=settings.drain_timeout, handle_signals=False)
        await self._runner.setup()
        host, port = split_listen(self.listen)
        site = web.TCPSite(self._runner, host, port, reuse_port=self.reuse_port or None, backlog=1024)
        await site.start()
        if self.admin_listen:
            self._admin_runner = web.AppRunner(admin_app(self), handle_signals=False, access_log=None)
            await self._admin_runner.setup()
            admin_host, admin_port = split_listen(self.admin_listen)
            await web.TCPSite(self._admin_runner, admin_host, admin_port).start()
        self.started = True
        log.info("gateway listening on %s (admin %s), %d routes", self.addresses(), self.admin_addresses(),
                 len(self.runtime.routes))

    async def drain(self) -> None:
        """Stop accepting, let requests in flight finish (up to drain_timeout), clean up."""
        self.draining = True
        if self._runner is not None:
            await self._runner.cleanup()  # closes listeners, then waits for handlers to finish
        await self.runtime.stop()
        await self.clients.close()
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()

    # -- reload ------------------------------------------------------------------------

    async def reload(self) -> tuple[bool, str]:
        """Load the config file again; swap it in whole if valid, else keep the old one."""
        async with self._reload_lock:
            try:
                loaded = load_config(self.loaded.source)
                runtime = Runtime(loaded, self.metrics, self.clients)
                await runtime.start()
            except ConfigError as exc:
                return self._reload_failed("\n".join(exc.lines()))
            except Exception as exc:  # a plugin's startup hook failed
                return self._reload_failed(f"{self.loaded.source}: startup failed: {exc}")
            old, self.runtime, self.loaded = self.runtime, runtime, loaded
            self.edge.runtime = runtime
            self.limits.settings = loaded.config.gateway
            if self.count_reloads:
                self.metrics.config_reloads.labels("success").inc()
            self.last_reload = (time.time(), "success")
            log.info("config reloaded: %s", loaded.summary())
            asyncio.get_running_loop().create_task(self._retire(old))
            return True, loaded.summary()

    def _reload_failed(self, message: str) -> tuple[bool, str]:
        if self.count_reloads:
            self.metrics.config_reloads.labels("failure").inc()
        self.last_reload = (time.time(), "failure")
        log.error("config reload failed, keeping the running config:\n%s", message)
        return False, message

    async def _retire(self, old: Runtime) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.loaded.config.gateway.drain_timeout):
                await old.idle()
        await old.stop()

    # -- what the admin listener shows -----------------------------------------------

    def is_ready(self) -> bool:
        return self.started and not self.draining

    def metrics_text(self) -> tuple[bytes, str]:
        return render(self.metrics.registry), CONTENT_TYPE_LATEST

    def current_config(self) -> LoadedConfig:
        return self.loaded

    def read_metrics(self) -> list[Metric]:
        return [*self.metrics.requests.collect(), *self.metrics.request_duration.collect()]

    def upstream_views(self, families: list[Metric]) -> list[UpstreamView]:
        states = {name: upstream.state for name, upstream in self.runtime.upstreams.items()}
        return upstreams_from_states(self.loaded.config, states)

    # -- addresses (tests listen on port 0) --------------------------------------------

    def addresses(self) -> list[tuple[str, int]]:
        return _bound(self._runner)

    def admin_addresses(self) -> list[tuple[str, int]]:
        return _bound(self._admin_runner)

    @property
    def port(self) -> int:
        return self.addresses()[0][1]

    @property
    def admin_port(self) -> int:
        return self.admin_addresses()[0][1]


def _bound(runner: web.BaseRunner | None) -> list[tuple[str, int]]:
    if runner is None:
        return []
    out = []
    for address in runner.addresses:
        if isinstance(address, tuple):
            out.append((str(address[0]), int(address[1])))
    return out
