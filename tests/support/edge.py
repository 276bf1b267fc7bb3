"""The proxy edge as the tests drive it: requests through a running gateway, upstream handlers
that stream, the lean upstream client against raw servers, and orchestrated routes."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.process import GatewayProcess
from gateway.upstream.http1 import Http1Client, Http1Response
from tests.support.config import proxy_config
from tests.support.raw import RawHandler, RawServer, raw_server
from tests.support.scraping import url

if TYPE_CHECKING:
    from tests.conftest import StartGateway, StartUpstream, Upstream

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Fields = list[tuple[str, str]] | dict[str, str]


async def proxied(
    upstream: StartUpstream, gateway: StartGateway, handler: Handler | None = None, *, record_bodies: bool = True,
    rewrite: str | None = "/{rest}", settings: str = "", route: str = "", after: str = "",
) -> tuple[Upstream, GatewayProcess]:
    """An upstream (``handler``, else the one that answers with the path it saw) behind a gateway
    with one route ``/svc/...`` to it, rewritten to ``/...`` unless ``rewrite`` says otherwise.
    ``settings``, ``route`` and ``after`` are TOML for the ``[gateway]`` table, the route and the end."""
    up = await upstream(handler, record_bodies=record_bodies)
    config = proxy_config(up.url, rewrite=rewrite, upstream="", gateway=settings, route=route, after=after)
    return up, await gateway(config)


async def fetch(
    http: aiohttp.ClientSession, gw: GatewayProcess, path: str, *, method: str = "GET", status: int = 200,
    **options: Any,
) -> tuple[CIMultiDictProxy[str], bytes]:
    """Send one request through the gateway and check the answer's status; its headers and body.
    ``options`` go to aiohttp as they are (``headers``, ``data``, ``allow_redirects``)."""
    async with http.request(method, url(gw, path), **options) as response:
        body = await response.read()
        assert response.status == status, body
        return response.headers, body


async def fetch_json(http: aiohttp.ClientSession, gw: GatewayProcess, path: str, **options: Any) -> Any:
    """``fetch`` for a JSON answer, its Content-Type checked too; the decoded document."""
    headers, body = await fetch(http, gw, path, **options)
    assert headers["Content-Type"].split(";")[0].strip() == "application/json", headers
    return json.loads(body)


def streaming(payload: bytes, piece: int) -> Handler:
    """An upstream handler that answers ``payload`` without a Content-Length (so chunked),
    ``piece`` bytes a write."""

    async def handler(request: web.Request) -> web.StreamResponse:
        out = web.StreamResponse()
        await out.prepare(request)
        for i in range(0, len(payload), piece):
            await out.write(payload[i:i + piece])
        await out.write_eof()
        return out

    return handler


# --- the lean upstream client against a raw server --------------------------------------------


@contextlib.asynccontextmanager
async def lean_client(handler: RawHandler) -> AsyncIterator[tuple[Http1Client, RawServer]]:
    """A fresh lean client and a raw server for it to talk to; the client is closed last."""
    client = Http1Client()
    try:
        async with raw_server(handler) as server:
            yield client, server
    finally:
        await client.close()


async def send(
    client: Http1Client, target: str, method: str = "GET", path: str = "/", headers: Fields | None = None,
    body: bytes | AsyncIterable[bytes] | None = None, *, budget: float = 2.0, idle: float = 2.0,
) -> Http1Response:
    """One request through the lean client (``budget`` seconds in all, ``idle`` between reads);
    the response once its head is in, its body still to read and the response to release."""
    loop = asyncio.get_running_loop()
    return await client.request(target, method, path, CIMultiDict(headers or {}), body,
                                deadline=loop.time() + budget, connect_timeout=1.0, idle_timeout=idle)


async def exchange(
    client: Http1Client, target: str, method: str = "GET", path: str = "/", headers: Fields | None = None,
    body: bytes | None = None, *, budget: float = 2.0, idle: float = 2.0,
) -> tuple[int, CIMultiDict[str], bytes]:
    """One whole exchange through the lean client: status, headers and body, the response released."""
    response = await send(client, target, method, path, headers, body, budget=budget, idle=idle)
    try:
        return response.status, response.headers, await response.read()
    finally:
        response.release()


# --- orchestrated routes ----------------------------------------------------------------------


def step_table(name: str, path: str, *, upstream: str = "svc", **options: str) -> str:
    """A ``[[routes.steps]]`` table calling ``path`` on ``upstream``; option values are TOML
    literals (``method='"POST"'``, ``optional="true"``)."""
    head = [f'[[routes.steps]]\nname = "{name}"\nupstream = "{upstream}"\npath = "{path}"']
    return "\n".join(head + [f"{key} = {value}" for key, value in options.items()])


def orchestration_config(target: str, *steps: str, path: str = "/combo/{id}", gateway: str = "") -> str:
    """One upstream ``svc`` at ``target`` and one orchestrated route ``combo`` at ``path`` (GET and
    POST) made of ``steps`` (``step_table`` text), its failed optional steps listed under ``errors``.
    ``gateway`` is extra TOML for the ``[gateway]`` table."""
    route = ["[[routes]]", 'name = "combo"', f'path = "{path}"', 'methods = ["GET", "POST"]', 'errors_key = "errors"']
    tables = ["[gateway]", gateway, "[upstreams.svc]", f'targets = ["{target}"]', *route, *steps]
    return "\n".join(table for table in tables if table) + "\n"
