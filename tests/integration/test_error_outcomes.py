"""How failed calls are counted upstream: by the error's own outcome; a client's broken
upload is answered 413/408 and not counted as an upstream failure at all."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from tests.conftest import StartGateway, StartUpstream
from tests.support import free_port, metric, proxy_config, scrape, url
from tests.support.config import DEFAULT_TIMEOUT
from tests.support.scraping import problem_of, samples

REQUESTS = "gateway_upstream_requests_total"
DURATION = "gateway_upstream_request_duration_seconds_count"
RETRIES = "gateway_retries_total"
RETRY = 'retry = { attempts = 3, backoff = "1ms", max_backoff = "5ms", on = [502, "connect", "timeout", "reset"] }'


def config(target: str, *, gateway: str = "") -> str:
    """Route svc (GET and POST, bodies up to 1000 bytes) to an upstream that retries its failures."""
    return proxy_config(target, methods=("GET", "POST"), gateway=gateway, upstream=f"{DEFAULT_TIMEOUT}\n{RETRY}",
                        route="max_body_bytes = 1000")


def upstream_calls(text: str) -> dict[tuple[str, str], float]:
    """Every gateway_upstream_requests_total sample of route svc, by (code, outcome)."""
    return {(s.labels["code"], s.labels["outcome"]): s.value for s in samples(text, REQUESTS, route="svc") if s.value}


async def _reading(request: web.Request) -> web.Response:
    return web.json_response({"bytes": len(await request.read())})


async def test_a_too_large_upload_is_413_and_not_an_upstream_reset(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    up = await upstream(_reading, record_bodies=False)
    gw = await gateway(config(up.url))

    async def body() -> AsyncIterator[bytes]:
        yield b"x" * 600  # under the limit: the upstream call is under way
        await asyncio.sleep(0.2)
        for _ in range(4):
            yield b"x" * 600

    async with http.post(url(gw, "/svc/upload"), data=body()) as response:
        await problem_of(response, 413)
    assert up.hits == 1  # the upload was on its way upstream when it broke off

    text = await scrape(gw)
    assert metric(text, REQUESTS, route="svc", upstream="svc", code="", outcome="reset") == 0
    assert upstream_calls(text) == {}
    assert metric(text, DURATION, route="svc", upstream="svc") == 0
    assert metric(text, RETRIES, route="svc", upstream="svc", reason="reset") == 0
    assert metric(text, "gateway_requests_total", route="svc", code="413", source="gateway") == 1

    async with http.get(url(gw, "/svc/after")) as response:  # the counter itself is live
        assert response.status == 200
    assert upstream_calls(await scrape(gw)) == {("200", "ok"): 1}


async def test_a_stalled_upload_is_408_and_not_counted_upstream(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    up = await upstream(_reading, record_bodies=False)
    gw = await gateway(config(up.url, gateway='client_body_timeout = "200ms"'))

    async def stalls() -> AsyncIterator[bytes]:
        yield b"x" * 100
        await asyncio.sleep(0.6)
        yield b"y" * 100

    async with http.post(url(gw, "/svc/upload"), data=stalls()) as response:
        await problem_of(response, 408)
    text = await scrape(gw)
    assert upstream_calls(text) == {}
    assert metric(text, DURATION, route="svc", upstream="svc") == 0


async def test_an_upstream_failure_is_counted_by_its_own_outcome(
    gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    gw = await gateway(config(f"http://127.0.0.1:{free_port()}"))  # nothing listens there
    async with http.get(url(gw, "/svc/x")) as response:
        await problem_of(response, 502)
    text = await scrape(gw)
    assert upstream_calls(text) == {("", "connect_error"): 3}  # the first attempt and two retries
    assert metric(text, RETRIES, route="svc", upstream="svc", reason="connect") == 2
