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
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import httptools
from multidict import CIMultiDict

from gateway.errors import GatewayError, UpstreamConnectError, UpstreamError, UpstreamReset, UpstreamTimeout
from gateway.upstream.request import IDEMPOTENT

IDLE_KEEPALIVE = 15.0  # seconds an idle connection is kept (shorter than common upstream idle timeouts)
MAX_IDLE = 256  # idle connections kept per target
HIGH_WATER = 256 * 1024  # buffered body bytes before the upstream socket is paused
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class _Stale(Exception):
    """A reused connection turned out closed before any byte of the answer came back."""


class _Beyond(Exception):
    """Raised from a parser callback to stop at bytes that lie beyond the framed answer."""


# Where a connection is in its exchange. IDLE: no request in flight (fresh, or parked in the
# pool): any byte received is stray. HEAD: waiting for the final response head (interim 1xx
# answers are skipped). BODY: the body is arriving. DONE: the answer ended at its framing;
# any byte beyond it is stray.
_IDLE, _HEAD, _BODY, _DONE = 0, 1, 2, 3
_TAIL = 64  # bytes of a read looked at to find where a run of CR/LF at its end begins


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection to a target, carrying one exchange at a time.

    A connection goes back to the pool only after an answer framed exactly: the final
    response ended where its Content-Length or chunked framing (or, for HEAD, 1xx, 204 and
    304, its head) says, and not one byte came after it. Bytes beyond the answer, in the same
    read or later, a body on an answer that cannot have one, and any byte (or the end of the
    stream) while the connection is parked close the connection; the current client keeps its
    own, exactly framed answer.
    """

    def __init__(self, pool: _TargetPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser: Any = None
        self.loop = asyncio.get_running_loop()
        self.reused = False
        self.closed = False
        self.pooled = False
        self.idle_since = 0.0
        self._state = _IDLE
        self._head: asyncio.Future[None] | None = None
        self._status = 0
        self._headers: CIMultiDict[str] = CIMultiDict()
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._complete = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._drained: asyncio.Future[None] | None = None
        self._paused = False
        self._got_bytes = False
        self._no_body = False
        self._grace = False
        self.sending = False
        self.keep_alive = True

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        state = self._state
        if state != _BODY and state != _HEAD:
            self._stray()  # parked, or after the end of the answer: never parsed as an answer
            return
        self._got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamReset("the upstream switched protocols unexpectedly"))
            return
        except httptools.HttpParserError:
            if self._state == _DONE:  # what follows the answer is not part of it
                self._stray()
            else:
                self._fail(UpstreamError("the upstream sent an invalid HTTP response"))
            return
        if self._state == _DONE and self.keep_alive:
            end = data[-1]
            # A read that ends with neither CR nor LF holds no run of CR/LF after the answer; only
            # a HEAD answer needs a closer look (llhttp reads on into a body it cannot be told of).
            if (end == 10 or end == 13 or self._no_body) and not self._ends_exactly(data):
                self._stray()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        state = self._state
        if state == _HEAD:
            self._fail(_Stale() if self.reused and not self._got_bytes else
                       UpstreamReset("the upstream closed the connection without answering"))
        elif state == _BODY:
            if exc is None and self._until_close():
                self._message_done()  # the body was delimited by the end of the connection
            else:
                self._fail(UpstreamReset("the upstream closed the connection mid-answer"))
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)  # the body writer sees `closed` and stops

    def pause_writing(self) -> None:
        self._drained = self.loop.create_future()

    def resume_writing(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._drained = None

    # -- httptools callbacks -------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._state == _DONE:
            raise _Beyond  # a second answer to one request

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._status:  # a trailer field after a chunked body: not forwarded (hop-by-hop framing)
            return
        self._headers.add(name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:  # an interim answer (100 Continue): wait for the real one (101 fails)
            self._headers = CIMultiDict()
            return
        self._status = status
        keep_alive = self.keep_alive and self.parser.should_keep_alive()
        if keep_alive and (self.sending or (self.transport is not None and self.transport.get_write_buffer_size())):
            keep_alive = False  # answered before the whole request was sent: the rest is unread
        self.keep_alive = keep_alive
        if self._head is not None and not self._head.done():
            self._head.set_result(None)
        if self._no_body:  # HEAD: llhttp cannot be told, so the answer ends with its head
            length = self._headers.get("Content-Length")
            # llhttp ends the message itself when it expects no body: allow that one completion
            self._grace = status == 204 or status == 304 or (length is not None and length.isdigit()
                                                             and int(length) == 0)
            self._message_done()
        else:
            self._state = _BODY

    def on_body(self, body: bytes) -> None:
        if self._state != _BODY:
            if self._state == _DONE:
                raise _Beyond  # a body on an answer to HEAD
            self.keep_alive = False  # a body on an interim 1xx answer: dropped, and so is the connection
            return
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        state = self._state
        if state == _BODY:
            if self._paused:
                # Reading is paused: whatever follows the answer waits unseen in the socket, so the
                # connection cannot be shown clean before it is parked.
                self.keep_alive = False
            self._message_done()
        elif state == _DONE:
            if not self._grace:
                raise _Beyond  # the rest of a HEAD answer's announced body
            self._grace = False

    # -- one exchange --------------------------------------------------------------------

    def _message_done(self) -> None:
        self._state = _DONE
        self._complete = True
        self._wake()

    def _until_close(self) -> bool:
        return (self._status != 0 and "Content-Length" not in self._headers
                and "chunked" not in self._headers.get("Transfer-Encoding", "").lower())

    def _ends_exactly(self, data: bytes) -> bool:
        """Whether the answer that ended inside ``data`` ended at its last byte.

        llhttp reports any byte after the end of an answer through a callback or an error,
        except CR and LF, which it skips between messages; so what is left to rule out is a run
        of CR/LF after the end. An answer that ends with its head or a chunked body ends with
        exactly CRLF CRLF (llhttp requires CRLF line ends, and no line of a head is empty), one
        framed by Content-Length ends with its last body bytes. Undecidable cases (a read that
        is all CR/LF) count as not exact: the connection is closed, never misused.
        """
        headers = self._headers
        if (self._no_body or self._status == 204 or self._status == 304 or "Transfer-Encoding" in headers
                or headers.get("Content-Length") == "0"):
            return _crlf_run(data) == 4
        last = self._chunks[-1] if self._chunks else b""
        if not last:
            return False
        run = _crlf_run(last)
        return run >= 0 and _crlf_run(data) == run

    def _stray(self) -> None:
        """Bytes that belong to no request: this connection is never used again."""
        self.keep_alive = False
        if self.pooled:
            self.pool.drop(self)
        self.abort()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        if self._complete or self._error is not None:  # the answer is whole, or already failed
            self.keep_alive = False
            self.abort()
            return
        self._error = error
        if self._head is not None and not self._head.done():
            self._head.set_exception(error)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        self.abort()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def start(self, head_only: bool) -> asyncio.Future[None]:
        """Reset the exchange state and return the future of the response head."""
        self.parser = httptools.HttpResponseParser(self)
        self._state = _HEAD
        self._head = self.loop.create_future()
        self._status = 0
        self._headers = CIMultiDict()
        self._buffered = 0
        self._complete = False
        self._error = None
        self._got_bytes = False
        self._no_body = head_only
        self._grace = False
        self.sending = False
        self.keep_alive = True
        return self._head

    async def write_body(self, chunks: AsyncIterable[bytes], chunked: bool) -> None:
        transport = self.transport
        if transport is None:
            return
        try:
            async for chunk in chunks:
                if self.closed:
                    return  # the upstream is gone (or answered and hung up): stop reading the client
                if not chunk:
                    continue
                if chunked:
                    transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
                else:
                    transport.write(chunk)
                if self._drained is not None:
                    await self._drained
            if chunked and not self.closed:
                transport.write(b"0\r\n\r\n")
        finally:
            self.sending = False

    def body_written(self, task: asyncio.Task[None]) -> None:
        """The request body's writer ended: a failure (the client's body broke off or was too
        large) ends the exchange."""
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            self._fail(error if isinstance(error, GatewayError) else UpstreamReset(str(error) or "body"))

    async def next_chunk(self, idle: float) -> bytes | None:
        """The next piece of the body, or None at its end."""
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._paused and self._buffered < HIGH_WATER // 4 and self.transport is not None:
                    self._paused = False
                    self.transport.resume_reading()
                return chunk
            if self._complete:
                return None
            if self._error is not None:
                raise self._error
            self._waiter = self.loop.create_future()
            timer = self.loop.call_later(idle, self._idle_expired)
            try:
                await self._waiter
            finally:
                timer.cancel()
                self._waiter = None

    def _idle_expired(self) -> None:
        self._fail(UpstreamReset("the upstream went silent mid-answer"))

    @property
    def reusable(self) -> bool:
        return self._state == _DONE and self.keep_alive and not self.closed and self._error is None


def _crlf_run(data: bytes) -> int:
    """How many CR/LF bytes end ``data``; -1 when its last _TAIL bytes are all CR/LF."""
    last = data[-1]
    if last != 10 and last != 13:
        return 0
    tail = data[-_TAIL:]
    kept = len(tail.rstrip(b"\r\n"))
    return len(tail) - kept if kept else -1


class Http1Response:
    """An upstream's answer: status and headers now, the body as it arrives (a BodyStream)."""

    __slots__ = ("_conn", "_done", "_idle", "_writer", "headers", "length", "status")

    def __init__(self, conn: _Connection, idle: float, writer: asyncio.Task[None] | None) -> None:
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


class _TargetPool:
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
        self.idle: list[_Connection] = []
        self.open: set[_Connection] = set()

    async def get(self, connect_timeout: float, deadline: float) -> _Connection:
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

    async def _connect(self, limit: float, deadline: float) -> _Connection:
        """Open a connection within ``limit`` seconds and before ``deadline`` (the route's
        budget covers connecting too): the first to expire decides 502 or 504."""
        loop = asyncio.get_running_loop()
        left = deadline - loop.time()
        budget_first = left < limit
        try:
            async with asyncio.timeout(min(limit, max(left, 0.0))):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self), self.host, self.port, ssl=self.ssl,
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

    def put(self, conn: _Connection) -> None:
        """Park a connection: unread body dropped, reading on, so stray bytes are seen at once."""
        conn._state = _IDLE
        if conn._chunks:
            conn._chunks.clear()
        conn._buffered = 0
        if conn._paused and conn.transport is not None:  # an answer released unread left it paused
            conn._paused = False
            conn.transport.resume_reading()
        conn.idle_since = time.monotonic()
        conn.pooled = True
        self.idle.append(conn)
        if len(self.idle) > MAX_IDLE:
            self._evict(self.idle.pop(0))

    def drop(self, conn: _Connection) -> None:
        """Take a parked connection out of the pool (it received bytes or was closed)."""
        if conn.pooled:
            conn.pooled = False
            with contextlib.suppress(ValueError):
                self.idle.remove(conn)

    @staticmethod
    def _evict(conn: _Connection) -> None:
        conn.pooled = False
        conn.abort()

    def sweep(self, now: float) -> None:
        """Close idle connections older than IDLE_KEEPALIVE (the oldest are first)."""
        while self.idle and (self.idle[0].closed or now - self.idle[0].idle_since > IDLE_KEEPALIVE):
            self._evict(self.idle.pop(0))

    def forget(self, conn: _Connection) -> None:
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
        self._pools: dict[str, _TargetPool] = {}
        self._ssl = ssl_context

    def _pool(self, target: str) -> _TargetPool:
        pool = self._pools.get(target)
        if pool is None:
            if target.startswith("https:") and self._ssl is None:
                self._ssl = ssl.create_default_context()  # loads the CA store: only when needed
            pool = self._pools[target] = _TargetPool(target, self._ssl)
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
            except _Stale:
                if attempt == 2 or not replayable:
                    raise UpstreamReset("the upstream closed a kept-alive connection") from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def _exchange(
        self, conn: _Connection, method: str, head: bytes, body: bytes | AsyncIterable[bytes] | None,
        chunked: bool, deadline: float, idle_timeout: float,
    ) -> Http1Response:
        loop = conn.loop
        arrived = conn.start(head_only=method == "HEAD")
        transport = conn.transport
        if transport is None or conn.closed:
            raise _Stale()
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


def _head_timeout(arrived: asyncio.Future[None], conn: _Connection) -> None:
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
