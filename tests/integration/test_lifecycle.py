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

from tests.conftest import GatewaySubprocess, StartGateway, StartUpstream, metric, scrape, url

Spawn = Callable[..., Awaitable[GatewaySubprocess]]


def _config(upstream_url: str, *, drain: str = "5s", extra: str = "") -> str:
    return f"""
        [gateway]
        drain_timeout = "{drain}"
        {extra}
        [upstreams.svc]
        targets = ["{upstream_url}"]
        [[routes]]
        name = "svc"
        path = "/{{tail:.*}}"
        upstream = "svc"
    """


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
    children = Path(f"/proc/{gw.proc.pid}/task/{gw.proc.pid}/children").read_text().split()
    assert len(children) == 2
    os.kill(int(children[0]), signal.SIGKILL)
    deadline = time.monotonic() + 10
    while True:
        now = Path(f"/proc/{gw.proc.pid}/task/{gw.proc.pid}/children").read_text().split()
        if len(now) == 2 and children[0] not in now:
            break
        assert time.monotonic() < deadline, "the dead worker was not replaced"
        await asyncio.sleep(0.1)
    async with aiohttp.ClientSession() as session, session.get(gw.url("/a")) as response:
        assert response.status == 200
    gw.signal(signal.SIGTERM)
    assert await _wait_exit(gw, 10) == 0


async def test_reload_swaps_routes_and_a_bad_file_keeps_the_old_config(
    upstream: StartUpstream, spawn_gateway: Spawn
) -> None:
    up = await upstream()
    gw = await spawn_gateway(_config(up.url))
    config = Path(str(gw.proc.args[4]))  # type: ignore[index]
    config.write_text(config.read_text().replace('path = "/{tail:.*}"', 'path = "/v2/{tail:.*}"'))
    gw.signal(signal.SIGHUP)
    async with aiohttp.ClientSession() as session:
        deadline = time.monotonic() + 5
        while True:
            async with session.get(gw.url("/a")) as response:
                if response.status == 404:
                    break
            assert time.monotonic() < deadline, "reload did not take effect"
            await asyncio.sleep(0.05)
        async with session.get(gw.url("/v2/a")) as response:
            assert response.status == 200
        config.write_text("this is = = not toml")
        async with session.post(gw.admin("/reload")) as response:
            assert response.status == 422
            assert (await response.json())["result"] == "failure"
        async with session.get(gw.url("/v2/a")) as response:
            assert response.status == 200
        async with session.get(gw.admin("/metrics")) as response:
            text = await response.text()
    assert metric(text, "gateway_config_reloads_total", result="success") == 1
    assert metric(text, "gateway_config_reloads_total", result="failure") == 1


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
    admin = f"http://127.0.0.1:{gw.admin_port}"
    async with http.get(admin + "/readyz") as response:
        assert response.status == 200
    gw.draining = True
    async with http.get(admin + "/readyz") as response:
        assert response.status == 503
    gw.draining = False


async def test_watch_reloads_when_the_file_changes(upstream: StartUpstream, spawn_gateway: Spawn) -> None:
    up = await upstream()
    gw = await spawn_gateway(_config(up.url), "--watch")
    config = Path(str(gw.proc.args[4]))  # type: ignore[index]
    config.write_text(config.read_text().replace('path = "/{tail:.*}"', 'path = "/watched/{tail:.*}"'))
    async with aiohttp.ClientSession() as session:
        deadline = time.monotonic() + 5
        while True:  # the old catch-all route is gone once the new file is in
            async with session.get(gw.url("/a")) as response:
                if response.status == 404:
                    break
            assert time.monotonic() < deadline, "the change was not picked up"
            await asyncio.sleep(0.1)
        async with session.get(gw.url("/watched/a")) as response:
            assert response.status == 200
        config.write_text("broken = = toml")  # refused: the running config stays
        await asyncio.sleep(1.2)
        async with session.get(gw.url("/watched/a")) as response:
            assert response.status == 200
        async with session.get(gw.admin("/metrics")) as response:
            text = await response.text()
    assert metric(text, "gateway_config_reloads_total", result="success") == 1
    assert metric(text, "gateway_config_reloads_total", result="failure") == 1


async def test_workers_exit_when_the_supervisor_is_killed(
    upstream: StartUpstream, spawn_gateway: Spawn, tmp_path: Path
) -> None:
    up = await upstream()
    gw = await spawn_gateway(_config(up.url), "--workers", "2", env={"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "m")})
    children = [int(pid) for pid in Path(f"/proc/{gw.proc.pid}/task/{gw.proc.pid}/children").read_text().split()]
    assert len(children) == 2
    gw.signal(signal.SIGKILL)
    gw.proc.wait(5)
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text()
              for pid in children):
        assert time.monotonic() < deadline, "orphaned workers kept running"
        await asyncio.sleep(0.1)
