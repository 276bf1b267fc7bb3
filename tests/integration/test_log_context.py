"""Every log line written while a request is handled names the request (id and route), in JSON
and in text; every event is one line, a traceback or a failed reload included."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from gateway import Handler, Plugin, PluginConfig, Request, Response
from tests.conftest import GatewaySubprocess, StartUpstream
from tests.support import proxy_config, wait_for

log = logging.getLogger("tests.noisy")
Spawn = Callable[..., Awaitable[GatewaySubprocess]]


class Noisy(Plugin[PluginConfig]):
    """Logs on its way in (a message over two lines), then fails on ``/svc/boom``."""

    name = "noisy"

    async def handle(self, request: Request, call_next: Handler) -> Response:
        log.warning("looking at %s\nsecond line of the same event", request.path)
        if request.path.endswith("/boom"):
            raise RuntimeError("kaboom")
        return await call_next(request)


ROUTE = proxy_config("{target}", after='[[routes.plugins]]\nuse = "tests.integration.test_log_context:Noisy"')


async def failing_request(spawn_gateway: Spawn, upstream: StartUpstream, fmt: str) -> tuple[str, list[str]]:
    """Start a gateway logging in ``fmt``, make one request whose plugin fails; return its
    request id and the log's lines."""
    up = await upstream()
    gw = await spawn_gateway(ROUTE.replace("{target}", up.url), "--log-format", fmt)
    async with aiohttp.ClientSession() as http, http.get(gw.url("/svc/boom")) as response:
        assert response.status == 500
        request_id = response.headers["X-Request-ID"]
        assert (await response.json())["request_id"] == request_id

    async def logged() -> bool:
        return "kaboom" in gw.log.read_text()

    await wait_for(logged, timeout=5.0)
    return request_id, gw.log.read_text().splitlines()


async def test_json_lines_of_a_failing_request_carry_its_id_and_route(
    spawn_gateway: Spawn, upstream: StartUpstream
) -> None:
    request_id, lines = await failing_request(spawn_gateway, upstream, "json")
    entries = [json.loads(line) for line in lines]  # every line is one JSON event
    mine = [e for e in entries if e.get("request_id") == request_id]
    assert [e["logger"] for e in mine] == ["tests.noisy", "gateway.chain"]
    assert all(e["route"] == "svc" for e in mine)
    assert mine[0]["msg"] == "looking at /svc/boom\nsecond line of the same event"
    assert "RuntimeError: kaboom" in mine[1]["exc"]
    others = [e for e in entries if e not in mine]
    assert all("request_id" not in e for e in others)  # start-up lines belong to no request
    assert not any("boom" in json.dumps(e) for e in others)


async def test_text_lines_of_a_failing_request_carry_its_id_and_route_on_one_line_each(
    spawn_gateway: Spawn, upstream: StartUpstream
) -> None:
    request_id, lines = await failing_request(spawn_gateway, upstream, "text")
    about = [line for line in lines if "boom" in line]
    assert len(about) == 2
    assert all(line.endswith(f"request_id={request_id} route=svc") or f"request_id={request_id} route=svc exc="
               in line for line in about)
    assert "looking at /svc/boom\\nsecond line of the same event" in about[0]
    assert "exc=Traceback" in about[1] and "RuntimeError: kaboom" in about[1]
    assert all(line[:4].isdigit() for line in lines)  # no continuation lines


@pytest.mark.parametrize("fmt", ["text", "json"])
async def test_a_failed_reload_is_one_line(spawn_gateway: Spawn, upstream: StartUpstream, fmt: str,
                                           tmp_path: Path) -> None:
    up = await upstream()
    gw = await spawn_gateway(proxy_config(up.url), "--log-format", fmt)
    config = next(tmp_path.glob("routes-*.toml"))
    config.write_text('[[routes]]\nname = "a"\npath = "/a"\nupstream = "x"\nbogus = 1\ntimeout = "soon"\n')
    gw.signal(signal.SIGHUP)

    async def failed() -> bool:
        return "reload failed" in gw.log.read_text()

    await wait_for(failed, timeout=5.0)
    await asyncio.sleep(0.2)
    [line] = [line for line in gw.log.read_text().splitlines() if "bogus" in line or "soon" in line]
    if fmt == "json":
        message = json.loads(line)["msg"]
        assert "bogus" in message and "soon" in message  # both problems, in one event
    else:
        assert "bogus" in line and "soon" in line and "\\n" in line
