"""One keep-alive connection to an upstream (gateway.upstream.http1 pools them): an asyncio
protocol feeding the llhttp parser (httptools), tracking where the current response ends so
that a connection is reused only after an answer framed exactly, and dropped the moment a
parked connection receives anything (docs/architecture.md)."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterable
from typing import TYPE_CHECKING, Any

import httptools
from multidict import CIMultiDict

from gateway.errors import GatewayError, UpstreamError, UpstreamReset

if TYPE_CHECKING:
    from gateway.upstream.http1 import TargetPool

HIGH_WATER = 256 * 1024  # buffered body bytes before the upstream socket is paused


class Stale(Exception):
    """A reused connection turned out closed before any byte of the answer came back."""


class _Beyond(Exception):
    """Raised from a parser callback to stop at bytes that lie beyond the framed answer."""


# Where a connection is in its exchange. IDLE: no request in flight (fresh, or parked in the
# pool): any byte received is stray. HEAD: waiting for the final response head (interim 1xx
# answers are skipped). BODY: the body is arriving. DONE: the answer ended at its framing;
# any byte beyond it is stray.
_IDLE, _HEAD, _BODY, _DONE = 0, 1, 2, 3
_TAIL = 64  # bytes of a read looked at to find where a run of CR/LF at its end begins


class Connection(asyncio.Protocol):
    """One TCP (or TLS) connection to a target, carrying one exchange at a time.

    A connection goes back to the pool only after an answer framed exactly: the final
    response ended where its Content-Length or chunked framing (or, for HEAD, 1xx, 204 and
    304, its head) says, and not one byte came after it. Bytes beyond the answer, in the same
    read or later, a body on an answer that cannot have one, and any byte (or the end of the
    stream) while the connection is parked close the connection; the current client keeps its
    own, exactly framed answer.
    """

    def __init__(self, pool: TargetPool) -> None:
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
        self._chunks: deque[bytes] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._drained: asyncio.Future[None] | None = None
        self._paused = False
        self._new_exchange(False)

    def _new_exchange(self, head_only: bool) -> None:
        """The state of one exchange as it is before the response's first byte."""
        self._status = 0
        self._headers: CIMultiDict[str] = CIMultiDict()
        self._buffered = 0
        self._complete = False
        self._error: BaseException | None = None
        self._got_bytes = False
        self._no_body = head_only
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
            self._fail(Stale() if self.reused and not self._got_bytes else
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
        self._new_exchange(head_only)
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

    def park(self) -> None:
        """Idle in a pool: unread body dropped, reading on, so stray bytes are seen at once."""
        self._state = _IDLE
        if self._chunks:
            self._chunks.clear()
        self._buffered = 0
        if self._paused and self.transport is not None:  # an answer released unread left it paused
            self._paused = False
            self.transport.resume_reading()
        self.idle_since = time.monotonic()
        self.pooled = True


def _crlf_run(data: bytes) -> int:
    """How many CR/LF bytes end ``data``; -1 when its last _TAIL bytes are all CR/LF."""
    last = data[-1]
    if last != 10 and last != 13:
        return 0
    tail = data[-_TAIL:]
    kept = len(tail.rstrip(b"\r\n"))
    return len(tail) - kept if kept else -1
