"""WebSocket proxying for routes with ``websocket = true``: the upstream handshake first
(so a refusal becomes a normal error response), then the client's upgrade, then messages
pumped both ways until either side closes."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import WSMsgType, web
from multidict import CIMultiDict

from gateway.errors import GatewayError, UpstreamError
from gateway.http import Response
from gateway.upstream.request import UpstreamRequest
from gateway.upstream.sender import map_client_error

if TYPE_CHECKING:
    from gateway.clients import Clients


def wants_websocket(headers: CIMultiDict[str]) -> bool:
    return headers.get("Upgrade", "").lower() == "websocket"


class WebSocketTunnel:
    """An open upstream WebSocket, waiting for the client side to be accepted."""

    def __init__(self, upstream: aiohttp.ClientWebSocketResponse, max_msg_size: int) -> None:
        self.upstream = upstream
        self.max_msg_size = max_msg_size
        self._closing: asyncio.Future[bool] | None = None

    async def accept(self, raw: Any) -> web.StreamResponse:
        """Complete the client's upgrade on ``raw`` (an aiohttp request) and relay messages."""
        protocols = (self.upstream.protocol,) if self.upstream.protocol else ()
        client = _QuietWebSocket(protocols=protocols, max_msg_size=self.max_msg_size)
        await client.prepare(raw)
        upstream = self.upstream
        relays = [asyncio.ensure_future(_relay(client, upstream)), asyncio.ensure_future(_relay(upstream, client))]
        try:
            await asyncio.wait(relays, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in relays:
                task.cancel()
            await asyncio.gather(*relays, return_exceptions=True)
            code = client.close_code or upstream.close_code or aiohttp.WSCloseCode.OK
            with contextlib.suppress(Exception):
                await upstream.close(code=code)
            with contextlib.suppress(Exception):
                await client.close(code=upstream.close_code or code)
        return client

    def release(self) -> None:
        """The client side never upgraded: drop the upstream connection."""
        self._closing = asyncio.ensure_future(self.upstream.close())


async def _relay(source: Any, sink: Any) -> None:
    async for message in source:
        if message.type == WSMsgType.TEXT:
            await sink.send_str(message.data)
        elif message.type == WSMsgType.BINARY:
            await sink.send_bytes(message.data)
        elif message.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
            return


class WebSocketSender:
    """The innermost hop of a websocket route's upgrade stack (placed by the stack builder):
    the handshake with the chosen target, under the upstream's response timeout."""

    def __init__(self, clients: Clients, response_timeout: float, max_msg_size: int) -> None:
        self._clients = clients
        self._response_timeout = response_timeout
        self._max_msg_size = max_msg_size

    async def __call__(self, request: UpstreamRequest) -> Response:
        loop = asyncio.get_running_loop()
        request.deadline = min(request.deadline, loop.time() + self._response_timeout)
        return await open_websocket(self._clients.session, request, self._max_msg_size)


async def open_websocket(session: aiohttp.ClientSession, request: UpstreamRequest, max_msg_size: int) -> Response:
    """The upstream half of a WebSocket proxy: handshake with the chosen target."""
    headers = CIMultiDict(
        (k, v) for k, v in request.headers.items() if not k.lower().startswith("sec-websocket-")
    )
    offered = request.headers.get("Sec-WebSocket-Protocol", "")
    protocols = [p.strip() for p in offered.split(",") if p.strip()]
    url = request.target.replace("http", "ws", 1) + request.path_qs
    try:
        async with asyncio.timeout_at(request.deadline):
            upstream = await session.ws_connect(
                url, headers=headers, protocols=protocols, max_msg_size=max_msg_size, autoping=True,
            )
    except aiohttp.WSServerHandshakeError as exc:
        raise UpstreamError(f"the upstream refused the WebSocket upgrade (status {exc.status})") from None
    except GatewayError:
        raise
    except BaseException as exc:
        raise map_client_error(exc, None) from None
    response = Response(101, source="upstream")
    response.upgrade = WebSocketTunnel(upstream, max_msg_size)
    return response


class _QuietWebSocket(web.WebSocketResponse):
    """The client side of a proxied WebSocket, with no Server header of the gateway's own."""

    async def _prepare_headers(self) -> None:
        await super()._prepare_headers()
        self._headers.popall("Server", None)
