"""A raw HTTP/1.x client and server for byte-exact checks.

aiohttp's own client adds headers itself and its server refuses what a hostile peer sends;
where the exact bytes matter, tests speak through these sockets instead.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from multidict import CIMultiDict

IO_TIMEOUT = 5.0  # seconds any single raw read may take before the test fails


@dataclass
class RawResponse:
    """One HTTP response as it came off the wire."""

    version: str
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    chunked: bool

    def get(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    @property
    def names(self) -> set[str]:
        return {k.lower() for k, _ in self.headers}


def _parse_head(head: bytes) -> tuple[str, list[tuple[str, str]]]:
    lines = head.decode("latin-1").split("\r\n")
    headers = []
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers.append((name.strip(), value.strip()))
    return lines[0], headers


async def read_response(
    reader: asyncio.StreamReader, *, no_body: bool = False, within: float = IO_TIMEOUT
) -> RawResponse:
    """Read one response: status line, headers, and a body framed by Content-Length,
    chunked encoding, or the end of the connection."""
    async with asyncio.timeout(within):
        status_line, headers = _parse_head(await reader.readuntil(b"\r\n\r\n"))
        version, status_text = status_line.split(" ", 2)[:2]
        status = int(status_text)
        fields = CIMultiDict(headers)
        chunked = "chunked" in fields.get("Transfer-Encoding", "").lower()
        body = b""
        if no_body or status in (204, 304) or 100 <= status < 200:
            pass
        elif chunked:
            parts = []
            for _ in range(1_000_000):  # bounded: at most this many chunks
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    for _ in range(100):  # trailer fields, then the empty line
                        if await reader.readuntil(b"\r\n") == b"\r\n":
                            break
                    break
                parts.append(await reader.readexactly(size))
                assert await reader.readexactly(2) == b"\r\n"
            body = b"".join(parts)
        elif "Content-Length" in fields:
            body = await reader.readexactly(int(fields["Content-Length"]))
        else:
            body = await reader.read()  # until the server closes
    return RawResponse(version, status, headers, body, chunked)


@contextlib.asynccontextmanager
async def raw_connection(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2**20)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def raw_exchange(port: int, request: bytes, *, no_body: bool = False) -> RawResponse:
    """Send one raw request on a new connection and read the answer."""
    async with raw_connection(port) as (reader, writer):
        writer.write(request)
        await writer.drain()
        return await read_response(reader, no_body=no_body)


async def read_request_head(reader: asyncio.StreamReader) -> bytes:
    """A raw upstream's view of one request: its head (the body, if any, is left unread)."""
    async with asyncio.timeout(IO_TIMEOUT):
        return await reader.readuntil(b"\r\n\r\n")


@dataclass
class RawHead:
    """A request head as a raw upstream received it."""

    request_line: str
    headers: CIMultiDict[str]


def parse_request_head(head: bytes) -> RawHead:
    line, headers = _parse_head(head)
    return RawHead(line, CIMultiDict(headers))


@dataclass
class RawRequest:
    """A request as a raw upstream received it, with its Content-Length body."""

    method: str
    target: str
    headers: CIMultiDict[str]
    body: bytes


async def read_request(reader: asyncio.StreamReader) -> RawRequest:
    """A raw upstream's view of one whole request: head, and the body its Content-Length announces."""
    head = parse_request_head(await read_request_head(reader))
    method, target, _ = head.request_line.split(" ", 2)
    length = int(head.headers.get("Content-Length", "0"))
    async with asyncio.timeout(IO_TIMEOUT):
        body = await reader.readexactly(length) if length else b""
    return RawRequest(method, target, head.headers, body)


RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class RawServer:
    """A raw TCP server: its URL and every connection it accepted, in order."""

    url: str
    connections: list[asyncio.StreamWriter] = field(default_factory=list)


@contextlib.asynccontextmanager
async def raw_server(handler: RawHandler, *, cut_on_exit: bool = True) -> AsyncIterator[RawServer]:
    """A TCP server on 127.0.0.1 whose connections are handled by ``handler``.

    On leaving, the connections still open are cut (unless ``cut_on_exit`` is false) and their
    handlers given up to ``IO_TIMEOUT`` to end, so that none outlives the test.
    """
    tasks: set[asyncio.Task[None]] = set()
    raw = RawServer("")

    async def guarded(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raw.connections.append(writer)
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            tasks.discard(task)
            writer.close()

    server = await asyncio.start_server(guarded, "127.0.0.1", 0)
    raw.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield raw
    finally:
        server.close()
        if cut_on_exit:
            for writer in raw.connections:
                writer.transport.abort()  # every handler's next read fails, and it ends
            if tasks:
                await asyncio.wait(tasks, timeout=IO_TIMEOUT)
        await server.wait_closed()


@contextlib.asynccontextmanager
async def raw_upstream(handler: RawHandler) -> AsyncIterator[str]:
    """A TCP server on 127.0.0.1 whose connections are handled by ``handler``; yields its URL.
    Connections still open on leaving are left to their peers."""
    async with raw_server(handler, cut_on_exit=False) as raw:
        yield raw.url


async def raw_status(port: int, request: bytes) -> int:
    """Send bytes as they are (no Host added) and read only the status code."""
    async with raw_connection(port) as (reader, writer):
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(IO_TIMEOUT):
            status_line = await reader.readline()
        return int(status_line.split()[1])
