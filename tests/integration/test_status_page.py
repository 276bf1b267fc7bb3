"""The admin status page: /status.json counts exactly the traffic sent (since start, and over the
last minute on a clock the tests move), with one process and with two workers; targets without
a health check are never shown "up"; / redirects to /status; and /status, in a real headless
Chromium, shows a person the same numbers once its script has fetched /status.json."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import textwrap
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.multiprocess import MultiProcessCollector

from gateway import __version__
from gateway.process import GatewayProcess
from gateway.status import NO_HEALTH_CHECK, RouteCounts, Snapshot, TrafficWindow, quantile, sample
from gateway.status_page import PAGE
from tests.conftest import GatewaySubprocess, StartGateway, StartUpstream, Upstream
from tests.support import free_port, wait_for
from tests.support.ports import required_binary

TOKEN = "status-token-5d2e"
SLOW_SECONDS = 0.3  # in the (0.25 s, 0.5 s] bucket of gateway_request_duration_seconds


class FakeClock:
    """The status window's clock, moved by the test: no test waits a minute, none is flaky."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def answer(request: web.Request) -> web.StreamResponse:
    """The upstream: 500 for paths with "fail", 200 after SLOW_SECONDS for "slow", else 200 at once."""
    if "fail" in request.path:
        return web.json_response({"error": "broken"}, status=500)
    if "slow" in request.path:
        await asyncio.sleep(SLOW_SECONDS)
    return web.json_response({"ok": True})


def routes_toml(live: str, *, gateway: str = "", checked: bool = False) -> str:
    """Route ``svc`` to ``live`` (with a breaker that stays closed), route ``quiet`` to a target
    where nothing listens and no health check looks; with ``checked``, route ``checked`` to
    ``live`` and the dead target, both health-checked."""
    dead = f"http://127.0.0.1:{free_port()}"
    text = f"""
        [gateway]
        {gateway}
        [upstreams.svc]
        targets = ["{live}"]
        breaker = {{ failures = 50 }}
        [upstreams.idle]
        targets = ["{dead}"]
        timeout = {{ connect = "1s", response = "2s" }}
        [[routes]]
        name = "svc"
        path = "/svc/{{rest:.*}}"
        upstream = "svc"
        [[routes]]
        name = "quiet"
        path = "/quiet"
        upstream = "idle"
        """
    if checked:
        text += f"""
        [upstreams.checked]
        targets = ["{live}", "{dead}"]
        health = {{ path = "/healthz", interval = "100ms", timeout = "500ms", unhealthy_after = 1 }}
        [[routes]]
        name = "checked"
        path = "/checked"
        upstream = "checked"
        """
    return textwrap.dedent(text)


StartStatusGateway = Callable[..., Awaitable[GatewayProcess]]


@pytest.fixture
def status_gateway(tmp_path: Path, gateway: StartGateway) -> StartStatusGateway:
    """A gateway in this process from a real file (so POST /reload reads it again) whose status
    window runs on ``clock`` and takes snapshots only when the test calls ``sample``."""
    files = itertools.count()

    async def start(toml: str, clock: FakeClock, env: dict[str, str] | None = None) -> GatewayProcess:
        window = TrafficWindow(span=60, interval=3600, clock=clock)
        return await gateway(toml, env, file=tmp_path / f"routes-{next(files)}.toml", traffic=window)

    return start


async def started(upstream: StartUpstream, status_gateway: StartStatusGateway
                  ) -> tuple[Upstream, GatewayProcess, FakeClock]:
    """The answering upstream, a status gateway with routes_toml in front of it, its clock."""
    up = await upstream(answer)
    clock = FakeClock()
    return up, await status_gateway(routes_toml(up.url), clock), clock


def public(port: int, path: str) -> str:
    return f"http://127.0.0.1:{port}{path}"


async def get_status(port: int, path: str = "/status.json", headers: dict[str, str] | None = None) -> Any:
    async with aiohttp.ClientSession() as http, http.get(public(port, path), headers=headers) as response:
        assert response.status == 200, await response.text()
        assert response.content_type == "application/json"
        return await response.json()


def route_of(document: Any, name: str) -> dict[str, Any]:
    found = [route for route in document["routes"] if route["name"] == name]
    assert len(found) == 1, document["routes"]
    return dict(found[0])


def targets_of(document: Any, upstream: str) -> dict[str, dict[str, Any]]:
    found = [u for u in document["upstreams"] if u["name"] == upstream]
    assert len(found) == 1, document["upstreams"]
    return {target["url"]: target for target in found[0]["targets"]}


async def counted(admin_port: int, route: str, requests: int, timeout: float = 5.0) -> Any:
    """/status.json once it counts ``requests`` for ``route`` (a request is counted right after
    its response is written, so a client can be a moment ahead)."""
    document: Any = None

    async def done() -> bool:
        nonlocal document
        document = await get_status(admin_port)
        return bool(route_of(document, route)["requests"] >= requests)

    await wait_for(done, timeout, f"{route} did not count {requests} requests")
    assert route_of(document, route)["requests"] == requests
    return document


async def send(http: aiohttp.ClientSession, port: int, path: str, count: int, status: int) -> None:
    """``count`` requests at once to ``path``, each expected to answer ``status``."""

    async def one() -> int:
        async with http.get(public(port, path)) as response:
            await response.read()
            return response.status

    assert await asyncio.gather(*(one() for _ in range(count))) == [status] * count


# The traffic of the in-process tests: OLD requests a minute ago, then the window's.
OLD, OK, FAILED, SLOW = 7, 12, 5, 3
IN_WINDOW = OK + FAILED + SLOW


async def known_traffic(gw: GatewayProcess, clock: FakeClock, http: aiohttp.ClientSession) -> None:
    """OLD requests, a snapshot 10 s later, the window's requests, then 60 s on: the window is
    exactly the last 60 s, with the requests sent after the snapshot."""
    await send(http, gw.port, "/svc/old", OLD, 200)
    await counted(gw.admin_port, "svc", OLD)
    clock.advance(10)
    await sample(gw)
    await send(http, gw.port, "/svc/ok", OK, 200)
    await send(http, gw.port, "/svc/fail", FAILED, 500)
    await send(http, gw.port, "/svc/slow", SLOW, 200)
    await counted(gw.admin_port, "svc", OLD + IN_WINDOW)
    clock.advance(60)


# --- /status.json, one process ----------------------------------------------------------------


async def test_status_json_counts_requests_since_start_and_rates_over_the_last_minute(
    upstream: StartUpstream, status_gateway: StartStatusGateway, http: aiohttp.ClientSession
) -> None:
    _, gw, clock = await started(upstream, status_gateway)
    await known_traffic(gw, clock, http)

    document = await get_status(gw.admin_port)
    assert document["window_seconds"] == 60
    svc = route_of(document, "svc")
    assert svc["requests"] == OLD + IN_WINDOW  # since start
    assert svc["rps"] == pytest.approx(IN_WINDOW / 60)  # the old requests are outside the window
    assert svc["error_ratio"] == pytest.approx(FAILED / IN_WINDOW)
    # 3 of 20 took 0.3 s: the 99th percentile lies beyond the 250 ms bucket bound (in the next
    # bucket, up to 500 ms, unless the machine is very busy)
    assert 250 < svc["p99_ms"] < 1000
    assert route_of(document, "quiet") == {"name": "quiet", "requests": 0, "rps": 0.0, "error_ratio": None,
                                           "p99_ms": None}
    assert [route["name"] for route in document["routes"]] == ["svc", "quiet"]

    # a minute later the window holds none of it; the count since start stays
    await sample(gw)
    clock.advance(65)
    later = route_of(await get_status(gw.admin_port), "svc")
    assert later == {"name": "svc", "requests": OLD + IN_WINDOW, "rps": 0.0, "error_ratio": None, "p99_ms": None}


async def test_a_gateway_younger_than_a_minute_rates_over_its_whole_life(
    upstream: StartUpstream, status_gateway: StartStatusGateway, http: aiohttp.ClientSession
) -> None:
    _, gw, clock = await started(upstream, status_gateway)
    await send(http, gw.port, "/svc/ok", 6, 200)
    await send(http, gw.port, "/svc/fail", 2, 500)
    await counted(gw.admin_port, "svc", 8)
    clock.advance(4)
    document = await get_status(gw.admin_port)
    assert document["window_seconds"] == 4
    svc = route_of(document, "svc")
    assert (svc["requests"], svc["rps"], svc["error_ratio"]) == (8, 2.0, 0.25)
    assert 0 < svc["p99_ms"] < 1000


async def test_status_json_names_version_uptime_workers_and_last_reload(
    upstream: StartUpstream, status_gateway: StartStatusGateway, http: aiohttp.ClientSession
) -> None:
    up = await upstream(answer)
    gw = await status_gateway(routes_toml(up.url), FakeClock())
    document = await get_status(gw.admin_port)
    assert set(document) >= {"version", "uptime_seconds", "workers", "last_reload", "routes", "upstreams"}
    assert document["version"] == __version__
    assert document["workers"] == 1
    assert document["ready"] is True
    assert document["last_reload"] is None
    assert 0 <= document["uptime_seconds"] < 60

    async with http.post(public(gw.admin_port, "/reload")) as response:
        assert response.status == 200
    reloaded = (await get_status(gw.admin_port))["last_reload"]
    assert reloaded["result"] == "success"
    assert abs(datetime.fromisoformat(reloaded["time"]).timestamp() - time.time()) < 30

    Path(gw.loaded.source).write_text("[[routes]]\nname = 1\n")
    async with http.post(public(gw.admin_port, "/reload")) as response:
        assert response.status == 422
    assert (await get_status(gw.admin_port))["last_reload"]["result"] == "failure"


async def test_targets_without_health_check_are_in_rotation_never_up(
    upstream: StartUpstream, status_gateway: StartStatusGateway, http: aiohttp.ClientSession
) -> None:
    up = await upstream(answer)
    gw = await status_gateway(routes_toml(up.url, checked=True), FakeClock())
    async with http.get(public(gw.port, "/quiet")) as response:
        assert response.status == 502  # nothing listens there: it is dead, and nothing checks it
    dead = gw.loaded.config.upstreams["idle"].targets[0]

    async def checked_target_down() -> bool:
        targets = targets_of(await get_status(gw.admin_port), "checked")
        return bool(targets[dead]["health"] == "down")

    await wait_for(checked_target_down, 5, "the health check did not mark the dead target down")
    document = await get_status(gw.admin_port)
    assert targets_of(document, "idle") == {dead: {"url": dead, "health": NO_HEALTH_CHECK, "breaker": None}}
    assert targets_of(document, "svc") == {up.url: {"url": up.url, "health": NO_HEALTH_CHECK, "breaker": "closed"}}
    assert targets_of(document, "checked")[up.url]["health"] == "up"
    assert {u["name"]: u["breaker"] for u in document["upstreams"]} == {"svc": "closed", "idle": None, "checked": None}


async def test_an_open_breaker_shows_on_the_upstream_and_its_targets(
    status_gateway: StartStatusGateway, http: aiohttp.ClientSession
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    toml = textwrap.dedent(f"""
        [upstreams.flaky]
        targets = ["{dead}"]
        breaker = {{ failures = 2, reset_timeout = "60s" }}
        [[routes]]
        name = "flaky"
        path = "/flaky"
        upstream = "flaky"
        """)
    gw = await status_gateway(toml, FakeClock())
    for expected in (502, 502, 503):
        async with http.get(public(gw.port, "/flaky")) as response:
            assert response.status == expected
    flaky = (await get_status(gw.admin_port))["upstreams"][0]
    assert flaky["breaker"] == "open"
    assert flaky["targets"] == [{"url": dead, "health": NO_HEALTH_CHECK, "breaker": "open"}]


# --- the guard, the redirect and the page itself ---------------------------------------------


async def test_admin_root_redirects_to_the_status_page(
    upstream: StartUpstream, status_gateway: StartStatusGateway, http: aiohttp.ClientSession
) -> None:
    up = await upstream(answer)
    gw = await status_gateway(routes_toml(up.url), FakeClock())
    async with http.get(public(gw.admin_port, "/"), allow_redirects=False) as response:
        assert response.status == 302
        assert response.headers["Location"] == "/status"
    async with http.get(public(gw.admin_port, "/")) as response:
        assert response.status == 200
        assert response.url.path == "/status"
        assert response.content_type == "text/html"
        assert response.headers["Cache-Control"] == "no-store"
        policy = response.headers["Content-Security-Policy"]
        assert "connect-src 'self'" in policy and "default-src 'none'" in policy
        page = await response.read()
    assert page == PAGE
    # self-contained: nothing loaded from anywhere (the admin port may have no internet)
    for outside in (b"http://", b"https://", b"src=", b"@import", b"url("):
        assert outside not in page
    assert b'fetch("status.json"' in page


async def test_status_json_and_the_page_stay_behind_the_admin_guard(
    upstream: StartUpstream, status_gateway: StartStatusGateway, http: aiohttp.ClientSession
) -> None:
    up = await upstream(answer)
    gw = await status_gateway(routes_toml(up.url, gateway=f'admin_token = "{TOKEN}"'), FakeClock())
    right = {"Authorization": f"Bearer {TOKEN}"}
    for path in ("/", "/status", "/status.json"):
        async with http.get(public(gw.admin_port, path), headers={**right, "Host": "evil.example"},
                            allow_redirects=False) as response:
            assert response.status == 403, path
        async with http.get(public(gw.admin_port, path), allow_redirects=False) as response:
            assert response.status == 401, path
        async with http.get(public(gw.admin_port, path), headers=right, allow_redirects=False) as response:
            assert response.status == (302 if path == "/" else 200), path
            assert TOKEN not in await response.text()
    assert (await get_status(gw.admin_port, headers=right))["routes"][0]["name"] == "svc"


# --- workers = 2: the supervisor's numbers are over all workers -------------------------------


def requests_per_worker(directory: Path, route: str) -> list[float]:
    """``gateway_requests_total`` of ``route`` in each worker's own metrics file."""
    counts = []
    for file in sorted(directory.glob("counter_*.db")):
        families = MultiProcessCollector.merge([str(file)], accumulate=True)  # type: ignore[no-untyped-call]
        count = sum(sample.value for family in families for sample in family.samples
                    if sample.name == "gateway_requests_total" and sample.labels["route"] == route)
        if count:
            counts.append(count)
    return counts


async def test_with_two_workers_the_supervisor_shows_the_sum_over_workers(
    upstream: StartUpstream, spawn_gateway: Callable[..., Awaitable[GatewaySubprocess]], tmp_path: Path
) -> None:
    up = await upstream(answer)
    metrics = tmp_path / "metrics"
    gw = await spawn_gateway(routes_toml(up.url, checked=True), "--workers", "2",
                             env={"PROMETHEUS_MULTIPROC_DIR": str(metrics)})
    plan = ["/svc/fail"] * 8 + ["/svc/slow"] * 2 + ["/svc/ok"] * 30
    # a new connection per request: the kernel spreads connections, not requests, over workers
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        for path in plan:
            async with http.get(gw.url(path)) as response:
                await response.read()
                assert response.status == (500 if "fail" in path else 200)
    document = await counted(gw.admin_port, "svc", len(plan))

    per_worker = requests_per_worker(metrics, "svc")
    assert len(per_worker) == 2 and sum(per_worker) == len(plan), per_worker  # both workers served
    assert document["workers"] == 2
    svc = route_of(document, "svc")
    # younger than a minute: the window is the supervisor's whole life, so it holds every request
    assert 0 < document["window_seconds"] <= document["uptime_seconds"] + 0.01
    assert svc["rps"] * document["window_seconds"] == pytest.approx(len(plan), rel=1e-3)
    assert svc["error_ratio"] == pytest.approx(8 / 40)
    assert 250 < svc["p99_ms"] < 1000  # 2 of 40 took 0.3 s

    dead = next(url for url in targets_of(document, "checked") if url != up.url)

    async def marked_down() -> bool:
        return bool(targets_of(await get_status(gw.admin_port), "checked")[dead]["health"] == "down")

    await wait_for(marked_down, 5, "the workers' health checks did not show the dead target down")
    document = await get_status(gw.admin_port)
    assert targets_of(document, "checked")[up.url]["health"] == "up"
    assert targets_of(document, "idle")[dead]["health"] == NO_HEALTH_CHECK
    assert targets_of(document, "svc")[up.url] == {"url": up.url, "health": NO_HEALTH_CHECK, "breaker": "closed"}
    async with aiohttp.ClientSession() as http, http.get(gw.admin("/"), allow_redirects=False) as response:
        assert (response.status, response.headers["Location"]) == (302, "/status")


# --- the page in a real browser ------------------------------------------------------------------


def chromium_binary() -> str:
    return required_binary("chromium", "chromium-browser", package="chromium", tests="browser tests")


async def chromium(profile: Path, url: str, *action: str) -> bytes:
    """Headless Chromium on ``url`` with ``action`` (--dump-dom, --screenshot=...) once the page's
    script has had 5 s of virtual time: its stdout."""
    proc = await asyncio.create_subprocess_exec(
        chromium_binary(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--no-first-run", "--no-default-browser-check", "--hide-scrollbars", f"--user-data-dir={profile}",
        "--window-size=1280,900", "--virtual-time-budget=5000", *action, url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(90):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            with contextlib.suppress(ProcessLookupError):
                await proc.wait()
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return out


class Dom(HTMLParser):
    """The text of the elements a person reads: by id, and per table row by data-field."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.ids: dict[str, str] = {}
        self.attrs: dict[str, dict[str, str]] = {}
        self.rows: dict[tuple[str, ...], dict[str, str]] = {}
        self._open: list[tuple[str, str | None, str | None]] = []  # tag, id, data-field
        self._row: tuple[str, ...] | None = None
        self._text: dict[int, list[str]] = {}
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {k: v or "" for k, v in attrs}
        if tag == "tr" and ("data-route" in found or "data-upstream" in found):
            self._row = (found["data-route"],) if "data-route" in found else (found["data-upstream"],
                                                                              found["data-target"])
            self.rows[self._row] = {}
        if "id" in found:
            self.attrs[found["id"]] = found
        self._open.append((tag, found.get("id"), found.get("data-field")))
        self._text[len(self._open)] = []

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            depth = len(self._open)
            name, element_id, field_name = self._open.pop()
            text = " ".join("".join(self._text.pop(depth, [])).split())
            if self._open:
                self._text[len(self._open)].append(text)
            if element_id is not None:
                self.ids[element_id] = text
            if field_name is not None and self._row is not None:
                self.rows[self._row][field_name] = text
            if name == tag:
                return

    def handle_data(self, data: str) -> None:
        if self._open:
            self._text[len(self._open)].append(data)


async def test_the_page_in_a_browser_shows_the_numbers_of_the_traffic_sent(
    upstream: StartUpstream, status_gateway: StartStatusGateway, http: aiohttp.ClientSession, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], record_property: Callable[[str, object], None],
) -> None:
    chromium_binary()
    up, gw, clock = await started(upstream, status_gateway)
    await known_traffic(gw, clock, http)
    url = public(gw.admin_port, "/")  # through the redirect, as a person would type it

    dom = Dom((await chromium(tmp_path / "profile", url, "--dump-dom")).decode())
    assert dom.attrs["problem"].get("hidden") is not None, dom.ids.get("problem")
    assert dom.ids["workers"] == "1"
    assert dom.ids["ready"] == "ready"
    assert dom.ids["last-reload"] == "never"
    assert dom.ids["window"] == "60 s"
    svc = dom.rows[("svc",)]
    assert svc["requests"] == str(OLD + IN_WINDOW)
    assert svc["rps"] == f"{IN_WINDOW / 60:.2f}"
    assert svc["error_ratio"] == f"{100 * FAILED / IN_WINDOW:.1f} %"
    p99, unit = svc["p99_ms"].split()
    assert unit == "ms" and 250 < float(p99) < 1000
    assert svc["p99_ms"] == f"{route_of(await get_status(gw.admin_port), 'svc')['p99_ms']:.1f} ms"
    assert dom.rows[("quiet",)] == {"requests": "0", "rps": "0", "error_ratio": "—", "p99_ms": "—"}
    assert dom.rows[("svc", up.url)] == {"health": NO_HEALTH_CHECK, "breaker": "closed"}
    idle = [row for key, row in dom.rows.items() if key[0] == "idle"]
    assert idle == [{"health": NO_HEALTH_CHECK, "breaker": "none"}]
    assert dom.ids["total-rps"] == f"{IN_WINDOW / 60:.2f}"

    screenshot = tmp_path / "status.png"
    await chromium(tmp_path / "profile", url, f"--screenshot={screenshot}")
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert screenshot.stat().st_size > 10_000  # a page, not a blank
    record_property("status_page_screenshot", str(screenshot))
    with capsys.disabled():
        print(f"\nstatus page screenshot: {screenshot}")


# --- the window's arithmetic -------------------------------------------------------------------


def test_p99_is_interpolated_within_its_bucket_as_prometheus_does() -> None:
    inf = float("inf")
    assert quantile(0.99, [(0.1, 0.0), (0.5, 0.0), (inf, 0.0)]) is None
    assert quantile(0.5, [(0.1, 10.0), (0.5, 20.0), (inf, 20.0)]) == pytest.approx(0.1)
    assert quantile(0.99, [(0.1, 0.0), (0.5, 100.0), (inf, 100.0)]) == pytest.approx(0.1 + 0.4 * 0.99)
    assert quantile(0.99, [(0.1, 50.0), (0.5, 50.0), (inf, 100.0)]) == 0.5  # beyond the last bound


def test_the_window_compares_with_the_newest_snapshot_a_span_old() -> None:
    window = TrafficWindow(span=60, interval=5)
    for at in range(0, 200, 5):
        window.record(Snapshot(float(at), {"r": RouteCounts(requests=float(at))}))
    base = window.base(197.0)
    assert base is not None and base.at == 135.0
    seconds, figures = window.figures(Snapshot(197.0, {"r": RouteCounts(requests=197.0)}))
    assert seconds == 62.0 and figures["r"].rps == 1.0 and figures["r"].requests == 197
    assert len(window._snapshots) <= 60 / 5 + 2  # the old ones are dropped
