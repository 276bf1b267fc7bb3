"""The baseline: the reverse proxy a typical developer writes with aiohttp in 30 lines.

One ClientSession, the whole request body read, method/path/headers forwarded, the whole
upstream answer read and returned as a ``web.Response``. No streaming, no hop-by-hop
handling beyond what aiohttp needs to not break, no metrics, no plugins. It runs on uvloop,
like the gateway (gateway/launch.py), so the comparison is about the proxy code.

    python bench/naive_proxy.py --listen 127.0.0.1:8000 --upstream http://127.0.0.1:8001
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable

import aiohttp
import uvloop
from aiohttp import web

# Headers aiohttp sets itself on the way out (forwarding them would break the framing).
DROP = {"Host", "Content-Length", "Transfer-Encoding", "Connection", "Keep-Alive"}
SESSION = web.AppKey("session", aiohttp.ClientSession)


def session_app() -> web.Application:
    """An application with one ``ClientSession`` (``app[SESSION]``) for its whole life."""
    app = web.Application()

    async def open_session(app: web.Application) -> None:
        app[SESSION] = aiohttp.ClientSession()

    async def close_session(app: web.Application) -> None:
        await app[SESSION].close()

    app.on_startup.append(open_session)
    app.on_cleanup.append(close_session)
    return app


def make_app(upstream: str) -> web.Application:
    app = session_app()

    async def proxy(request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.title() not in DROP}
        session = request.app[SESSION]
        async with session.request(
            request.method, upstream + request.path_qs, headers=headers, data=body or None, allow_redirects=False
        ) as upstream_response:
            payload = await upstream_response.read()
            out = {k: v for k, v in upstream_response.headers.items() if k.title() not in DROP}
            return web.Response(status=upstream_response.status, headers=out, body=payload)

    app.router.add_route("*", "/{tail:.*}", proxy)
    return app


async def serve(app: web.Application, host: str, port: int) -> None:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, backlog=1024).start()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main(app_for: Callable[[str], web.Application] = make_app, description: str | None = __doc__,
         upstream_help: str = "http://HOST:PORT") -> None:
    """``--listen HOST:PORT --upstream URL``: serve ``app_for(upstream)`` on uvloop until killed."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", required=True, help="HOST:PORT")
    parser.add_argument("--upstream", required=True, help=upstream_help)
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(app_for(args.upstream.rstrip("/")), host, int(port)))


if __name__ == "__main__":
    main()
