"""Process lifecycle: graceful drain on SIGTERM, workers sharing a port, reloads."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import GatewaySubprocess, StartGateway, StartUpstream
from tests.support import metric, proxy_config, scrape, url, wait_for
from tests.support.resilience import reload_counts
from tests.support.scraping import status_of

Spawn = Callable[..., Awaitable[GatewaySubprocess]]


def _config(upstream_url: str, *, drain: str = "5s") -> str:
    """One catch-all route svc; a drain on SIGTERM of at most ``drain``."""
    return proxy_config(upstream_url, path="/{tail:.*}", gateway=f'drain_timeout = "{drain}"', upstream="")


async def _slow(request: web.Request) -> web.Response:
    await asyncio.sleep(float(request.query.get("sleep", "0")))
    return web.Response(text="done")


async def _wait_exit(gateway: GatewaySubprocess, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while gateway.proc.poll() is None:
        if time.monotonic() > deadline:
            raise AssertionError(f"gateway still running after {timeout}s")
        await asyncio.sleep(0.05)
    return gateway.proc.returncode


def _children(gateway: GatewaySubprocess) -> list[int]:
    """The process ids of the supervisor's workers."""
    pid = gateway.proc.pid
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _move_route(gateway: GatewaySubprocess, prefix: str) -> Path:
    """Rewrite the routes.toml a gateway runs from so that its one route answers under ``prefix``."""
    config = Path(str(gateway.proc.args[4]))  # type: ignore[index]
    config.write_text(config.read_text().replace('path = "/{tail:.*}"', f'path = "{prefix}/{{tail:.*}}"'))
    return config


async def _until_moved(session: aiohttp.ClientSession, gateway: GatewaySubprocess, prefix: str) -> None:
    """Wait until the old catch-all route is gone (the new file is in); then the moved one answers."""

    async def old_route_gone() -> bool:
        return await status_of(session, gateway.url("/a")) == 404

    await wait_for(old_route_gone, 5.0, "the new routes were not picked up")
    assert await status_of(session, gateway.url(f"{prefix}/a")) == 200


async def _reloads(session: aiohttp.ClientSession, gateway: GatewaySubprocess) -> tuple[float, float]:
    async with session.get(gateway.admin("/metrics")) as response:
        return reload_counts(await response.text())


async def test_sigterm_finishes_requests_in_flight_then_exits_zero(
    upstream: StartUpstream, spawn_gateway: Spawn
) -> None:
    up = await upstream(_slow)
    gw = await spawn_gateway(_config(up.url))
    async with aiohttp.ClientSession() as session:
        pending = asyncio.ensure_future(session.get(gw.url("/x?sleep=1")))
        await asyncio.sleep(0.3)
        gw.signal(signal.SIGTERM)
        await asyncio.sleep(0.2)
        # Draining: the listener is closed, so a new connection is refused.
        with pytest.raises(aiohttp.ClientConnectionError):
            async with aiohttp.ClientSession() as fresh, fresh.get(gw.url("/x")):
                pass
        response = await pending
        assert response.status == 200
        assert await response.text() == "done"
        response.release()
    assert await _wait_exit(gw, 5) == 0


async def test_drain_gives_up_after_drain_timeout(upstream: StartUpstream, spawn_gateway: Spawn) -> None:
    up = await upstream(_slow)
    gw = await spawn_gateway(_config(up.url, drain="500ms"))
    async with aiohttp.ClientSession() as session:
        pending = asyncio.ensure_future(session.get(gw.url("/x?sleep=10")))
        await asyncio.sleep(0.3)
        started = time.monotonic()
        gw.signal(signal.SIGTERM)
        assert await _wait_exit(gw, 5) == 0
        assert time.monotonic() - started < 3
        with pytest.raises(aiohttp.ClientError):
            await pending


async def test_two_workers_share_the_port_and_metrics_are_summed(
    upstream: StartUpstream, spawn_gateway: Spawn, tmp_path: Path
) -> None:
    up = await upstream()
    metrics_dir = tmp_path / "metrics"
    gw = await spawn_gateway(_config(up.url), "--workers", "2", env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)})
    total = 40
    for _ in range(total):  # a new connection each time, so SO_REUSEPORT spreads them
        async with aiohttp.ClientSession() as session, session.get(gw.url("/a")) as response:
            assert response.status == 200
    async with aiohttp.ClientSession() as session, session.get(gw.admin("/metrics")) as response:
        text = await response.text()
    assert metric(text, "gateway_requests_total", route="svc", code="200", source="upstream") == total
    assert metric(text, "gateway_build_info", version=__import__("gateway").__version__) == 1
    pids = {f.stem.split("_")[-1] for f in metrics_dir.glob("counter_*.db")} - {str(gw.proc.pid)}
    workers = {pid for pid in pids if metric_file_has_requests(metrics_dir / f"counter_{pid}.db")}
    assert len(workers) == 2, f"expected both workers to serve, saw counter files {sorted(workers)}"
    gw.signal(signal.SIGTERM)
    assert await _wait_exit(gw, 10) == 0


def metric_file_has_requests(path: Path) -> bool:
    from prometheus_client.mmap_dict import MmapedDict

    values = MmapedDict(str(path), read_mode=True)  # type: ignore[no-untyped-call]
    try:
        entries = values.read_all_values()  # type: ignore[no-untyped-call]
        return any('"gateway_requests_total"' in key and value > 0 for key, value, _ in entries)
    finally:
        values.close()  # type: ignore[no-untyped-call]


async def test_supervisor_restarts_a_worker_that_dies(
    upstream: StartUpstream, spawn_gateway: Spawn, tmp_path: Path
) -> None:
    up = await upstream()
    gw = await spawn_gateway(_config(up.url), "--workers", "2",
                             env={"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "m")})
    children = _children(gw)
    assert len(children) == 2
    os.kill(children[0], signal.SIGKILL)

    async def replaced() -> bool:
        now = _children(gw)
        return len(now) == 2 and children[0] not in now

    await wait_for(replaced, 10.0, "the dead worker was not replaced")
    async with aiohttp.ClientSession() as session:
        assert await status_of(session, gw.url("/a")) == 200
    gw.signal(signal.SIGTERM)
    assert await _wait_exit(gw, 10) == 0


async def test_reload_swaps_routes_and_a_bad_file_keeps_the_old_config(
    upstream: StartUpstream, spawn_gateway: Spawn
) -> None:
    up = await upstream()
    gw = await spawn_gateway(_config(up.url))
    config = _move_route(gw, "/v2")
    gw.signal(signal.SIGHUP)
    async with aiohttp.ClientSession() as session:
        await _until_moved(session, gw, "/v2")
        config.write_text("this is = = not toml")
        async with session.post(gw.admin("/reload")) as response:
            assert response.status == 422
            assert (await response.json())["result"] == "failure"
        assert await status_of(session, gw.url("/v2/a")) == 200
        assert await _reloads(session, gw) == (1, 1)


async def test_requests_in_flight_finish_on_the_old_config_during_reload(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    up = await upstream(_slow)
    gw = await gateway(_config(up.url))
    path = tmp_path / "routes.toml"
    path.write_text(_config(up.url).replace("/{tail:.*}", "/new/{tail:.*}"))
    object.__setattr__(gw.loaded, "source", str(path))
    pending = asyncio.ensure_future(http.get(url(gw, "/x?sleep=0.5")))
    await asyncio.sleep(0.2)
    ok, _ = await gw.reload()
    assert ok
    response = await pending
    assert response.status == 200
    response.release()
    async with http.get(url(gw, "/new/x")) as response:
        assert response.status == 200
    text = await scrape(gw)
    assert metric(text, "gateway_requests_total", route="svc", code="200") == 2


async def test_readyz_reports_draining(upstream: StartUpstream, gateway: StartGateway,
                                       http: aiohttp.ClientSession) -> None:
    up = await upstream()
    gw = await gateway(_config(up.url))
    readyz = f"http://127.0.0.1:{gw.admin_port}/readyz"
    assert await status_of(http, readyz) == 200
    gw.draining = True
    assert await status_of(http, readyz) == 503
    gw.draining = False


async def test_watch_reloads_when_the_file_changes(upstream: StartUpstream, spawn_gateway: Spawn) -> None:
    up = await upstream()
    gw = await spawn_gateway(_config(up.url), "--watch")
    config = _move_route(gw, "/watched")
    async with aiohttp.ClientSession() as session:
        await _until_moved(session, gw, "/watched")
        config.write_text("broken = = toml")  # refused: the running config stays
        await asyncio.sleep(1.2)
        assert await status_of(session, gw.url("/watched/a")) == 200
        assert await _reloads(session, gw) == (1, 1)


async def test_workers_exit_when_the_supervisor_is_killed(
    upstream: StartUpstream, spawn_gateway: Spawn, tmp_path: Path
) -> None:
    up = await upstream()
    gw = await spawn_gateway(_config(up.url), "--workers", "2", env={"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "m")})
    children = _children(gw)
    assert len(children) == 2
    gw.signal(signal.SIGKILL)
    gw.proc.wait(5)

    async def workers_gone() -> bool:
        return not any(Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text()
                       for pid in children)

    await wait_for(workers_gone, 10.0, "orphaned workers kept running")
