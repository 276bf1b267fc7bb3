"""The lean upstream client (gateway.upstream.http1) against raw upstreams: keep-alive reuse, stale
connections, framing cases, timeouts, flow control."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest
from multidict import CIMultiDict

import gateway.upstream.http1 as http1
from gateway.errors import UpstreamConnectError, UpstreamReset, UpstreamTimeout
from gateway.upstream.http1 import Http1Client
from tests.support import free_port, read_request_head
from tests.support.edge import exchange, lean_client, send
from tests.support.raw import RawHandler

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def answering(*answers: bytes, keep_alive: bool = False) -> RawHandler:
    """An upstream that answers requests with ``answers`` in turn, the last one for all that follow:
    every request on a connection when ``keep_alive``, else only the first (then it hangs up)."""
    queue = list(answers)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request_head(reader)
            writer.write(queue.pop(0) if len(queue) > 1 else queue[0])
            await writer.drain()
            if not keep_alive:
                return

    return serve


async def call(client: Http1Client, target: str, method: str = "GET", body: bytes | None = None,
               *, budget: float = 2.0, idle: float = 2.0) -> tuple[int, CIMultiDict[str], bytes]:
    return await exchange(client, target, method, "/p?q=1", body=body, budget=budget, idle=idle)


async def test_keep_alive_connections_are_reused() -> None:
    async with lean_client(answering(OK, keep_alive=True)) as (client, up):
        for _ in range(5):
            assert (await call(client, up.url))[0] == 200
        assert len(up.connections) == 1


async def test_request_head_is_exact() -> None:
    seen: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await read_request_head(reader))
        writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        await writer.drain()

    async with lean_client(serve) as (client, up):
        status, _, body = await exchange(client, up.url, "GET", "/a%20b?x=%2F", [("X-A", "1"), ("X-A", "2")], idle=1)
        assert (status, body) == (204, b"")
    port = up.url.rsplit(":", 1)[1]
    assert seen[0] == f"GET /a%20b?x=%2F HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-A: 1\r\nX-A: 2\r\n\r\n".encode()


async def test_a_kept_alive_connection_closed_by_the_upstream_while_idle_is_not_reused() -> None:
    async with lean_client(answering(OK)) as (client, up):  # keep-alive, then hang up
        assert (await call(client, up.url))[2] == b"ok"
        await asyncio.sleep(0.05)  # the upstream's close arrives while the connection is idle
        assert not client._pools[up.url].idle  # dropped as soon as it was seen
        assert (await call(client, up.url))[2] == b"ok"
        assert len(up.connections) == 2


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_a_reused_connection_closed_before_answering_is_retried_once_for_get(method: str) -> None:
    fresh = answering(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh", keep_alive=True)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(up.connections) > 1:
            await fresh(reader, writer)
        else:
            await answering(OK)(reader, writer)
            await read_request_head(reader)  # the second request: closed without an answer

    async with lean_client(serve) as (client, up):
        assert (await call(client, up.url))[2] == b"ok"
        if method == "GET":
            assert (await call(client, up.url))[2] == b"fresh"
            assert len(up.connections) == 2
        else:  # not replayable: the client learns the upstream hung up
            with pytest.raises(UpstreamReset):
                await call(client, up.url, "POST", b"x")


async def test_head_answer_ends_with_its_head() -> None:
    head_only = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
    async with lean_client(answering(head_only, keep_alive=True)) as (client, up):
        for _ in range(2):
            status, headers, body = await call(client, up.url, "HEAD", budget=1.0)
            assert (status, headers["Content-Length"], body) == (200, "1000", b"")
        assert len(up.connections) == 1  # and the connection stays usable


async def test_interim_100_continue_is_skipped_and_trailers_not_kept() -> None:
    answer = (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n"
              b"Trailer: X-Sum\r\n\r\n3\r\nabc\r\n0\r\nX-Sum: 1\r\n\r\n")
    async with lean_client(answering(answer)) as (client, up):
        status, headers, body = await call(client, up.url, "POST", b"data")
        assert (status, body) == (201, b"abc")
        assert "X-Sum" not in headers


async def test_body_delimited_by_connection_close() -> None:
    async with lean_client(answering(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end")) as (client, up):
        assert (await call(client, up.url))[2] == b"until the end"


async def test_truncated_body_is_an_error_not_a_short_answer() -> None:
    async with lean_client(answering(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this")) as (client, up):
        with pytest.raises(UpstreamReset):
            await call(client, up.url)


@pytest.mark.parametrize(("answer", "error", "budget", "idle"), [
    pytest.param(b"", UpstreamTimeout, 0.2, 2.0, id="no-head-within-the-deadline"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", UpstreamReset, 2.0, 0.2, id="idle-mid-body"),
])
async def test_head_deadline_and_idle_timeout(
    answer: bytes, error: type[Exception], budget: float, idle: float
) -> None:
    async def stalls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await answering(answer)(reader, writer)
        await reader.read()  # and then nothing more, until the client hangs up

    loop = asyncio.get_running_loop()
    async with lean_client(stalls) as (client, up):
        started = loop.time()
        with pytest.raises(error):
            await call(client, up.url, budget=budget, idle=idle)
        assert loop.time() - started < 0.5


async def test_connect_refused_is_a_connect_error() -> None:
    client = Http1Client()
    with pytest.raises(UpstreamConnectError):
        await call(client, f"http://127.0.0.1:{free_port()}")
    await client.close()


async def test_large_answer_is_streamed_with_flow_control() -> None:
    size = 8 * 1024 * 1024

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request_head(reader)
        writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode())
        chunk = b"x" * 65536
        for _ in range(size // len(chunk)):
            writer.write(chunk)
            await writer.drain()

    async with lean_client(serve) as (client, up):
        response = await send(client, up.url, budget=5, idle=5)
        received = 0
        async for chunk in response:
            received += len(chunk)
            await asyncio.sleep(0)  # a slow reader
        response.release()
        assert received == size


async def test_a_connection_released_unread_while_paused_serves_the_next_request() -> None:
    big = 300 * 1024  # past the high-water mark, so reading pauses, but it all arrives at once
    busy = f"HTTP/1.1 503 Busy\r\nContent-Length: {big}\r\n\r\n".encode() + b"x" * big

    async with lean_client(answering(busy, OK, keep_alive=True)) as (client, up):
        first = await send(client, up.url)
        assert first.status == 503
        await asyncio.sleep(0.1)  # the whole answer arrives, reading pauses at the high-water mark
        first.release()  # unread: a retry layer does this before trying again
        status, _, body = await call(client, up.url, budget=1.0)
        assert (status, body) == (200, b"ok")


async def test_a_reset_mid_body_of_a_close_delimited_answer_is_an_error() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await answering(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\npartial")(reader, writer)
        await asyncio.sleep(0.05)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # with SO_LINGER 0: an RST, not a FIN

    async with lean_client(serve) as (client, up):
        with pytest.raises(UpstreamReset):
            await call(client, up.url)


async def test_idle_connections_are_swept() -> None:
    async with lean_client(answering(OK, keep_alive=True)) as (client, up):
        await asyncio.gather(*(call(client, up.url) for _ in range(5)))
        pool = client._pools[up.url]
        assert len(pool.idle) == 5
        for conn in pool.idle:
            conn.idle_since -= http1.IDLE_KEEPALIVE + 1
        client.sweep()
        assert up.url not in client._pools or not client._pools[up.url].idle
