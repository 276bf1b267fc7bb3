"""The gateway's own request and response types, the only ones plugins see.

aiohttp's types stay at the edge (gateway.edge) and in the upstream client
(gateway.upstream.sender); everything between works on these small objects, so a plugin can
be tested without a server (see gateway.testing).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Protocol
from urllib.parse import parse_qsl

from aiohttp import StreamReader
from multidict import CIMultiDict, MultiDict

# The errors of reading a client's body (413 and 408), kept importable from here.
from gateway.errors import BodyError as BodyError
from gateway.errors import BodyStalled as BodyStalled
from gateway.errors import BodyTooLarge as BodyTooLarge


class Body:
    """A client's request body: streamed from the network at most once, or held as bytes.

    ``chunks()`` streams without buffering; ``read()`` buffers the whole body (up to
    ``limit``) so it can be read again, e.g. by a retry or an orchestration template.
    """

    __slots__ = ("_reader", "_data", "length", "limit", "received", "failure", "_before_read", "idle")

    def __init__(
        self,
        reader: StreamReader | None,
        length: int | None,
        limit: int,
        before_read: Callable[[], None] | None = None,
        idle: float = 60.0,
    ) -> None:
        self._reader = reader
        self._data: bytes | None = None
        self.length = length
        self.limit = limit
        self.received = 0
        self.failure: BodyError | None = None  # why reading stopped early, kept for whoever sent it on
        self._before_read = before_read
        self.idle = idle  # longest silence while the client sends its body

    @classmethod
    def of(cls, data: bytes) -> Body:
        """A body held in memory (tests, plugins that replace the body)."""
        body = cls(None, len(data), max(len(data), 1))
        body._data = data
        return body

    @property
    def empty(self) -> bool:
        """True when there is no body at all (no Content-Length and no chunks)."""
        if self._data is not None:
            return not self._data
        return self._reader is None

    @property
    def buffered(self) -> bool:
        """True when the whole body is in memory and can be sent again."""
        return self._data is not None or self._reader is None

    def _start(self) -> StreamReader | None:
        if self._before_read is not None:
            self._before_read()
            self._before_read = None
        reader, self._reader = self._reader, None
        return reader

    async def chunks(self) -> AsyncIterator[bytes]:
        """Yield the body in chunks as it arrives, enforcing the size limit."""
        if self._data is not None:
            if self._data:
                yield self._data
            return
        reader = self._start()
        if reader is None:
            return
        limit = self.limit
        while True:
            try:
                chunk = await asyncio.wait_for(reader.readany(), self.idle)
            except TimeoutError:
                self.failure = BodyStalled(f"the request body stalled for more than {self.idle:g}s")
                raise self.failure from None
            if not chunk:
                return
            self.received += len(chunk)
            if self.received > limit:
                self.failure = BodyTooLarge(f"request body exceeds {limit} bytes")
                raise self.failure
            yield chunk

    async def read(self) -> bytes:
        """Return the whole body, buffering it once; raises BodyTooLarge past the limit."""
        if self._data is None:
            parts = [chunk async for chunk in self.chunks()]
            self._data = b"".join(parts)
        return self._data

    async def json(self) -> Any:
        """The body decoded as JSON (raises ValueError when it is not)."""
        return json.loads(await self.read())


EMPTY_BODY = Body(None, 0, 1)


class Request:
    """One request as the plugin chain sees it. Plugins may change any field."""

    __slots__ = (
        "method",
        "path",
        "query_string",
        "headers",
        "body",
        "params",
        "client_ip",
        "peer",
        "scheme",
        "host",
        "version",
        "route",
        "consumer",
        "subject",
        "request_id",
        "request_id_header",
        "state",
        "_below",
    )

    def __init__(
        self,
        method: str,
        path: str,
        query_string: str = "",
        headers: CIMultiDict[str] | None = None,
        body: Body = EMPTY_BODY,
        *,
        params: Mapping[str, str] | None = None,
        client_ip: str = "127.0.0.1",
        peer: str = "127.0.0.1",
        scheme: str = "http",
        host: str = "localhost",
        version: tuple[int, int] = (1, 1),
        route: str = "",
        request_id: str = "",
    ) -> None:
        self.method = method
        self.path = path
        self.query_string = query_string
        self.headers: CIMultiDict[str] = headers if headers is not None else CIMultiDict()
        self.body = body
        self.params: Mapping[str, str] = params if params is not None else {}
        self.client_ip = client_ip
        self.peer = peer
        self.scheme = scheme
        self.host = host
        self.version = version
        self.route = route
        self.consumer: str | None = None  # a configured consumer's name, set by an auth plugin
        # An authenticated identity that names no configured consumer (e.g. an unmapped JWT
        # ``sub``): sent upstream as X-Consumer-Subject, never as X-Consumer.
        self.subject: str | None = None
        self.request_id = request_id
        self.request_id_header = "X-Request-ID"
        self.state: dict[str, Any] = {}
        self._below = 0.0

    @property
    def query(self) -> MultiDict[str]:
        """The query string parsed (a fresh copy on each access; change ``query_string`` to edit)."""
        return MultiDict(parse_qsl(self.query_string, keep_blank_values=True))

    @property
    def path_qs(self) -> str:
        return f"{self.path}?{self.query_string}" if self.query_string else self.path


class BodyStream(Protocol):
    """A response body that arrives over time (an upstream's answer)."""

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    def release(self) -> None:
        """Give the connection back (or close it) once the body is no longer wanted."""


class Upgrade(Protocol):
    """A connection that switches protocol once the edge accepts the client's upgrade."""

    async def accept(self, raw: Any) -> Any:
        """Finish the handshake on the client connection and relay until closed."""

    def release(self) -> None:
        """The upgrade will not happen (e.g. a plugin replaced the response)."""


class Response:
    """One response as the plugin chain sees it: bytes in ``body`` or a ``stream``."""

    __slots__ = ("status", "headers", "body", "stream", "source", "upgrade")

    def __init__(
        self,
        status: int = 200,
        headers: CIMultiDict[str] | None = None,
        body: bytes = b"",
        *,
        stream: BodyStream | None = None,
        source: str = "gateway",
    ) -> None:
        self.status = status
        self.headers: CIMultiDict[str] = headers if headers is not None else CIMultiDict()
        self.body = body
        self.stream = stream
        self.source = source
        # A protocol switch (WebSocket) the edge completes on the client connection.
        self.upgrade: Upgrade | None = None

    @classmethod
    def json(cls, data: Any, status: int = 200) -> Response:
        """A JSON response made by the gateway (or a plugin)."""
        headers = CIMultiDict({"Content-Type": "application/json"})
        return cls(status, headers, json.dumps(data).encode())

    def release(self) -> None:
        """Drop a streamed body that will not be sent (e.g. a response being replaced)."""
        if self.stream is not None:
            self.stream.release()
            self.stream = None
        if self.upgrade is not None:
            self.upgrade.release()
            self.upgrade = None
