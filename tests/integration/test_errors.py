"""Every error the gateway makes itself is an RFC 9457 problem document."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from gateway.process import GatewayProcess
from tests.conftest import StartGateway, StartUpstream, Upstream
from tests.support import (
    assert_no_internal_address,
    assert_problem,
    free_port,
    proxy_config,
    raw_connection,
    raw_upstream,
    read_request_head,
    read_response,
    url,
)
from tests.support.resilience import held_upstream
from tests.support.scraping import problem_of

Svc = tuple[Upstream, GatewayProcess]


def config(target: str, *, route: str = "", gateway: str = "") -> str:
    return proxy_config(target, methods=("GET", "POST"), route=route, gateway=gateway)


@pytest.fixture
async def svc(upstream: StartUpstream, gateway: StartGateway) -> Svc:
    """A recording upstream behind route svc, which takes GET and POST."""
    up = await upstream()
    return up, await gateway(config(up.url))


async def test_unmatched_path_is_404(svc: Svc, http: aiohttp.ClientSession) -> None:
    up, gw = svc
    async with http.get(url(gw, "/nowhere/at/all")) as response:
        document = await problem_of(response, 404, route=None)
    assert document.get("route") in (None, "_unmatched")
    assert up.hits == 0


async def test_request_id_of_a_problem_is_the_clients_sane_id(
    svc: Svc, http: aiohttp.ClientSession
) -> None:
    async with http.get(url(svc[1], "/nowhere"), headers={"X-Request-ID": "trace-77"}) as response:
        document = await problem_of(response, 404, route=None)
    assert document["request_id"] == "trace-77"


async def test_method_not_allowed_is_405_with_allow(
    svc: Svc, http: aiohttp.ClientSession
) -> None:
    up, gw = svc
    async with http.delete(url(gw, "/svc/thing")) as response:
        await problem_of(response, 405, route=None)
        allowed = {m.strip() for m in response.headers["Allow"].split(",")}
    assert {"GET", "POST"} <= allowed
    assert "DELETE" not in allowed
    assert up.hits == 0


async def test_body_too_large_by_content_length_is_413_up_front(
    upstream: StartUpstream, gateway: StartGateway
) -> None:
    up = await upstream()
    gw = await gateway(config(up.url, gateway="max_body_bytes = 1000"))
    async with raw_connection(gw.port) as (reader, writer):
        # Only the headers: the answer must come without the gateway waiting for the body.
        writer.write(b"POST /svc/upload HTTP/1.1\r\nHost: gw\r\nContent-Length: 5000\r\n\r\n")
        await writer.drain()
        response = await read_response(reader, within=3.0)
    assert_problem(response.status, dict(response.headers), response.body, 413, route="svc")
    assert up.hits == 0


async def test_chunked_body_over_the_limit_is_413_while_streaming(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    up = await upstream()
    gw = await gateway(config(up.url, route="max_body_bytes = 1000"))

    async def body() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield b"x" * 500

    async with http.post(url(gw, "/svc/upload"), data=body()) as response:
        await problem_of(response, 413)
    assert all(len(b) <= 1000 for b in up.bodies)


async def test_connect_refused_is_502(gateway: StartGateway, http: aiohttp.ClientSession) -> None:
    target = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    gw = await gateway(config(target))
    async with http.get(url(gw, "/svc/x")) as response:
        body = await response.read()
        assert_problem(response.status, response.headers, body, 502, route="svc")
    assert_no_internal_address(body, target)


async def _reset_mid_headers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request_head(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/pl")
    await writer.drain()
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close → RST
    writer.transport.abort()


async def test_upstream_reset_mid_headers_is_502(gateway: StartGateway, http: aiohttp.ClientSession) -> None:
    async with raw_upstream(_reset_mid_headers) as target:
        gw = await gateway(config(target))
        async with http.post(url(gw, "/svc/x"), data=b"payload") as response:
            body = await response.read()
            assert_problem(response.status, response.headers, body, 502, route="svc")
    assert_no_internal_address(body, target)


async def test_upstream_slower_than_route_timeout_is_504(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    held, up = await held_upstream(upstream)
    gw = await gateway(config(up.url, route='timeout = "300ms"'))
    started = time.monotonic()
    try:
        async with http.get(url(gw, "/svc/slow")) as response:
            body = await response.read()
            elapsed = time.monotonic() - started
            assert_problem(response.status, response.headers, body, 504, route="svc")
    finally:
        held.release.set()
    assert 0.25 <= elapsed < 2.0, elapsed
    assert_no_internal_address(body, up.url)


async def _expect_rejected_headers(port: int, request: bytes) -> int:
    """Send ``request`` raw and return the status the gateway answers with (never a hang)."""
    async with raw_connection(port) as (reader, writer):
        writer.write(request)
        with contextlib.suppress(ConnectionError):  # the server may stop reading once it has decided
            await writer.drain()
        response = await read_response(reader, within=5.0)
    return response.status


@pytest.mark.parametrize("fields", [
    pytest.param(b"X-Huge: " + b"a" * 100_000 + b"\r\n", id="one_oversized_request_header"),
    pytest.param(b"".join(b"X-Field-%d: %s\r\n" % (i, b"v" * 4000) for i in range(200)),  # ~800 KB
                 id="many_request_headers_totalling_too_much"),
])
async def test_request_headers_too_large_are_400_or_431(
    svc: Svc, fields: bytes
) -> None:
    up, gw = svc
    status = await _expect_rejected_headers(gw.port, b"GET /svc/x HTTP/1.1\r\nHost: gw\r\n" + fields + b"\r\n")
    assert status in (400, 431)
    assert up.hits == 0
