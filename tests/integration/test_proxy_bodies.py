"""Proxying, bodies: bytes pass through identical, framing is kept, memory stays flat."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import GatewaySubprocess, StartGateway, StartUpstream
from tests.support import RawResponse, proxy_config, raw_connection, raw_upstream, read_response, url
from tests.support.edge import fetch, fetch_json, proxied, streaming
from tests.support.raw import RawRequest, read_request

MiB = 1024 * 1024


def _compressible(size: int) -> bytes:
    """Text that compresses, but not to nothing (so the gzip body is still sizeable)."""
    return os.urandom(size // 2).hex().encode()[:size]


async def _echo(request: web.Request) -> web.StreamResponse:
    return web.Response(body=await request.read(), headers={"Content-Type": "application/octet-stream"})


async def _count(request: web.Request) -> web.Response:
    return web.json_response({"bytes": len(await request.read())})


# --- Content-Encoding passes untouched ------------------------------------------------------


@pytest.mark.parametrize("size", [2_000, 300_000], ids=["small", "streamed"])
async def test_gzip_response_passes_compressed_and_untouched(
    size: int, upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    compressed = gzip.compress(_compressible(size))

    async def handler(_: web.Request) -> web.StreamResponse:
        return web.Response(body=compressed, headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"})

    up, gw = await proxied(upstream, gateway, handler)
    # The client asks for gzip; the http fixture does not decompress.
    headers, body = await fetch(http, gw, "/svc/z", headers={"Accept-Encoding": "gzip"})
    assert headers["Content-Encoding"] == "gzip"
    assert body == compressed
    assert up.requests[0].headers["Accept-Encoding"] == "gzip"


async def test_gzip_request_body_reaches_upstream_byte_identical(
    gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    # A raw upstream: an aiohttp upstream would itself decompress what it receives.
    compressed = gzip.compress(b'{"items": [' + b",".join(b"%d" % i for i in range(50_000)) + b"]}")
    seen: list[RawRequest] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await read_request(reader))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()

    async with raw_upstream(handler) as target:
        gw = await gateway(proxy_config(target, rewrite="/{rest}", upstream=""))
        headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
        _, answer = await fetch(http, gw, "/svc/in", method="POST", data=compressed, headers=headers)
        assert answer == b"ok"
    assert len(seen) == 1
    assert seen[0].headers["Content-Encoding"] == "gzip"
    assert seen[0].headers["Content-Length"] == str(len(compressed))
    assert seen[0].body == compressed


# --- big bodies both ways ------------------------------------------------------------------


async def test_8mib_body_round_trips_identical(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    payload = os.urandom(8 * MiB)
    up, gw = await proxied(upstream, gateway, _echo)
    _, echoed = await fetch(http, gw, "/svc/echo", method="POST", data=payload)
    assert hashlib.sha256(up.bodies[0]).hexdigest() == hashlib.sha256(payload).hexdigest()
    assert len(echoed) == len(payload)
    assert echoed == payload


async def test_8mib_download_is_identical(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    payload = os.urandom(8 * MiB)
    _, gw = await proxied(upstream, gateway, streaming(payload, MiB))  # chunked from the upstream
    assert (await fetch(http, gw, "/svc/dl"))[1] == payload


# --- request framing ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", [10, 200_000], ids=["small", "streamed"])
async def test_content_length_upload_arrives_with_content_length(
    size: int, upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    payload = os.urandom(size)
    up, gw = await proxied(upstream, gateway)
    await fetch(http, gw, "/svc/put", method="PUT", data=payload)
    got = up.requests[0].headers
    assert got.getall("Content-Length") == [str(size)]
    assert "Transfer-Encoding" not in got
    assert up.bodies == [payload]


async def test_chunked_upload_stays_chunked(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    parts = [os.urandom(50_000) for _ in range(5)]

    async def body() -> AsyncIterator[bytes]:
        for part in parts:
            yield part

    up, gw = await proxied(upstream, gateway)
    await fetch(http, gw, "/svc/chunked", method="POST", data=body())
    got = up.requests[0].headers
    assert got.get("Transfer-Encoding", "").lower() == "chunked"
    assert "Content-Length" not in got
    assert up.bodies == [b"".join(parts)]


# --- responses without a body ----------------------------------------------------------------


def special_then_next(
    special: str, answer: Callable[[], web.Response]
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """An upstream handler answering ``answer()`` to requests for ``special`` (a method or a
    path), and "next" to all others."""

    async def handler(request: web.Request) -> web.StreamResponse:
        return answer() if special in (request.method, request.path) else web.Response(text="next")

    return handler


async def answer_then_next(port: int, request: bytes, *, no_body: bool = False) -> RawResponse:
    """Send ``request`` and then ``GET /svc/next`` on the same connection; the first answer.
    Any stray body byte of the first would corrupt the second, which must be a clean "next"."""
    async with raw_connection(port) as (reader, writer):
        writer.write(request)
        await writer.drain()
        first = await read_response(reader, no_body=no_body)
        writer.write(b"GET /svc/next HTTP/1.1\r\nHost: gw\r\n\r\n")
        await writer.drain()
        follow = await read_response(reader)
    assert follow.status == 200
    assert follow.body == b"next"
    return first


async def test_head_keeps_upstream_content_length_and_sends_no_body(
    upstream: StartUpstream, gateway: StartGateway
) -> None:
    def head_answer() -> web.Response:
        return web.Response(body=b"x" * 12345, headers={"Content-Type": "text/plain"})

    _, gw = await proxied(upstream, gateway, special_then_next("HEAD", head_answer))
    head = await answer_then_next(gw.port, b"HEAD /svc/h HTTP/1.1\r\nHost: gw\r\n\r\n", no_body=True)
    assert head.status == 200
    assert head.get("Content-Length") == "12345"


async def test_204_has_no_body(upstream: StartUpstream, gateway: StartGateway) -> None:
    _, gw = await proxied(upstream, gateway, special_then_next("/empty", lambda: web.Response(status=204)))
    empty = await answer_then_next(gw.port, b"DELETE /svc/empty HTTP/1.1\r\nHost: gw\r\n\r\n")
    assert empty.status == 204
    assert "transfer-encoding" not in empty.names
    assert empty.get("Content-Length") in (None, "0")


# --- load balancing -------------------------------------------------------------------------------


async def test_round_robin_alternates_between_targets(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    def named(name: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(_: web.Request) -> web.StreamResponse:
            return web.Response(text=name)

        return handler

    a, b = await upstream(named("a")), await upstream(named("b"))
    gw = await gateway(proxy_config(a.url, b.url, upstream='balance = "round_robin"'))
    served = [(await fetch(http, gw, "/svc/rr"))[1].decode() for _ in range(6)]
    assert served in (["a", "b"] * 3, ["b", "a"] * 3)
    assert (a.hits, b.hits) == (3, 3)


# --- memory stays flat (a real subprocess) -------------------------------------------------------


STREAM_CHUNK = MiB
STREAM_CHUNKS = 300  # 300 MiB each way
RSS_BOUND_KIB = 200 * 1024


async def test_300mb_streams_both_ways_with_flat_memory(
    upstream: StartUpstream, spawn_gateway: Callable[..., Awaitable[GatewaySubprocess]]
) -> None:
    chunk = b"\xa5" * STREAM_CHUNK

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.method == "POST":
            received = 0
            async for part in request.content.iter_chunked(256 * 1024):
                received += len(part)
            return web.json_response({"received": received})
        out = web.StreamResponse()
        out.content_length = STREAM_CHUNK * STREAM_CHUNKS
        await out.prepare(request)
        for _ in range(STREAM_CHUNKS):
            await out.write(chunk)
        await out.write_eof()
        return out

    up = await upstream(handler, record_bodies=False)
    gw = await spawn_gateway(proxy_config(up.url, upstream="", gateway='max_body_bytes = "1GiB"'))
    baseline = gw.peak_rss_kib()

    async def upload() -> AsyncIterator[bytes]:
        for _ in range(STREAM_CHUNKS):
            yield chunk

    started = time.monotonic()
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(auto_decompress=False, timeout=timeout) as session:
        async with session.post(gw.url("/svc/up"), data=upload()) as response:
            assert response.status == 200
            assert await response.json() == {"received": STREAM_CHUNK * STREAM_CHUNKS}
        downloaded = 0
        async with session.get(gw.url("/svc/down")) as response:
            assert response.status == 200
            async for part in response.content.iter_chunked(256 * 1024):
                downloaded += len(part)
        assert downloaded == STREAM_CHUNK * STREAM_CHUNKS
    elapsed = time.monotonic() - started
    peak = gw.peak_rss_kib()
    assert peak < RSS_BOUND_KIB, f"gateway peak RSS {peak} KiB (baseline {baseline} KiB)"
    assert elapsed < 60


async def test_a_slow_upload_does_not_count_against_the_upstream_timeout(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    _, gw = await proxied(upstream, gateway, _count, record_bodies=False, route='timeout = "300ms"')

    async def slowly() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b"x" * 1000
            await asyncio.sleep(0.2)

    # 600 ms of client pace, but the upstream answered at once
    assert await fetch_json(http, gw, "/svc/upload", method="POST", data=slowly()) == {"bytes": 3000}


async def test_a_stalled_upload_is_answered_408(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    _, gw = await proxied(upstream, gateway, _count, record_bodies=False, settings='client_body_timeout = "200ms"')

    async def stalls() -> AsyncIterator[bytes]:
        yield b"x" * 1000
        await asyncio.sleep(0.6)
        yield b"y" * 1000

    started = time.monotonic()
    async with http.post(url(gw, "/svc/upload"), data=stalls()) as response:
        assert response.status == 408
        assert response.headers["Content-Type"] == "application/problem+json"
        assert "stalled" in (await response.json())["detail"]
    assert time.monotonic() - started < 1.5
