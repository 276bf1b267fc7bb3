"""Small demo services for ``make run`` and the README tour: users, orders, recommendations.

Not part of the gateway itself; they give the example routes.toml something to call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiohttp import web

log = logging.getLogger("gateway.demo")

USERS = {
    "1": {"id": 1, "name": "Ada Lovelace", "email": "ada@example.com", "address": {"city": "London", "zip": "W1"}},
    "2": {"id": 2, "name": "Alan Turing", "email": "alan@example.com", "address": {"city": "Wilmslow", "zip": "SK9"}},
    "3": {
        "id": 3, "name": "Grace Hopper", "email": "grace@example.com",
        "address": {"city": "New York", "zip": "10001"},
    },
}
ORDERS = {
    "1": [{"id": 101, "item": "notebook", "total": 12.5}, {"id": 102, "item": "pencils", "total": 3.2}],
    "2": [{"id": 201, "item": "teleprinter", "total": 990.0}],
    "3": [],
}
RECOMMENDATIONS = {"1": ["slide rule", "ink"], "2": ["chess set"], "3": ["compiler manual", "nanosecond wire"]}


async def _healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _echo(request: web.Request) -> web.Response:
    """Show what the service received: handy to see what the gateway forwards."""
    body = await request.read()
    return web.json_response({
        "method": request.method,
        "path": request.path_qs,
        "headers": dict(request.headers),
        "body_bytes": len(body),
    })


def users_app() -> web.Application:
    async def list_users(_: web.Request) -> web.Response:
        return web.json_response(list(USERS.values()))

    async def get_user(request: web.Request) -> web.Response:
        user = USERS.get(request.match_info["id"])
        if user is None:
            return web.json_response({"error": "no such user"}, status=404)
        return web.json_response(user)

    app = web.Application()
    app.router.add_get("/users", list_users)
    app.router.add_get("/users/{id}", get_user)
    app.router.add_route("*", "/echo/{tail:.*}", _echo)
    app.router.add_get("/healthz", _healthz)
    return app


def orders_app() -> web.Application:
    async def orders(request: web.Request) -> web.Response:
        return web.json_response(ORDERS.get(request.query.get("user", ""), []))

    app = web.Application()
    app.router.add_get("/orders", orders)
    app.router.add_get("/healthz", _healthz)
    return app


def recommendations_app() -> web.Application:
    async def recommend(request: web.Request) -> web.Response:
        return web.json_response({"items": RECOMMENDATIONS.get(request.match_info["user_id"], [])})

    app = web.Application()
    app.router.add_get("/recommendations/{user_id}", recommend)
    app.router.add_get("/healthz", _healthz)
    return app


async def serve_demo(host: str, port: int) -> list[web.AppRunner]:
    runners = []
    for offset, (name, factory) in enumerate(
        [("users", users_app), ("orders", orders_app), ("recommendations", recommendations_app)]
    ):
        runner = web.AppRunner(factory(), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port + offset).start()
        log.info("demo %s service on http://%s:%d", name, host, port + offset)
        runners.append(runner)
    return runners


def run_demo(host: str, port: int) -> None:
    async def main() -> None:
        runners = await serve_demo(host, port)
        try:
            await asyncio.Event().wait()
        finally:
            for runner in runners:
                await runner.cleanup()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
