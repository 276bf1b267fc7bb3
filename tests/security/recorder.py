"""A raw recording upstream, the configs under test, a raw request sender and the one
check every hostile request ends with: what reached the upstream is clean.

The upstream is a plain asyncio TCP server, not aiohttp: it keeps the request-target and
the header lines exactly as they came off the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from tests.conftest import StartGateway
from tests.support import RawResponse, plugin_table, proxy_config, raw_exchange
from tests.support.auth import route

IO_TIMEOUT = 5.0  # seconds any single upstream read may take
MAX_REQUESTS_PER_CONNECTION = 1_000
MAX_CHUNKS = 10_000
MAX_HEAD_BYTES = 64 * 1024
PROBLEM_JSON = "application/problem+json"
KEY = "k-alice"
UPSTREAM_BODY = b"{}"


@dataclass
class Received:
    """One request as the upstream read it off the wire."""

    request_line: str
    headers: list[tuple[str, str]]
    body: bytes = b""

    @property
    def method(self) -> str:
        return self.request_line.split(" ", 1)[0]

    @property
    def target(self) -> str:
        parts = self.request_line.split(" ")
        return parts[1] if len(parts) == 3 else ""

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def get(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None

    @property
    def names(self) -> set[str]:
        return {k.lower() for k, _ in self.headers}


@dataclass
class Recorder:
    """A raw HTTP/1.1 upstream on 127.0.0.1 that answers ``200 {}`` (application/json)
    to everything and records each request line, header lines and body."""

    requests: list[Received] = field(default_factory=list)
    port: int = 0
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def targets(self) -> list[str]:
        return [r.target for r in self.requests]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.append(task)
        try:
            for _ in range(MAX_REQUESTS_PER_CONNECTION):
                head = await reader.readuntil(b"\r\n\r\n")  # an idle keep-alive waits here
                received = _parse_head(head)
                async with asyncio.timeout(IO_TIMEOUT):
                    received.body = await _read_body(reader, received)
                self.requests.append(received)
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(UPSTREAM_BODY), UPSTREAM_BODY)
                )
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass
        finally:
            writer.close()


def _parse_head(head: bytes) -> Received:
    lines = head.decode("latin-1").split("\r\n")
    headers = []
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers.append((name, value.strip()))
    return Received(lines[0], headers)


async def _read_body(reader: asyncio.StreamReader, received: Received) -> bytes:
    if "chunked" in (received.get("Transfer-Encoding") or "").lower():
        parts: list[bytes] = []
        for _ in range(MAX_CHUNKS):
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")  # no trailers are sent by the gateway
                return b"".join(parts)
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        raise AssertionError("too many chunks")
    length = received.get("Content-Length")
    return await reader.readexactly(int(length)) if length else b""


@contextlib.asynccontextmanager
async def recording_upstream() -> AsyncIterator[Recorder]:
    recorder = Recorder()
    server = await asyncio.start_server(recorder.handle, "127.0.0.1", 0, limit=MAX_HEAD_BYTES)
    recorder.port = server.sockets[0].getsockname()[1]
    try:
        yield recorder
    finally:
        server.close()
        for writer in recorder._writers:
            writer.close()
        async with asyncio.timeout(IO_TIMEOUT):
            await asyncio.gather(*recorder._tasks, return_exceptions=True)
            await server.wait_closed()


# --- configs ------------------------------------------------------------------------------

CONSUMER = f'[consumers.alice]\napi_keys = ["{KEY}"]\n'


def config(
    target: str, *, catch_all: bool = False, routes: str = "", gateway: str = "", private_plugins: str = ""
) -> str:
    """Sibling routes on one upstream: ``/public/...`` open, ``/private/...`` behind an
    API key, optionally a public catch-all declared after the protected route."""
    private = route("private", "/private/{tail:.*}", plugin_table("api_key"), private_plugins)
    catch = route("all", "/{tail:.*}") if catch_all else ""
    return proxy_config(target, name="public", path="/public/{tail:.*}", gateway=gateway, upstream="",
                        after="".join([private, routes, catch, CONSUMER]))


# --- the client side ----------------------------------------------------------------------


def request_bytes(
    target: str, *, method: str = "GET", headers: list[tuple[str, str]] | None = None,
    host: str | None = "gw.example", body: bytes | None = None,
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1"]
    if host is not None:
        lines.append(f"Host: {host}")
    lines.extend(f"{name}: {value}" for name, value in headers or [])
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


@dataclass
class Front:
    """The gateway under test in front of the recorder; ``send`` starts it with the default
    ``config`` unless ``start`` was called with other options first."""

    recorder: Recorder
    start_gateway: StartGateway
    port: int = 0

    async def start(self, **options: Any) -> None:
        """Start it with ``config(recorder.url, **options)``."""
        self.port = (await self.start_gateway(config(self.recorder.url, **options))).port

    async def send(
        self, target: str, *, method: str = "GET", headers: list[tuple[str, str]] | None = None,
        host: str | None = "gw.example", body: bytes | None = None,
    ) -> RawResponse:
        return await self.exchange(request_bytes(target, method=method, headers=headers, host=host, body=body))

    async def exchange(self, request: bytes) -> RawResponse:
        """Send ``request`` byte for byte on a new connection."""
        if not self.port:
            await self.start()
        return await raw_exchange(self.port, request)


def is_problem(response: RawResponse) -> bool:
    return (response.get("Content-Type") or "").split(";")[0].strip() == PROBLEM_JSON


def assert_refused(response: RawResponse, status: int) -> None:
    """The gateway answered ``status`` itself, as a problem document."""
    assert response.status == status, (response.status, response.body[:300])
    assert is_problem(response), response.headers


def assert_outcome(response: RawResponse, recorder: Recorder, status: int, upstream: Sequence[str]) -> None:
    """The client got ``status`` (the gateway's problem for an error, the upstream's body
    otherwise) and the upstream received exactly the ``upstream`` request-targets, all clean
    and none of them on ``/private``."""
    if status >= 400:
        assert_refused(response, status)
    else:
        assert response.status == status, (response.status, response.body[:300])
        assert response.body == UPSTREAM_BODY
    assert recorder.targets == list(upstream)
    assert_upstream_clean(recorder)
    assert_no_private(recorder)


# --- the check ----------------------------------------------------------------------------


def _dot_pieces(segment: str) -> list[str]:
    """What ``segment`` could mean to an upstream as path pieces: as sent, and decoded once
    (split on ``/`` and ``\\``), each without its ``;parameters``."""
    pieces: list[str] = []
    for form in (segment, unquote(segment, errors="surrogateescape")):
        pieces.extend(piece.partition(";")[0] for piece in re.split(r"[/\\]", form))
    return pieces


def assert_upstream_clean(recorder: Recorder, *, underscores_allowed: bool = False) -> None:
    """Every request the upstream received is origin-form, carries no ``.``/``..`` segment
    however spelled, reached ``/private`` only after the gateway authenticated it, and
    (unless allowed) has no header name with ``_``."""
    for received in recorder.requests:
        target = received.target
        assert target.startswith("/"), f"not origin-form: {received.request_line!r}"
        assert not target.startswith("//"), f"ambiguous target: {received.request_line!r}"
        assert "#" not in target, f"fragment forwarded: {received.request_line!r}"
        segments = received.path.split("/")[1:]
        for segment in segments:
            bad = [p for p in _dot_pieces(segment) if p in (".", "..")]
            assert not bad, f"dot segment {segment!r} reached the upstream: {received.request_line!r}"
        if segments and unquote(segments[0]) == "private":
            assert received.all("X-Consumer") == ["alice"], (
                f"{target!r} reached the upstream without the API key being checked"
            )
        if not underscores_allowed:
            assert not [k for k, _ in received.headers if "_" in k], f"underscore header: {received.headers!r}"


def assert_no_private(recorder: Recorder) -> None:
    """The upstream received nothing the router would call ``/private``."""
    for received in recorder.requests:
        first = received.path.split("/")[1:2]
        assert not (first and unquote(first[0]) == "private"), f"reached the upstream: {received.target!r}"
