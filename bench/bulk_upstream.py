"""An upstream for streaming benchmarks: ``POST /sink`` reads and discards the body and answers
how many bytes arrived; ``GET /source?bytes=N`` streams N zero bytes; ``GET /ready`` answers 200.

    python bench/bulk_upstream.py --port 9100
"""

from __future__ import annotations

import argparse

from aiohttp import web

CHUNK = bytes(256 * 1024)


async def sink(request: web.Request) -> web.Response:
    received = 0
    async for chunk in request.content.iter_any():
        received += len(chunk)
    return web.json_response({"received": received})


async def source(request: web.Request) -> web.StreamResponse:
    remaining = int(request.query.get("bytes", "0"))
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.content_length = remaining
    await response.prepare(request)
    while remaining > 0:
        piece = CHUNK if remaining >= len(CHUNK) else CHUNK[:remaining]
        await response.write(piece)
        remaining -= len(piece)
    await response.write_eof()
    return response


async def ready(_: web.Request) -> web.Response:
    return web.Response(text="ok")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = web.Application(client_max_size=1 << 62)
    app.router.add_post("/sink", sink)
    app.router.add_get("/source", source)
    app.router.add_get("/ready", ready)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
