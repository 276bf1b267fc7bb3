"""The admin listener answers only Hosts DNS rebinding cannot forge, refuses cross-site POSTs
and, with gateway.admin_token, wants the bearer token — probes and scrapes are always answered."""

from __future__ import annotations

import json
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from gateway.config_load import load_config
from gateway.process import GatewayProcess
from tests.support import proxy_config, raw_status, read_problem, scrape
from tests.support.resilience import reload_counts

TOKEN = "admin-token-8c1f0e"
OPEN = ("/healthz", "/readyz", "/metrics")
GUARDED = (("GET", "/status"), ("GET", "/config"), ("POST", "/reload"))
SECOND = '[[routes]]\nname = "second"\npath = "/second"\nupstream = "svc"'  # a reload would add this route


def config(gateway: str = "", routes: str = "") -> str:
    """Route ``first`` (and ``routes`` after it) to an upstream nothing calls."""
    return proxy_config("http://127.0.0.1:9", name="first", path="/first", gateway=gateway, upstream="", after=routes)


class Admin:
    """A gateway started from a real file (so POST /reload reads it again), and its admin URL."""

    def __init__(self, process: GatewayProcess, file: Path) -> None:
        self.process = process
        self.file = file

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.process.admin_port}{path}"

    @property
    def port(self) -> int:
        return self.process.admin_port

    def rewrite(self, toml: str) -> None:
        self.file.write_text(textwrap.dedent(toml))

    def route_names(self) -> list[str]:
        return [route.name for route in self.process.current_config().config.routes]


StartAdmin = Callable[..., Awaitable[Admin]]


@pytest.fixture
async def admin(tmp_path: Path) -> AsyncIterator[StartAdmin]:
    started: list[GatewayProcess] = []

    async def start(toml: str, env: dict[str, str] | None = None) -> Admin:
        file = tmp_path / f"routes-{len(started)}.toml"
        file.write_text(textwrap.dedent(toml))
        process = GatewayProcess(load_config(file, env), listen="127.0.0.1:0", admin_listen="127.0.0.1:0")
        await process.start()
        started.append(process)
        return Admin(process, file)

    yield start
    for process in started:
        await process.drain()


async def reloads(gw: Admin) -> tuple[float, float]:
    return reload_counts(await scrape(gw.process))


# --- Host allow-list ------------------------------------------------------------------------


async def test_a_foreign_host_is_refused_but_probes_and_metrics_answer(
    admin: StartAdmin, http: aiohttp.ClientSession
) -> None:
    gw = await admin(config())
    gw.rewrite(config(routes=SECOND))
    for host in ("evil.example", f"evil.example:{gw.port}"):
        for method, path in GUARDED:
            async with http.request(method, gw.url(path), headers={"Host": host}) as response:
                document = await read_problem(response, 403)
                assert "gateway.admin_hosts" in str(document["detail"])
        for path in OPEN:
            async with http.get(gw.url(path), headers={"Host": host}) as response:
                assert response.status == 200, path
    assert gw.route_names() == ["first"]
    assert gw.process.last_reload is None
    assert await reloads(gw) == (0, 0)


async def test_a_request_without_host_is_refused_except_probes(admin: StartAdmin) -> None:
    gw = await admin(config())
    assert await raw_status(gw.port, b"GET /status HTTP/1.0\r\n\r\n") == 403
    assert await raw_status(gw.port, b"GET /config HTTP/1.0\r\n\r\n") == 403
    assert await raw_status(gw.port, b"GET /healthz HTTP/1.0\r\n\r\n") == 200
    assert await raw_status(gw.port, b"GET /config HTTP/1.0\r\nHost:\r\n\r\n") == 403


async def test_ip_literals_localhost_and_admin_hosts_are_answered(
    admin: StartAdmin, http: aiohttp.ClientSession
) -> None:
    gw = await admin(config('admin_hosts = ["gateway-admin.ops.svc", "Gateway-Admin.Other.svc:9901"]'))
    allowed = [
        f"127.0.0.1:{gw.port}", "127.0.0.1", "10.20.30.40:9901", "localhost", f"LocalHost:{gw.port}", "localhost.",
        "[::1]", f"[::1]:{gw.port}", "[fd00::7]:9901", "gateway-admin.ops.svc", f"GATEWAY-ADMIN.ops.svc:{gw.port}",
        "gateway-admin.other.svc",
    ]
    for host in allowed:
        async with http.get(gw.url("/status"), headers={"Host": host}) as response:
            assert response.status == 200, host
    refused = [
        "evil.example", "127.0.0.1.nip.io", "localhost.evil.example", "sub.localhost", "gateway-admin",
        "gateway-admin.ops.svc.evil.example", "::1", "[::1", "[evil.example]", "127.0.0.1:http", "1.2.3",
        "127.0.0.1:9901:1",
    ]
    for host in refused:
        async with http.get(gw.url("/status"), headers={"Host": host}) as response:
            assert response.status == 403, host


async def test_admin_hosts_changed_by_a_reload_apply_at_once(
    admin: StartAdmin, http: aiohttp.ClientSession
) -> None:
    gw = await admin(config())
    async with http.get(gw.url("/status"), headers={"Host": "gw.internal"}) as response:
        assert response.status == 403
    gw.rewrite(config('admin_hosts = ["gw.internal"]'))
    async with http.post(gw.url("/reload")) as response:
        assert response.status == 200
    async with http.get(gw.url("/status"), headers={"Host": "gw.internal"}) as response:
        assert response.status == 200


# --- cross-site POST ------------------------------------------------------------------------


async def test_a_cross_site_post_is_refused_and_nothing_reloads(
    admin: StartAdmin, http: aiohttp.ClientSession
) -> None:
    gw = await admin(config())
    gw.rewrite(config(routes=SECOND))
    refused: list[dict[str, str]] = [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Origin": f"https://127.0.0.1:{gw.port}"},  # the admin listener speaks plain http
        {"Origin": f"http://localhost:{gw.port}"},  # another host than the one asked
        {"Origin": "http://127.0.0.1"},  # another port
        {"Origin": f"http://127.0.0.1:{gw.port}/path"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "Cross-Site", "Origin": f"http://127.0.0.1:{gw.port}"},
    ]
    for headers in refused:
        async with http.post(gw.url("/reload"), headers=headers) as response:
            document = await read_problem(response, 403)
            assert "cross-site" in str(document["detail"]), headers
    assert gw.route_names() == ["first"]
    assert gw.process.last_reload is None
    assert await reloads(gw) == (0, 0)


async def test_a_same_site_post_or_one_without_origin_reloads(
    admin: StartAdmin, http: aiohttp.ClientSession
) -> None:
    gw = await admin(config())
    gw.rewrite(config(routes=SECOND))
    same_site = {"Origin": f"http://127.0.0.1:{gw.port}", "Sec-Fetch-Site": "same-origin"}
    async with http.post(gw.url("/reload"), headers=same_site) as response:
        assert response.status == 200
    assert gw.route_names() == ["first", "second"]
    async with http.post(gw.url("/reload"), headers={"Host": "localhost", "Origin": "http://LOCALHOST:80"}) as response:
        assert response.status == 200
    async with http.post(gw.url("/reload")) as response:  # curl sends no Origin
        assert response.status == 200
    assert await reloads(gw) == (3, 0)


async def test_a_cross_site_get_is_still_answered(admin: StartAdmin, http: aiohttp.ClientSession) -> None:
    gw = await admin(config())
    async with http.get(gw.url("/status"), headers={"Origin": "http://evil.example"}) as response:
        assert response.status == 200


# --- admin_token ----------------------------------------------------------------------------


async def test_admin_token_guards_everything_but_probes(
    admin: StartAdmin, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ADMIN_TOKEN", TOKEN)  # read again by POST /reload
    gw = await admin(config('admin_token = "${ADMIN_TOKEN}"'), {"ADMIN_TOKEN": TOKEN})
    wrong = [{}, {"Authorization": "Bearer wrong-token"}, {"Authorization": f"Basic {TOKEN}"},
             {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": "Bearer"}, {"Authorization": TOKEN}]
    for headers in wrong:
        for method, path in GUARDED:
            async with http.request(method, gw.url(path), headers=headers) as response:
                await read_problem(response, 401)
                assert response.headers["WWW-Authenticate"] == 'Bearer realm="gateway-admin"'
    for path in OPEN:
        async with http.get(gw.url(path)) as response:
            assert response.status == 200, path
    assert await reloads(gw) == (0, 0)
    right = {"Authorization": f"Bearer {TOKEN}"}
    for method, path in GUARDED:
        async with http.request(method, gw.url(path), headers=right) as response:
            assert response.status == 200, path
            body = await response.text()
            assert TOKEN not in body
            if path == "/config":
                assert json.loads(body)["gateway"]["admin_token"] == "<redacted>"
    async with http.get(gw.url("/status"), headers={"Authorization": f"bearer {TOKEN}"}) as response:
        assert response.status == 200
    assert await reloads(gw) == (1, 0)


async def test_a_foreign_host_is_refused_even_with_the_token(
    admin: StartAdmin, http: aiohttp.ClientSession
) -> None:
    gw = await admin(config(f'admin_token = "{TOKEN}"'))
    headers = {"Host": "evil.example", "Authorization": f"Bearer {TOKEN}"}
    async with http.get(gw.url("/config"), headers=headers) as response:
        await read_problem(response, 403)
    async with http.post(gw.url("/reload"), headers={**headers, "Host": "127.0.0.1",
                                                      "Origin": "http://evil.example"}) as response:
        await read_problem(response, 403)


async def test_without_admin_token_no_authorization_is_needed(
    admin: StartAdmin, http: aiohttp.ClientSession
) -> None:
    gw = await admin(config())
    async with http.get(gw.url("/config")) as response:
        assert response.status == 200
        assert (await response.json())["gateway"]["admin_token"] == ""
