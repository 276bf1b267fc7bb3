"""The lean upstream client (gateway.upstream.http1) against raw upstreams: keep-alive reuse, stale
connections, framing cases, timeouts, flow control."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from multidict import CIMultiDict

from gateway.errors import UpstreamConnectError, UpstreamReset, UpstreamTimeout
from gateway.upstream.http1 import Http1Client
from tests.support import free_port

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[tuple[str, list[int]]]:
    """A TCP server; yields its URL and a list that counts accepted connections."""
    connections: list[int] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", connections
    finally:
        server.close()


async def read_head(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


async def call(client: Http1Client, target: str, method: str = "GET", body: bytes | None = None,
               *, budget: float = 2.0, idle: float = 2.0) -> tuple[int, CIMultiDict[str], bytes]:
    loop = asyncio.get_running_loop()
    response = await client.request(target, method, "/p?q=1", CIMultiDict(), body,
                                    deadline=loop.time() + budget, connect_timeout=1.0, idle_timeout=idle)
    try:
        return response.status, response.headers, await response.read()
    finally:
        response.release()


async def test_keep_alive_connections_are_reused() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_head(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    client = Http1Client()
    async with raw_server(serve) as (target, connections):
        for _ in range(5):
            assert (await call(client, target))[0] == 200
        assert len(connections) == 1
    await client.close()


async def test_request_head_is_exact() -> None:
    seen: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await read_head(reader))
        writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        await writer.drain()

    client = Http1Client()
    async with raw_server(serve) as (target, _):
        loop = asyncio.get_running_loop()
        response = await client.request(target, "GET", "/a%20b?x=%2F", CIMultiDict([("X-A", "1"), ("X-A", "2")]),
                                        None, deadline=loop.time() + 2, connect_timeout=1, idle_timeout=1)
        assert response.status == 204
        assert await response.read() == b""
        response.release()
    port = target.rsplit(":", 1)[1]
    assert seen[0] == f"GET /a%20b?x=%2F HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-A: 1\r\nX-A: 2\r\n\r\n".encode()
    await client.close()


async def test_a_kept_alive_connection_closed_by_the_upstream_while_idle_is_not_reused() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")  # keep-alive, then hang up
        await writer.drain()

    client = Http1Client()
    async with raw_server(serve) as (target, connections):
        assert (await call(client, target))[2] == b"ok"
        await asyncio.sleep(0.05)  # the upstream's close arrives while the connection is idle
        assert not client._pools[target].idle  # dropped as soon as it was seen
        assert (await call(client, target))[2] == b"ok"
        assert len(connections) == 2
    await client.close()


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_a_reused_connection_closed_before_answering_is_retried_once_for_get(method: str) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(connections) == 1:
            await read_head(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
            await read_head(reader)  # the second request: closed without an answer
            return
        while True:
            await read_head(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh")
            await writer.drain()

    client = Http1Client()
    async with raw_server(serve) as (target, connections):
        assert (await call(client, target))[2] == b"ok"
        if method == "GET":
            assert (await call(client, target))[2] == b"fresh"
            assert len(connections) == 2
        else:  # not replayable: the client learns the upstream hung up
            with pytest.raises(UpstreamReset):
                await call(client, target, "POST", b"x")
    await client.close()


async def test_head_answer_ends_with_its_head() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_head(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
            await writer.drain()

    client = Http1Client()
    async with raw_server(serve) as (target, connections):
        for _ in range(2):
            status, headers, body = await call(client, target, "HEAD", budget=1.0)
            assert (status, headers["Content-Length"], body) == (200, "1000", b"")
        assert len(connections) == 1  # and the connection stays usable
    await client.close()


async def test_interim_100_continue_is_skipped_and_trailers_not_kept() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n"
                     b"Trailer: X-Sum\r\n\r\n3\r\nabc\r\n0\r\nX-Sum: 1\r\n\r\n")
        await writer.drain()

    client = Http1Client()
    async with raw_server(serve) as (target, _):
        status, headers, body = await call(client, target, "POST", b"data")
        assert (status, body) == (201, b"abc")
        assert "X-Sum" not in headers
    await client.close()


async def test_body_delimited_by_connection_close() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end")
        await writer.drain()

    client = Http1Client()
    async with raw_server(serve) as (target, _):
        assert (await call(client, target))[2] == b"until the end"
    await client.close()


async def test_truncated_body_is_an_error_not_a_short_answer() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this")
        await writer.drain()

    client = Http1Client()
    async with raw_server(serve) as (target, _):
        with pytest.raises(UpstreamReset):
            await call(client, target)
    await client.close()


async def test_head_deadline_and_idle_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        await asyncio.sleep(5)

    async def stalls_mid_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await writer.drain()
        await asyncio.sleep(5)

    client = Http1Client()
    loop = asyncio.get_running_loop()
    async with raw_server(silent) as (target, _):
        started = loop.time()
        with pytest.raises(UpstreamTimeout):
            await call(client, target, budget=0.2)
        assert loop.time() - started < 0.5
    async with raw_server(stalls_mid_body) as (target, _):
        started = loop.time()
        with pytest.raises(UpstreamReset):
            await call(client, target, idle=0.2)
        assert loop.time() - started < 0.5
    await client.close()


async def test_connect_refused_is_a_connect_error() -> None:
    client = Http1Client()
    with pytest.raises(UpstreamConnectError):
        await call(client, f"http://127.0.0.1:{free_port()}")
    await client.close()


async def test_large_answer_is_streamed_with_flow_control() -> None:
    size = 8 * 1024 * 1024

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode())
        chunk = b"x" * 65536
        for _ in range(size // len(chunk)):
            writer.write(chunk)
            await writer.drain()

    client = Http1Client()
    async with raw_server(serve) as (target, _):
        loop = asyncio.get_running_loop()
        response = await client.request(target, "GET", "/", CIMultiDict(), None,
                                        deadline=loop.time() + 5, connect_timeout=1, idle_timeout=5)
        received = 0
        async for chunk in response:
            received += len(chunk)
            await asyncio.sleep(0)  # a slow reader
        response.release()
        assert received == size
    await client.close()


async def test_a_connection_released_unread_while_paused_serves_the_next_request() -> None:
    big = 300 * 1024  # past the high-water mark, so reading pauses, but it all arrives at once
    answered: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_head(reader)
            if not answered:
                writer.write(f"HTTP/1.1 503 Busy\r\nContent-Length: {big}\r\n\r\n".encode() + b"x" * big)
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            answered.append(1)
            await writer.drain()

    client = Http1Client()
    async with raw_server(serve) as (target, _):
        loop = asyncio.get_running_loop()
        first = await client.request(target, "GET", "/", CIMultiDict(), None,
                                     deadline=loop.time() + 2, connect_timeout=1, idle_timeout=2)
        assert first.status == 503
        await asyncio.sleep(0.1)  # the whole answer arrives, reading pauses at the high-water mark
        first.release()  # unread: a retry layer does this before trying again
        status, _, body = await call(client, target, budget=1.0)
        assert (status, body) == (200, b"ok")
    await client.close()


async def test_a_reset_mid_body_of_a_close_delimited_answer_is_an_error() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\npartial")
        await writer.drain()
        await asyncio.sleep(0.05)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # with SO_LINGER 0: an RST, not a FIN

    client = Http1Client()
    async with raw_server(serve) as (target, _):
        with pytest.raises(UpstreamReset):
            await call(client, target)
    await client.close()


async def test_idle_connections_are_swept() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_head(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    import gateway.upstream.http1 as http1

    client = Http1Client()
    async with raw_server(serve) as (target, _):
        await asyncio.gather(*(call(client, target) for _ in range(5)))
        pool = client._pools[target]
        assert len(pool.idle) == 5
        for conn in pool.idle:
            conn.idle_since -= http1.IDLE_KEEPALIVE + 1
        client.sweep()
        assert target not in client._pools or not client._pools[target].idle
    await client.close()
