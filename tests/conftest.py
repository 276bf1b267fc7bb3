"""Shared fixtures: real upstream servers on 127.0.0.1, a real gateway in-process or as a
subprocess, and a metrics reader."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, settings

from gateway.config_load import load_config, load_text
from gateway.process import GatewayProcess
from tests.support import RedisServer, free_port
from tests.support.redis_server import running_redis

ROOT = Path(__file__).resolve().parent.parent

# Property tests: a bounded run in `make test`, a long one in `make fuzz`
# (HYPOTHESIS_PROFILE=fuzz). No deadline: the machines are shared and noisy.
settings.register_profile("default", max_examples=300, deadline=None)
settings.register_profile("fuzz", max_examples=20_000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


class Upstream:
    """A real aiohttp server on 127.0.0.1 that records what it received."""

    def __init__(self, server: TestServer, seen: list[web.Request], bodies: list[bytes]) -> None:
        self.server = server
        self.requests = seen
        self.bodies = bodies

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    @property
    def hits(self) -> int:
        return len(self.requests)


StartUpstream = Callable[..., Awaitable[Upstream]]


@pytest.fixture
async def upstream() -> AsyncIterator[StartUpstream]:
    """Start an upstream: ``await upstream(handler)``, or ``await upstream()`` for one that
    answers every request with its method and path as JSON.

    The handler receives every request; the upstream records each request (and its body,
    read by the recorder unless ``record_bodies=False``). ``port`` starts it on a given port
    (a target that was down coming back); by default any free one.
    """
    servers: list[TestServer] = []

    async def start(
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]] | None = None,
        *,
        record_bodies: bool = True,
        port: int | None = None,
    ) -> Upstream:
        seen: list[web.Request] = []
        bodies: list[bytes] = []

        @web.middleware
        async def record(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                         ) -> web.StreamResponse:
            seen.append(request)
            if record_bodies:
                bodies.append(await request.read())
            return await handler(request)

        async def default(request: web.Request) -> web.StreamResponse:
            return web.json_response({"path": request.path_qs, "method": request.method})

        app = web.Application(middlewares=[record], client_max_size=1024**3)
        app.router.add_route("*", "/{tail:.*}", handler or default)
        server = TestServer(app, host="127.0.0.1", port=port)
        await server.start_server(auto_decompress=False)  # TestServer() drops runner options
        servers.append(server)
        return Upstream(server, seen, bodies)

    yield start
    for server in servers:
        await server.close()


StartGateway = Callable[..., Awaitable[GatewayProcess]]


@pytest.fixture
async def gateway() -> AsyncIterator[StartGateway]:
    """Start a gateway in this process from TOML text, on ephemeral ports."""
    started: list[GatewayProcess] = []

    async def start(toml: str, env: dict[str, str] | None = None, *, file: Path | None = None,
                    **options: Any) -> GatewayProcess:
        """``file``: load the config from that path (written first), as `gateway run` does, so
        POST /reload reads it again; ``options`` go to GatewayProcess."""
        if file is None:
            loaded = load_text(textwrap.dedent(toml), "routes.toml", env or {})
        else:
            file.write_text(textwrap.dedent(toml))
            loaded = load_config(file, env)
        process = GatewayProcess(loaded, listen="127.0.0.1:0", admin_listen="127.0.0.1:0", **options)
        await process.start()
        started.append(process)
        return process

    yield start
    for process in started:
        await process.drain()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain client for talking to the gateway like a user would."""
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


# --- the gateway as a real subprocess (signals, workers, memory) --------------------------


class GatewaySubprocess:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, admin_port: int, log: Path) -> None:
        self.proc = proc
        self.port = port
        self.admin_port = admin_port
        self.log = log

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def admin(self, path: str) -> str:
        return f"http://127.0.0.1:{self.admin_port}{path}"

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def peak_rss_kib(self) -> int:
        """VmHWM of the gateway process (and of its children when it supervises workers)."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise AssertionError("no VmHWM in /proc status")


async def wait_ready(admin_url: str, timeout: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(admin_url + "/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if loop.time() > deadline:
                raise TimeoutError(f"gateway not ready at {admin_url}")
            await asyncio.sleep(0.1)


@pytest.fixture
def spawn_gateway(tmp_path: Path) -> Iterator[Callable[..., Awaitable[GatewaySubprocess]]]:
    """Start ``gateway run`` as a subprocess with the given routes.toml text."""
    running: list[GatewaySubprocess] = []

    async def start(toml: str, *extra: str, env: dict[str, str] | None = None) -> GatewaySubprocess:
        config = tmp_path / f"routes-{len(running)}.toml"
        config.write_text(textwrap.dedent(toml))
        port, admin_port = free_port(), free_port()
        log = tmp_path / f"gateway-{len(running)}.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", str(config), "--listen", f"127.0.0.1:{port}",
             "--admin-listen", f"127.0.0.1:{admin_port}", *extra],
            stdout=log.open("wb"), stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
        )
        gateway = GatewaySubprocess(proc, port, admin_port, log)
        running.append(gateway)
        try:
            await wait_ready(gateway.admin(""))
        except TimeoutError:
            raise AssertionError("gateway did not start:\n" + log.read_text()) from None
        return gateway

    yield start
    for gateway in running:
        if gateway.proc.poll() is None:
            gateway.proc.send_signal(signal.SIGKILL)
            gateway.proc.wait(10)


# --- a private redis-server (tests.support.redis_server) -----------------------------------


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """The session's private Redis (started once, stopped at the end)."""
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The shared Redis, emptied for this test."""
    if not redis_server.answers():
        redis_server.start()
    assert redis_server.command("FLUSHALL").startswith(b"+OK")
    return redis_server.url


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own, to kill, freeze, restart or blackhole."""
    with running_redis(tmp_path / "redis") as server:
        yield server
