"""The access log: one line per request with exact fields, for answers from the upstream, the
gateway's own refusals, unmatched and malformed requests — and never a credential."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from gateway.process import GatewayProcess
from tests.conftest import GatewaySubprocess, StartGateway, StartUpstream
from tests.support import free_port, plugin_table, proxy_config, raw_exchange, url, wait_for

TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
HEX32 = re.compile(r"[0-9a-f]{32}")
KEY = "k-4c1d-very-secret"
FIELDS = ["ts", "request_id", "trace_id", "route", "method", "path", "status", "source", "duration_ms",
          "upstream", "upstream_status", "upstream_ms", "attempts", "bytes_in", "bytes_out", "client_ip",
          "consumer", "user_agent"]


def logged(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def lines(path: Path, count: int) -> list[dict[str, Any]]:
    """The first ``count`` lines of the log, once they were written (flushed twice a second)."""
    async def written() -> bool:
        return len(logged(path)) >= count

    await wait_for(written, timeout=5.0)
    return logged(path)


def settings(log: Path, **options: str) -> str:
    extra = "\n".join(f"{key} = {value}" for key, value in options.items())
    return f'[gateway.access_log]\npath = "{log}"\n{extra}'


def keyed_route(target: str) -> str:
    """A second route, /keyed/..., behind api_key (header or ?apikey=)."""
    return f"""
[consumers.alice]
api_keys = ["{KEY}"]
[upstreams.other]
targets = ["{target}"]
[[routes]]
name = "keyed"
path = "/keyed/{{rest:.*}}"
upstream = "other"
{plugin_table("api_key", query='"apikey"')}
"""


async def started(gateway: StartGateway, up_url: str, log: Path, **options: str) -> GatewayProcess:
    dead = f"http://127.0.0.1:{free_port()}"
    config = proxy_config(up_url, gateway=settings(log, **options), after=keyed_route(up_url)) + f"""
[upstreams.dead]
targets = ["{dead}"]
timeout = {{ connect = "500ms" }}
[[routes]]
name = "dead"
path = "/dead"
upstream = "dead"
"""
    return await gateway(config)


async def test_one_json_line_per_request_with_exact_fields(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    async def answer(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * 123, content_type="text/plain")

    up = await upstream(answer)
    log = tmp_path / "access.log"
    gw = await started(gateway, up.url, log)
    ids = []
    for method, path, data, headers in (
        ("POST", "/svc/items/1?debug=1", b"hello", {"User-Agent": "tester/1.0"}),
        ("GET", "/nowhere", None, {}),
        ("GET", "/keyed/a", None, {}),
        ("GET", "/dead", None, {}),
    ):
        async with http.request(method, url(gw, path), data=data, headers=headers) as response:
            await response.read()
            ids.append(response.headers["X-Request-ID"])
    await raw_exchange(gw.port, b"GET / HTTP/1.1\r\nHost: gw\r\nBad Header Line\r\n\r\n")

    ok, unmatched, refused, dead, malformed = await lines(log, 5)
    for entry in (ok, unmatched, refused, dead):
        assert list(entry) == FIELDS
        assert TS.fullmatch(entry["ts"]) and HEX32.fullmatch(entry["trace_id"])
        assert entry["client_ip"] == "127.0.0.1"
        assert isinstance(entry["duration_ms"], float) and entry["duration_ms"] > 0
    assert [e["request_id"] for e in (ok, unmatched, refused, dead)] == ids
    assert {k: ok[k] for k in FIELDS if k not in ("ts", "request_id", "trace_id", "duration_ms", "upstream_ms")} == {
        "route": "svc", "method": "POST", "path": "/svc/items/1", "status": 200, "source": "upstream",
        "upstream": "svc", "upstream_status": 200, "attempts": 1, "bytes_in": 5, "bytes_out": 123,
        "client_ip": "127.0.0.1", "consumer": None, "user_agent": "tester/1.0"}
    assert 0 < ok["upstream_ms"] <= ok["duration_ms"]
    assert (unmatched["route"], unmatched["path"], unmatched["status"], unmatched["source"]) == (
        "_unmatched", "/nowhere", 404, "gateway")
    assert (unmatched["upstream"], unmatched["attempts"]) == (None, 0)
    assert unmatched["bytes_out"] > 0  # the problem document
    assert (refused["route"], refused["status"], refused["source"], refused["upstream"], refused["attempts"],
            refused["consumer"]) == ("keyed", 401, "gateway", None, 0, None)
    assert (dead["route"], dead["status"], dead["upstream"], dead["upstream_status"], dead["attempts"]) == (
        "dead", 502, "dead", None, 1)
    assert {k: malformed[k] for k in ("route", "status", "source", "method", "path", "client_ip")} == {
        "route": "_malformed", "status": 400, "source": "gateway", "method": None, "path": None,
        "client_ip": "127.0.0.1"}


async def test_no_credential_reaches_the_log_even_with_the_query_on(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    up = await upstream()
    log = tmp_path / "access.log"
    gw = await started(gateway, up.url, log, query="true")
    secrets = ("bearer-abc-123", "cookie-val-456", "tok-789", "pw-000", "sig-111")
    async with http.get(url(gw, f"/keyed/a?apikey={KEY}&page=2&access_token=tok-789&Password=pw-000"
                                f"&X-Amz-Signature=sig-111"),
                        headers={"Authorization": "Bearer bearer-abc-123", "Cookie": "s=cookie-val-456"}) as response:
        assert response.status == 200
    async with http.get(url(gw, "/keyed/b"), headers={"X-API-Key": KEY}) as response:
        assert response.status == 200  # the header works too
    first, _ = await lines(log, 2)
    assert first["consumer"] == "alice"
    assert first["path"] == ("/keyed/a?apikey=<redacted>&page=2&access_token=<redacted>&Password=<redacted>"
                             "&X-Amz-Signature=<redacted>")
    text = log.read_text()
    assert KEY not in text
    for secret in secrets:
        assert secret not in text


async def test_text_format_carries_time_id_method_path_status_and_duration(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    up = await upstream()
    log = tmp_path / "access.log"
    gw = await gateway(proxy_config(up.url, gateway=settings(log, format='"text"')))
    async with http.get(url(gw, "/svc/a b"), headers={"User-Agent": 'quote " and\ttab'}) as response:
        request_id = response.headers["X-Request-ID"]

    async def written() -> bool:
        return log.exists() and log.read_text().endswith("\n")

    await wait_for(written)
    [line] = log.read_text().splitlines()
    match = re.fullmatch(rf"({TS.pattern}) ([0-9a-f]+) GET (\S+) 200 ([0-9.]+)ms (.*)", line)
    assert match is not None, line
    assert match.group(2) == request_id
    assert match.group(3) == "/svc/a%20b"
    assert "route=svc " in match.group(5) and "upstream_status=200 " in match.group(5)
    assert 'user_agent="quote \\" and\\ttab"' in match.group(5)


async def test_access_log_off_unless_configured_or_when_disabled(
    upstream: StartUpstream, gateway: StartGateway, tmp_path: Path
) -> None:
    up = await upstream()
    assert (await gateway(proxy_config(up.url))).runtime.access_log is None
    gw = await gateway(proxy_config(up.url, gateway=settings(tmp_path / "x.log", enabled="false")))
    assert gw.runtime.access_log is None


async def test_lines_written_at_drain_are_not_lost(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    up = await upstream()
    log = tmp_path / "access.log"
    gw = await gateway(proxy_config(up.url, gateway=settings(log)))
    for n in range(20):
        async with http.get(url(gw, f"/svc/{n}")) as response:
            assert response.status == 200
    await gw.drain()  # before the flush timer: the drain writes what is buffered
    assert [entry["path"] for entry in logged(log)] == [f"/svc/{n}" for n in range(20)]


async def test_workers_never_interleave_lines(
    upstream: StartUpstream, spawn_gateway: Callable[..., Awaitable[GatewaySubprocess]], tmp_path: Path
) -> None:
    async def answer(request: web.Request) -> web.Response:
        return web.Response(body=b"y" * 2000)

    up = await upstream(answer)
    log = tmp_path / "access.log"
    gw = await spawn_gateway(proxy_config(up.url, gateway=f"workers = 2\n{settings(log)}"))
    count = 1500
    agents = [f"agent-{n}-" + "z" * (n % 700) for n in range(count)]  # lines of many lengths

    async def one(http: aiohttp.ClientSession, n: int) -> None:
        async with http.get(gw.url(f"/svc/{n}"), headers={"User-Agent": agents[n]}) as response:
            assert response.status == 200
            await response.read()

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64, force_close=True)) as http:
        await asyncio.gather(*(one(http, n) for n in range(count)))
    entries = await lines(log, count)
    assert sorted(e["path"] for e in entries) == sorted(f"/svc/{n}" for n in range(count))
    assert {e["user_agent"] for e in entries} == set(agents)


async def test_the_logged_id_is_the_one_the_client_got_when_a_plugin_sets_it(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    up = await upstream()
    log = tmp_path / "access.log"
    gw = await gateway(proxy_config(up.url, gateway=settings(log), after=plugin_table(
        "request_id", header='"X-Correlation-ID"', trust_incoming="false")))
    async with http.get(url(gw, "/svc/a"), headers={"X-Correlation-ID": "client-chosen-id-1234"}) as response:
        given = response.headers["X-Correlation-ID"]
    [entry] = await lines(log, 1)
    assert given != "client-chosen-id-1234"
    assert entry["request_id"] == given == up.requests[0].headers["X-Correlation-ID"]
