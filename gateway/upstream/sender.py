"""The innermost hop of every upstream stack (``Sender``: one exchange over the process's
lean HTTP/1.1 pools, gateway.upstream.http1), the aiohttp session kept for WebSockets, health
probes and plugins, and the one place client errors become the gateway's own errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import aiohttp

from gateway.config_model import UpstreamTimeouts
from gateway.errors import GatewayError, UpstreamConnectError, UpstreamError, UpstreamReset, UpstreamTimeout
from gateway.http import Body, Response
from gateway.upstream.request import UpstreamRequest

if TYPE_CHECKING:
    from gateway.clients import Clients


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


class Sender:
    """The innermost hop of every upstream stack: one HTTP exchange with one target."""

    def __init__(self, clients: Clients, timeouts: UpstreamTimeouts, max_msg_size: int) -> None:
        self._clients = clients
        self._connect_timeout = timeouts.connect
        self._idle_timeout = timeouts.idle
        self._response_timeout = timeouts.response
        self._max_msg_size = max_msg_size
        self._loop: asyncio.AbstractEventLoop | None = None

    async def __call__(self, request: UpstreamRequest) -> Response:
        loop = self._loop
        if loop is None:  # asyncio.get_running_loop() costs a getpid() syscall: look it up once
            loop = self._loop = asyncio.get_running_loop()
        deadline = min(request.deadline, loop.time() + self._response_timeout)
        body = request.body
        data: bytes | AsyncIterator[bytes] | None
        if body is None or isinstance(body, bytes):
            data = body
        elif body.buffered:
            data = await body.read() or None
        else:
            data = body.chunks()
        if isinstance(data, bytes):
            request.headers["Content-Length"] = str(len(data))
        try:
            response = await self._clients.http1.request(
                request.target, request.method, request.path_qs, request.headers, data,
                deadline=deadline, connect_timeout=self._connect_timeout, idle_timeout=self._idle_timeout,
            )
        except BaseException as exc:
            raise map_client_error(exc, body) from None
        # Headers as received: the proxy terminal drops the hop-by-hop ones before forwarding;
        # orchestration steps only read the answer.
        return Response(response.status, response.headers, stream=response, source="upstream")


def map_client_error(exc: BaseException, body: Body | bytes | None) -> BaseException:
    """Turn what a client raised into the gateway's own error (or re-raise it). When the
    client's upload broke off the exchange, that is the error (413/408, no upstream outcome)."""
    if isinstance(body, Body) and body.failure is not None:
        return body.failure
    if isinstance(exc, GatewayError):
        return exc
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
