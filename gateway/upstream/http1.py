"""A lean HTTP/1.1 client for upstream calls: keep-alive connection pools per target, the
llhttp parser (httptools), and nothing a proxy does not need.

aiohttp's ClientSession is general purpose (cookies, redirects, auto headers, tracing,
per-request timer objects); a proxy pays for all of it on every call. Here a call is: take
an idle connection, write the request head (and body), wait for the response head, hand
the body over as it arrives. Headers go out exactly as given; the body is not decoded.

Timeouts: ``connect`` (opening a connection), ``deadline`` (until the response head, a
loop time) and ``idle`` (longest silence while the body streams). A reused connection the
upstream had closed meanwhile is retried once on a fresh one for requests that can be sent
again (RFC 9112 §9.3.1), as aiohttp does.

Reuse: a connection goes back to the pool only after an answer framed exactly, and a parked
connection that receives anything (a byte, or the end of the stream) is dropped the moment
the event loop reports it; no read is attempted on the request path. HTTP/1.1 has no request
ids, so bytes an upstream writes at the very instant a parked connection is taken again
cannot be told from the answer to the new request; everything seen before that is.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterable, AsyncIterator
from urllib.parse import urlsplit

from multidict import CIMultiDict

from gateway.errors import UpstreamConnectError, UpstreamError, UpstreamReset, UpstreamTimeout
from gateway.upstream.connection import Connection, Stale
from gateway.upstream.request import IDEMPOTENT

IDLE_KEEPALIVE = 15.0  # seconds an idle connection is kept (shorter than common upstream idle timeouts)
MAX_IDLE = 256  # idle connections kept per target
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class Http1Response:
    """An upstream's answer: status and headers now, the body as it arrives (a BodyStream)."""

    __slots__ = ("_conn", "_done", "_idle", "_writer", "headers", "length", "status")

    def __init__(self, conn: Connection, idle: float, writer: asyncio.Task[None] | None) -> None:
        self._conn = conn
        self._idle = idle
        self._writer = writer
        self._done = False
        self.status = conn._status
        self.headers = conn._headers
        length = self.headers.get("Content-Length")
        self.length = int(length) if length is not None and length.isdigit() else None
        if conn._no_body or self.status in (204, 304):
            self.length = 0 if length is None else self.length

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while (chunk := await self._conn.next_chunk(self._idle)) is not None:
            yield chunk

    def whole(self) -> bytes | None:
        """The whole body when it has already arrived (without waiting), else None."""
        conn = self._conn
        if not conn._complete or conn._error is not None:
            return None
        body = b"".join(conn._chunks)
        conn._chunks.clear()
        conn._buffered = 0
        return body

    async def read(self) -> bytes:
        conn = self._conn
        parts: list[bytes] = []
        while (chunk := await conn.next_chunk(self._idle)) is not None:
            parts.append(chunk)
        return b"".join(parts)

    def release(self) -> None:
        """Give the connection back when the exchange ended cleanly, else close it."""
        if self._done:
            return
        self._done = True
        conn = self._conn
        writer = self._writer
        if writer is not None and not writer.done():
            writer.cancel()
            conn.abort()
        elif conn.reusable:
            conn.pool.put(conn)
        else:
            conn.abort()


class TargetPool:
    """Idle keep-alive connections to one ``scheme://host:port``."""

    def __init__(self, target: str, ssl_context: ssl.SSLContext | None) -> None:
        parts = urlsplit(target)
        self.host = parts.hostname or ""
        self.tls = parts.scheme == "https"
        self.port = parts.port or (443 if self.tls else 80)
        default_port = (self.tls and self.port == 443) or (not self.tls and self.port == 80)
        self.host_header = self.host if default_port else f"{self.host}:{self.port}"
        if ":" in self.host:  # IPv6 literal
            self.host_header = f"[{self.host}]" if default_port else f"[{self.host}]:{self.port}"
        self.ssl = ssl_context if self.tls else None
        self.idle: list[Connection] = []
        self.open: set[Connection] = set()

    async def get(self, connect_timeout: float, deadline: float) -> Connection:
        now = time.monotonic()
        while self.idle:
            conn = self.idle.pop()
            conn.pooled = False
            if conn.closed or now - conn.idle_since > IDLE_KEEPALIVE:
                conn.abort()
                continue
            conn.reused = True
            return conn
        return await self._connect(connect_timeout, deadline)

    async def _connect(self, limit: float, deadline: float) -> Connection:
        """Open a connection within ``limit`` seconds and before ``deadline`` (the route's
        budget covers connecting too): the first to expire decides 502 or 504."""
        loop = asyncio.get_running_loop()
        left = deadline - loop.time()
        budget_first = left < limit
        try:
            async with asyncio.timeout(min(limit, max(left, 0.0))):
                _, conn = await loop.create_connection(
                    lambda: Connection(self), self.host, self.port, ssl=self.ssl,
                    server_hostname=self.host if self.ssl is not None else None,
                )
        except TimeoutError:
            if budget_first:
                raise UpstreamTimeout("the route's timeout ran out while connecting to the upstream") from None
            raise UpstreamConnectError("timed out connecting to the upstream") from None
        except OSError:
            raise UpstreamConnectError("could not connect to the upstream") from None
        self.open.add(conn)
        return conn

    def put(self, conn: Connection) -> None:
        """Park a connection: unread body dropped, reading on, so stray bytes are seen at once."""
        conn.park()
        self.idle.append(conn)
        if len(self.idle) > MAX_IDLE:
            self._evict(self.idle.pop(0))

    def drop(self, conn: Connection) -> None:
        """Take a parked connection out of the pool (it received bytes or was closed)."""
        if conn.pooled:
            conn.pooled = False
            with contextlib.suppress(ValueError):
                self.idle.remove(conn)

    @staticmethod
    def _evict(conn: Connection) -> None:
        conn.pooled = False
        conn.abort()

    def sweep(self, now: float) -> None:
        """Close idle connections older than IDLE_KEEPALIVE (the oldest are first)."""
        while self.idle and (self.idle[0].closed or now - self.idle[0].idle_since > IDLE_KEEPALIVE):
            self._evict(self.idle.pop(0))

    def forget(self, conn: Connection) -> None:
        self.open.discard(conn)
        self.drop(conn)

    def close(self) -> None:
        for conn in list(self.open):
            conn.abort()
        for conn in self.idle:
            conn.pooled = False
        self.idle.clear()


class Http1Client:
    """Connection pools per target, shared by every upstream stack of a process."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self._pools: dict[str, TargetPool] = {}
        self._ssl = ssl_context


    @property
    def pools(self) -> dict[str, TargetPool]:
        """The pool per target (for inspection: what is open, what is parked)."""
        return self._pools
    def _pool(self, target: str) -> TargetPool:
        pool = self._pools.get(target)
        if pool is None:
            if target.startswith("https:") and self._ssl is None:
                self._ssl = ssl.create_default_context()  # loads the CA store: only when needed
            pool = self._pools[target] = TargetPool(target, self._ssl)
        return pool

    async def request(
        self,
        target: str,
        method: str,
        path_qs: str,
        headers: CIMultiDict[str],
        body: bytes | AsyncIterable[bytes] | None,
        *,
        deadline: float,
        connect_timeout: float,
        idle_timeout: float,
    ) -> Http1Response:
        """Send one request and return once the response head is in."""
        pool = self._pool(target)
        head, chunked = _request_head(method, path_qs, headers, body, pool.host_header)
        replayable = (body is None or type(body) is bytes) and method in IDEMPOTENT  # no ABC check: hot path
        for attempt in (1, 2):
            conn = await pool.get(connect_timeout, deadline)
            try:
                return await self._exchange(conn, method, head, body, chunked, deadline, idle_timeout)
            except Stale:
                if attempt == 2 or not replayable:
                    raise UpstreamReset("the upstream closed a kept-alive connection") from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def _exchange(
        self, conn: Connection, method: str, head: bytes, body: bytes | AsyncIterable[bytes] | None,
        chunked: bool, deadline: float, idle_timeout: float,
    ) -> Http1Response:
        loop = conn.loop
        arrived = conn.start(head_only=method == "HEAD")
        transport = conn.transport
        if transport is None or conn.closed:
            raise Stale()
        writer: asyncio.Task[None] | None = None
        if body is None:
            transport.write(head)
        elif type(body) is bytes:  # no ABC isinstance on the hot path
            transport.writelines((head, body))
        else:
            transport.write(head)
            conn.sending = True
            writer = loop.create_task(conn.write_body(body, chunked))  # type: ignore[arg-type]
            writer.add_done_callback(conn.body_written)
        timers: list[asyncio.TimerHandle] = []
        if writer is None:
            timers.append(loop.call_at(deadline, _head_timeout, arrived, conn))
        else:
            # A streamed upload runs at the client's pace: the wait for the answer starts once it
            # is sent (as in Envoy), so a slow client never counts against the upstream.
            budget = deadline - loop.time()

            def arm(_: asyncio.Task[None]) -> None:
                if not arrived.done():
                    timers.append(loop.call_later(max(budget, 0.0), _head_timeout, arrived, conn))

            writer.add_done_callback(arm)
        try:
            await arrived
        except BaseException:
            if writer is not None:
                writer.cancel()
            conn.abort()
            raise
        finally:
            for timer in timers:
                timer.cancel()
        return Http1Response(conn, idle_timeout, writer)

    def sweep(self) -> None:
        """Close connections idle for too long; forget pools with nothing left in them."""
        now = time.monotonic()
        for target, pool in list(self._pools.items()):
            pool.sweep(now)
            if not pool.idle and not pool.open:
                del self._pools[target]

    async def sweep_forever(self, every: float = IDLE_KEEPALIVE / 3) -> None:
        while True:
            await asyncio.sleep(every)
            self.sweep()

    async def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()


def _head_timeout(arrived: asyncio.Future[None], conn: Connection) -> None:
    if not arrived.done():
        arrived.set_exception(UpstreamTimeout("the upstream did not answer in time"))
        conn.abort()


def _request_head(
    method: str, path_qs: str, headers: CIMultiDict[str], body: bytes | AsyncIterable[bytes] | None, host: str
) -> tuple[bytes, bool]:
    """The request line and headers, and whether the body goes chunked."""
    chunked = False
    lines = [f"{method} {path_qs} HTTP/1.1"]
    if "Host" not in headers:
        lines.append(f"Host: {host}")
    for name, value in headers.items():
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
            raise UpstreamError(f"header {name!r} contains a line break")
        lines.append(f"{name}: {value}")
    if type(body) is bytes:
        if "Content-Length" not in headers:
            lines.append(f"Content-Length: {len(body)}")
    elif body is not None:
        if "Content-Length" not in headers:
            lines.append("Transfer-Encoding: chunked")
            chunked = True
    elif method in _BODY_METHODS and "Content-Length" not in headers:
        lines.append("Content-Length: 0")
    lines.append("\r\n")
    return "\r\n".join(lines).encode("utf-8", "surrogateescape"), chunked
