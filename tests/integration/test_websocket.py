"""WebSocket upgrades are proxied on routes with ``websocket = true``."""

from __future__ import annotations

import aiohttp
from aiohttp import WSMsgType, web

from tests.conftest import StartGateway, StartUpstream
from tests.support import free_port, proxy_config, url


async def _echo_ws(request: web.Request) -> web.StreamResponse:
    ws = web.WebSocketResponse(protocols=("chat.v1",))
    await ws.prepare(request)
    async for message in ws:
        if message.type == WSMsgType.TEXT:
            await ws.send_str(f"echo:{message.data}:{request.headers.get('X-Request-ID') is not None}")
        elif message.type == WSMsgType.BINARY:
            await ws.send_bytes(message.data[::-1])
    return ws


def _config(upstream_url: str, websocket: bool) -> str:
    return proxy_config(upstream_url, name="ws", path="/ws", upstream="", route=f"websocket = {str(websocket).lower()}")


async def test_websocket_messages_flow_both_ways(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    up = await upstream(_echo_ws, record_bodies=False)
    gw = await gateway(_config(up.url, True))
    async with http.ws_connect(url(gw, "/ws"), protocols=("chat.v1",)) as ws:
        assert ws.protocol == "chat.v1"
        await ws.send_str("hello")
        assert await ws.receive_str() == "echo:hello:True"
        await ws.send_bytes(b"\x01\x02\x03")
        assert await ws.receive_bytes() == b"\x03\x02\x01"
    assert up.hits == 1


async def test_websocket_upgrade_is_not_proxied_unless_enabled(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    up = await upstream(_echo_ws, record_bodies=False)
    gw = await gateway(_config(up.url, False))
    try:
        async with http.ws_connect(url(gw, "/ws")):
            raise AssertionError("the upgrade should have been refused")
    except aiohttp.WSServerHandshakeError as exc:
        assert exc.status != 101


async def test_websocket_upstream_down_is_a_502_problem(
    gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    gw = await gateway(_config(f"http://127.0.0.1:{free_port()}", True))
    async with http.get(url(gw, "/ws"), headers={"Upgrade": "websocket", "Connection": "Upgrade",
                                                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                                                "Sec-WebSocket-Version": "13"}) as response:
        assert response.status == 502
        assert response.headers["Content-Type"] == "application/problem+json"
