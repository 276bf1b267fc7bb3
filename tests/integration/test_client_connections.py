"""Client connections on the public listener: header and keep-alive timeouts, the connection
cap, what the HTTP parser rejects, and no Server header of the gateway's own.

Raw sockets throughout: the point is what happens on the wire, byte by byte and in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from gateway.process import GatewayProcess
from tests.conftest import StartGateway, StartUpstream, Upstream
from tests.support import metric, proxy_config, scrape
from tests.support.edge import proxied
from tests.support.raw import raw_connection, raw_exchange, raw_upstream, read_request_head, read_response

LIMITS = """
    header_timeout = "1s"
    keepalive_timeout = "2s"
    max_connections = 3
"""


async def limited(
    upstream: StartUpstream, gateway: StartGateway, limits: str = LIMITS
) -> tuple[Upstream, GatewayProcess]:
    """An upstream behind a gateway with ``limits`` on its client connections."""
    return await proxied(upstream, gateway, rewrite=None, settings=limits)


@contextlib.asynccontextmanager
async def connected(
    upstream: StartUpstream, gateway: StartGateway
) -> AsyncIterator[tuple[Upstream, asyncio.StreamReader, asyncio.StreamWriter]]:
    """A gateway with the limits, its upstream, and one raw client connection to it."""
    up, gw = await limited(upstream, gateway)
    async with raw_connection(gw.port) as (reader, writer):
        yield up, reader, writer


async def closed_after(reader: asyncio.StreamReader, limit: float = 6.0) -> float:
    """Read until the gateway closes the connection, which must send nothing more; how long it took."""
    start = time.monotonic()
    assert await asyncio.wait_for(reader.read(), limit) == b""
    return time.monotonic() - start


async def test_a_request_head_that_trickles_in_is_cut_off_at_header_timeout(
    upstream: StartUpstream, gateway: StartGateway
) -> None:
    async with connected(upstream, gateway) as (up, reader, writer):
        opened = time.monotonic()
        writer.write(b"GET /svc/x HTTP/1.1\r\n")
        for piece in (b"Ho", b"st", b": g"):  # a byte now and then resets nothing
            await asyncio.sleep(0.3)
            writer.write(piece)
        await closed_after(reader)
    assert 0.8 <= time.monotonic() - opened <= 2.5  # 1 s after the connection opened, not after the last byte
    assert up.hits == 0


async def test_a_connection_that_sends_nothing_is_closed_at_header_timeout(
    upstream: StartUpstream, gateway: StartGateway
) -> None:
    async with connected(upstream, gateway) as (_, reader, _):
        assert 0.8 <= await closed_after(reader) <= 2.5


async def test_a_head_that_arrives_in_time_is_served_and_a_slow_body_is_not_cut(
    upstream: StartUpstream, gateway: StartGateway
) -> None:
    async with connected(upstream, gateway) as (up, reader, writer):
        writer.write(b"POST /svc/x HTTP/1.1\r\nHost: g\r\nContent-Length: 6\r\n")
        await asyncio.sleep(0.5)
        writer.write(b"\r\n")  # the head is complete within 1 s
        for piece in (b"ab", b"cd", b"ef"):  # the body takes 1.5 s: client_body_timeout's business
            await asyncio.sleep(0.5)
            writer.write(piece)
        response = await read_response(reader)
    assert response.status == 200
    assert up.bodies == [b"abcdef"]


async def test_an_idle_kept_alive_connection_is_closed_at_keepalive_timeout(
    upstream: StartUpstream, gateway: StartGateway
) -> None:
    async with connected(upstream, gateway) as (up, reader, writer):
        writer.write(b"GET /svc/1 HTTP/1.1\r\nHost: g\r\n\r\n")
        assert (await read_response(reader)).status == 200
        await asyncio.sleep(1.2)  # idle longer than header_timeout: still open, keep-alive rules
        writer.write(b"GET /svc/2 HTTP/1.1\r\nHost: g\r\n\r\n")
        assert (await read_response(reader)).status == 200
        assert 1.7 <= await closed_after(reader) <= 3.5
    assert up.hits == 2


async def test_connections_beyond_max_connections_are_refused_and_the_others_kept(
    upstream: StartUpstream, gateway: StartGateway
) -> None:
    up, gw = await limited(upstream, gateway, LIMITS.replace('header_timeout = "1s"', 'header_timeout = "10s"'))
    held = [await asyncio.open_connection("127.0.0.1", gw.port) for _ in range(3)]
    await asyncio.sleep(0.1)
    assert metric(await scrape(gw), "gateway_client_connections") == 3
    async with raw_connection(gw.port) as (reader, writer):
        writer.write(b"GET /svc/x HTTP/1.1\r\nHost: g\r\n\r\n")
        await closed_after(reader, 2.0)  # refused: closed without an answer
    first_reader, first_writer = held[0]
    first_writer.write(b"GET /svc/held HTTP/1.1\r\nHost: g\r\n\r\n")
    assert (await read_response(first_reader)).status == 200  # the existing ones are unaffected
    for _, held_writer in held:
        held_writer.close()
    await asyncio.sleep(0.2)
    assert metric(await scrape(gw), "gateway_client_connections") == 0
    response = await raw_exchange(gw.port, b"GET /svc/after HTTP/1.1\r\nHost: g\r\nConnection: close\r\n\r\n")
    assert response.status == 200
    assert [r.path for r in up.requests] == ["/svc/held", "/svc/after"]


MALFORMED = [
    pytest.param(b"GET /svc/x HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer SECRET-TOKEN\r\nBad Header: x\r\n\r\n",
                 400, id="space-in-header-name"),
    pytest.param(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400, id="http2-preface"),
    pytest.param(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03SECRET-TOKEN\r\n\r\n", 400, id="tls-hello"),
    pytest.param(b"GET /svc/x?SECRET-TOKEN\x7f HTTP/1.1\r\nHost: g\r\n\r\n", 400, id="control-char-in-target"),
    pytest.param(b"GARBAGE SECRET-TOKEN\r\n\r\n", 400, id="garbage-line"),
    pytest.param(b"GET /svc/x HTTP/1.1\r\nHost: g\r\nX-Long: " + b"S" * 70_000 + b"\r\n\r\n", 431,
                 id="header-too-large"),
    pytest.param(b"GET /SECRET-TOKEN" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: g\r\n\r\n", 414, id="line-too-long"),
]


@pytest.mark.parametrize(("raw", "status"), MALFORMED)
async def test_what_the_parser_rejects_is_a_quiet_problem_document(
    raw: bytes, status: int, upstream: StartUpstream, gateway: StartGateway, caplog: pytest.LogCaptureFixture
) -> None:
    up, gw = await limited(upstream, gateway)
    caplog.set_level(logging.DEBUG)
    response = await raw_exchange(gw.port, raw)
    assert response.status == status
    assert response.get("Content-Type") == "application/problem+json"
    assert response.get("Server") is None
    problem = json.loads(response.body)
    assert problem["status"] == status and problem["route"] == "_malformed"
    assert problem["request_id"] == response.get("X-Request-ID")
    assert b"SECRET" not in response.body and b"Bad Header" not in response.body
    logged = [r for r in caplog.records if "SECRET" in r.getMessage() or r.exc_info]
    assert logged == []  # no header value, no traceback
    lines = [r for r in caplog.records if r.name == "gateway.connections"]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO and "\n" not in lines[0].getMessage()
    text = await scrape(gw)
    assert metric(text, "gateway_requests_total", route="_malformed", code=str(status)) == 1
    assert up.hits == 0


async def test_the_gateway_adds_no_server_header_but_passes_an_upstreams_own(
    upstream: StartUpstream, gateway: StartGateway
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.Response(text="hi")
        if request.path.endswith("/named"):
            response.headers["Server"] = "upstream/1.0"
        return response

    _, gw = await proxied(upstream, gateway, handler, rewrite=None)
    own = await raw_exchange(gw.port, b"GET /nope HTTP/1.1\r\nHost: g\r\n\r\n")
    assert own.status == 404 and own.get("Server") is None
    named = await raw_exchange(gw.port, b"GET /svc/named HTTP/1.1\r\nHost: g\r\n\r\n")
    assert named.all("Server") == ["upstream/1.0"]
    plain = await raw_exchange(gw.port, b"GET /svc/plain HTTP/1.1\r\nHost: g\r\n\r\n")
    assert plain.status == 200
    assert plain.all("Server") in ([], ["Python/3.11 aiohttp/3.14.5"])  # the upstream's, if it sent one


async def test_a_small_body_that_drips_is_not_held_back(gateway: StartGateway) -> None:
    async def dripping(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nContent-Type: text/plain\r\n\r\nhello")
        await writer.drain()
        await asyncio.sleep(1.0)
        writer.write(b"world")
        await writer.drain()

    async with raw_upstream(dripping) as target:
        gw = await gateway(proxy_config(target, upstream=""))
        start = time.monotonic()
        async with raw_connection(gw.port) as (reader, writer):
            writer.write(b"GET /svc/drip HTTP/1.1\r\nHost: g\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            first = await asyncio.wait_for(reader.readexactly(5), 5)
            early = time.monotonic() - start
            rest = await asyncio.wait_for(reader.readexactly(5), 5)
    assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: 10" in head
    assert first == b"hello" and rest == b"world"
    assert early < 0.7  # the headers and the first bytes did not wait for the slow rest
