"""The orchestration baseline: the gather-and-merge handler a typical developer writes with aiohttp.

One shared ClientSession; ``GET /dashboard/{id}`` calls the users and orders services
concurrently with ``asyncio.gather``, decodes both with ``await r.json()`` and answers
``{"user": ..., "orders": ...}`` with ``web.json_response``. A failed call (status >= 400)
raises, so aiohttp answers 500. No timeout budget, no request id, no metrics, no shaping.
It runs on uvloop, like the gateway (gateway/launch.py), so the comparison is about
the orchestration code.

    python bench/naive_orchestrator.py --listen 127.0.0.1:8000 --upstream http://127.0.0.1:8001
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

if str(Path(__file__).resolve().parent.parent) not in sys.path:  # `python bench/naive_orchestrator.py` too
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import naive_proxy


def make_app(upstream: str) -> web.Application:
    app = naive_proxy.session_app()

    async def get_json(session: aiohttp.ClientSession, url: str) -> Any:
        async with session.get(url) as response:
            response.raise_for_status()
            return await response.json()

    async def dashboard(request: web.Request) -> web.Response:
        user_id = request.match_info["id"]
        session = request.app[naive_proxy.SESSION]
        user, orders = await asyncio.gather(
            get_json(session, f"{upstream}/users/{user_id}"),
            get_json(session, f"{upstream}/orders?user={user_id}"),
        )
        return web.json_response({"user": user, "orders": orders})

    app.router.add_get("/dashboard/{id}", dashboard)
    return app


if __name__ == "__main__":
    naive_proxy.main(make_app, __doc__, "http://HOST:PORT (serves /users/ID and /orders)")
