"""``workers = N``: N gateway processes share the public port (SO_REUSEPORT) under this
supervisor, which serves the admin listener with /metrics summed over the workers
(prometheus-client multiprocess mode), forwards reloads and drains them all on SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from gateway.admin import AdminSource, admin_app
from gateway.clients import Clients
from gateway.config_load import ConfigError, LoadedConfig, load_config
from gateway.launch import StartupError, listen_failure, listen_option, one_line, run_main
from gateway.process import split_listen
from gateway.status import UpstreamView, upstreams_from_gauges

if TYPE_CHECKING:  # prometheus_client is imported once multiprocess mode is set up
    from prometheus_client.metrics_core import Metric

log = logging.getLogger("gateway.supervisor")
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_PREPARED = "GATEWAY_METRICS_DIR_PREPARED"


def prepare_multiprocess_dir() -> str:
    """Point prometheus-client at an empty directory (before it is imported); emptied once
    per supervisor, even when the process starts itself again to get there."""
    path = os.environ.get(MULTIPROC_ENV) or tempfile.mkdtemp(prefix="gateway-metrics-")
    if os.environ.get(_PREPARED) != path:
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path)
    os.environ[MULTIPROC_ENV] = path
    os.environ[_PREPARED] = path
    return path


class Supervisor(AdminSource):
    def __init__(self, loaded: LoadedConfig, args: argparse.Namespace, workers: int) -> None:
        from gateway.metrics import Metrics

        super().__init__()
        self.loaded = loaded
        self.args = args
        self.count = self.workers = workers
        self.listen = args.listen or loaded.config.gateway.listen
        self.admin_listen = args.admin_listen if args.admin_listen is not None else loaded.config.gateway.admin_listen
        self.metrics = Metrics()
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.ready_files: dict[int, Path] = {}
        self.watching = False  # workers started and watched (a worker that dies is restarted)
        self._spawned = 0
        self.draining = False
        self.last_reload: tuple[float, str] | None = None
        if split_listen(self.listen)[1] == 0:
            raise StartupError(f"{workers} workers need a fixed port in --listen / gateway.listen, not 0")

    def probe_listen(self) -> None:
        """Fail now, in one line, when the workers could not open the public port: each would
        fail on its own otherwise, and be restarted over and over."""
        host, port = split_listen(self.listen)
        try:
            for family, kind, proto, _, address in socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            ):
                with socket.socket(family, kind, proto) as sock:  # as the workers bind: SO_REUSEPORT
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                    if family == socket.AF_INET6:
                        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    sock.bind(address)
        except OSError as exc:
            failure = listen_failure(exc, self.listen, listen_option(self.args, admin=False))
            raise failure or StartupError(f"cannot listen on {self.listen}: {one_line(exc)}") from None

    def _worker_argv(self, ready_file: Path, slot: int) -> list[str]:
        a = self.args
        return [sys.executable, "-m", "gateway", "run", self.loaded.source, "--listen", self.listen,
                "--admin-listen", "", "--workers", "1", "--reuse-port", "--supervised",
                "--log-format", a.log_format, "--log-level", a.log_level, "--ready-file", str(ready_file),
                "--worker", str(slot)]

    async def spawn(self, slot: int) -> None:
        self._spawned += 1
        ready_file = Path(os.environ[MULTIPROC_ENV]) / f"ready-{self._spawned}"
        self.ready_files[slot] = ready_file
        proc = await asyncio.create_subprocess_exec(*self._worker_argv(ready_file, slot))
        self.procs[slot] = proc
        log.info("worker %d started (pid %d)", slot, proc.pid)

    async def watch(self, slot: int) -> None:
        """Restart a worker that dies while not draining."""
        from gateway.metrics import mark_process_dead

        while True:
            proc = self.procs[slot]
            code = await proc.wait()
            mark_process_dead(proc.pid)
            if self.draining:
                return
            log.error("worker %d (pid %d) exited with %s; restarting", slot, proc.pid, code)
            await asyncio.sleep(0.5)
            await self.spawn(slot)

    # -- admin -------------------------------------------------------------------------

    def is_ready(self) -> bool:
        return (
            self.watching  # the start-up check is over: from here on a dead worker is restarted
            and not self.draining
            and len(self.procs) == self.count
            and all(p.returncode is None for p in self.procs.values())
            and all(f.exists() for f in self.ready_files.values())
        )

    def metrics_text(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST

        from gateway.metrics import render

        return render(self.metrics.registry), CONTENT_TYPE_LATEST

    def current_config(self) -> LoadedConfig:
        return self.loaded

    def read_metrics(self) -> list[Metric]:
        """Every worker's series, merged as /metrics merges them (dead workers' counts included)."""
        from prometheus_client.multiprocess import MultiProcessCollector

        return list(MultiProcessCollector(None).collect())  # type: ignore[no-untyped-call]

    def upstream_views(self, families: list[Metric]) -> list[UpstreamView]:
        return upstreams_from_gauges(self.loaded.config, families)

    async def reload(self) -> tuple[bool, str]:
        from gateway.runtime import Runtime

        try:
            loaded = load_config(self.loaded.source)
            Runtime(loaded, self.metrics, Clients())  # plugins' own checks, as `gateway check` does
        except ConfigError as exc:
            self.metrics.config_reloads.labels("failure").inc()
            self.last_reload = (time.time(), "failure")
            message = "\n".join(exc.lines())
            log.error("config reload failed, keeping the running config:\n%s", message)
            return False, message
        self.loaded = loaded
        for proc in self.procs.values():
            if proc.returncode is None:
                proc.send_signal(signal.SIGHUP)
        self.metrics.config_reloads.labels("success").inc()
        self.last_reload = (time.time(), "success")
        return True, loaded.summary()

    # -- main ---------------------------------------------------------------------------

    async def start_admin(self) -> web.AppRunner | None:
        if not self.admin_listen:
            return None
        runner = web.AppRunner(admin_app(self), handle_signals=False, access_log=None)
        await runner.setup()
        host, port = split_listen(self.admin_listen)
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            await runner.cleanup()
            failure = listen_failure(exc, self.admin_listen, listen_option(self.args, admin=True))
            raise failure or StartupError(f"cannot listen on {self.admin_listen}: {one_line(exc)}") from None
        return runner

    async def workers_started(self, stop: asyncio.Event) -> bool:
        """Wait until every worker listens (True), or one exits first, or a stop signal."""
        while not stop.is_set():
            if any(p.returncode is not None for p in self.procs.values()):
                return False
            if all(f.exists() for f in self.ready_files.values()):
                return True
            await asyncio.sleep(0.05)
        return True  # stopping anyway: drain what started

    async def stop_workers(self) -> None:
        self.draining = True
        for proc in self.procs.values():
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        grace = self.loaded.config.gateway.drain_timeout + 5
        try:
            async with asyncio.timeout(grace):
                await asyncio.gather(*(p.wait() for p in self.procs.values()))
        except TimeoutError:
            for proc in self.procs.values():
                if proc.returncode is None:
                    proc.kill()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload()))
        from gateway.runtime import Runtime

        Runtime(self.loaded, self.metrics, Clients())  # a plugin that cannot be built: once, not per worker
        self.probe_listen()
        runner = await self.start_admin()
        for slot in range(self.count):
            await self.spawn(slot)
        if not await self.workers_started(stop):
            # A worker could not start and said why on stderr: stop the others, exit 1.
            await self.stop_workers()
            if runner is not None:
                await runner.cleanup()
            return 1
        watchers = [loop.create_task(self.watch(slot)) for slot in range(self.count)]
        self.watching = True
        if self.args.watch:
            from gateway.watch import watch_file

            watchers.append(loop.create_task(watch_file(self.loaded.source, self.reload)))
        await stop.wait()
        log.info("draining %d workers", self.count)
        await self.stop_workers()
        for task in watchers:
            task.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        if runner is not None:
            await runner.cleanup()
        return 0


def run_supervisor(loaded: LoadedConfig, args: argparse.Namespace, workers: int) -> int:
    return run_main(lambda: Supervisor(loaded, args, workers).run())
