"""The pooled HTTP client to upstreams: one aiohttp ClientSession per process, set up so
that requests and answers pass through unchanged, and the one place client errors are
mapped to the gateway's own errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from yarl import URL

from gateway.errors import GatewayError, GatewayTimeout, PayloadTooLarge, UpstreamError
from gateway.forwarding import strip_hop_by_hop
from gateway.http import CHUNK, Body, BodyTooLarge, Response


class UpstreamConnectError(UpstreamError):
    """The upstream could not be reached (refused, unreachable, DNS); nothing was sent."""

    outcome = "connect_error"


class UpstreamReset(UpstreamError):
    """The connection broke after the request was (maybe partly) sent."""

    outcome = "reset"


class UpstreamTimeout(GatewayTimeout):
    """No response headers within the time allowed."""

    outcome = "timeout"


def outcome_of(error: BaseException) -> str:
    """The outcome label for a failed upstream call."""
    return str(getattr(error, "outcome", "reset"))


def new_session() -> aiohttp.ClientSession:
    """The gateway's one client session: no injected headers, no cookies, no decompression."""
    connector = aiohttp.TCPConnector(
        limit=0, limit_per_host=0, ttl_dns_cache=10, keepalive_timeout=15, enable_cleanup_closed=False
    )
    return aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=None),
        raise_for_status=False,
    )


class UpstreamRequest:
    """One call to an upstream as the upstream stack sees it."""

    __slots__ = (
        "method", "path_qs", "headers", "body", "route", "upstream", "target", "attempt", "deadline", "websocket",
        "tried",
    )

    def __init__(
        self,
        method: str,
        path_qs: str,
        headers: Any,
        body: Body | bytes | None,
        *,
        route: str,
        upstream: str,
        deadline: float,
    ) -> None:
        self.method = method
        self.path_qs = path_qs
        self.headers = headers
        self.body = body
        self.route = route
        self.upstream = upstream
        self.target = ""
        self.attempt = 1
        self.deadline = deadline  # loop time by which response headers must have arrived
        self.websocket = False  # ask the upstream to switch to WebSocket
        self.tried: set[str] | None = None  # targets earlier attempts went to (set by the retry layer)


class UpstreamBody:
    """An upstream's response body, streamed to whoever reads it, released once."""

    __slots__ = ("_response", "length")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.length = response.content_length

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_chunked(CHUNK):
                yield chunk
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise UpstreamReset(f"upstream body broke off: {type(exc).__name__}") from None

    async def read(self) -> bytes:
        try:
            return await self._response.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise UpstreamReset(f"upstream body broke off: {type(exc).__name__}") from None

    def release(self) -> None:
        self._response.release()


class Sender:
    """The innermost hop of every upstream stack: one HTTP exchange with one target."""

    def __init__(
        self, session_source: Any, timeouts: aiohttp.ClientTimeout, response_timeout: float, max_msg_size: int
    ) -> None:
        self._sessions = session_source  # gateway.plugin.ClientHolder
        self._timeouts = timeouts
        self._response_timeout = response_timeout
        self._max_msg_size = max_msg_size

    async def __call__(self, request: UpstreamRequest) -> Response:
        loop = asyncio.get_running_loop()
        deadline = min(request.deadline, loop.time() + self._response_timeout)
        if request.websocket:
            from gateway.websocket import open_websocket

            request.deadline = deadline
            return await open_websocket(self._sessions.session, request, self._max_msg_size)
        body = request.body
        data: Any
        if body is None or isinstance(body, bytes):
            data = body
        elif body.buffered:
            data = await body.read() or None
        else:
            data = body.chunks()
        if isinstance(data, bytes):
            request.headers["Content-Length"] = str(len(data))
        url = URL(request.target + request.path_qs, encoded=True)
        try:
            async with asyncio.timeout_at(deadline):
                response = await self._sessions.session.request(
                    request.method, url, headers=request.headers, data=data,
                    allow_redirects=False, timeout=self._timeouts,
                )
        except GatewayError:
            raise
        except BaseException as exc:
            raise map_client_error(exc, body) from None
        headers = strip_hop_by_hop(response.headers, request=False)
        stream = UpstreamBody(response)
        return Response(response.status, headers, stream=stream, source="upstream")


def map_client_error(exc: BaseException, body: Body | bytes | None) -> BaseException:
    """Turn what the aiohttp client raised into the gateway's own error (or re-raise)."""
    if isinstance(body, Body) and body.exceeded:
        return PayloadTooLarge(f"request body exceeds {body.limit} bytes")
    if isinstance(exc, BodyTooLarge):
        return PayloadTooLarge(str(exc))
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            return UpstreamConnectError("timed out connecting to the upstream")
        return UpstreamTimeout("the upstream did not answer in time")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamConnectError("could not connect to the upstream")
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return UpstreamReset("the upstream closed the connection without answering")
    if isinstance(exc, aiohttp.ClientResponseError):
        return UpstreamError("the upstream sent an invalid HTTP response")
    if isinstance(exc, (aiohttp.ClientError, OSError)):
        return UpstreamReset(f"the upstream connection failed ({type(exc).__name__})")
    return exc
