"""What the rate_limit plugin costs per request, in-process: local store and Redis store.

    .venv/bin/python bench/ratelimit_cost.py [--requests 20000] [--redis-url redis://...]

Each request goes through ``RateLimit.handle`` with a do-nothing rest of the chain, on
uvloop like the gateway; the same loop without the plugin is subtracted. Without
``--redis-url`` a private redis-server (no persistence) is started on a free port when the
binary exists. Reported: µs per request (wall clock, one request at a time, so for Redis it
includes the loopback round trip) and, for Redis, also with 32 requests in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import statistics
import subprocess
import tempfile
import time

from gateway.config_model import GatewaySettings
from gateway.http import Request, Response
from gateway.launch import event_loop_runner
from gateway.testing import build_plugin, make_request
from plugins.rate_limit import RateLimit

OK = Response(200)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _next(_: Request) -> Response:
    return OK


async def _per_request(plugin: RateLimit | None, requests: list[Request], inflight: int = 1) -> float:
    """Seconds per request: the plugin (or nothing) in front of a do-nothing terminal."""
    queue = iter(requests)

    async def worker() -> None:
        for request in queue:
            if plugin is None:
                await _next(request)
            else:
                await plugin.handle(request, _next)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(inflight)))
    return (time.perf_counter() - start) / len(requests)


def _requests(count: int, keys: int) -> list[Request]:
    return [make_request(client_ip=f"10.0.{i % keys // 256}.{i % 256}", route="bench") for i in range(count)]


async def _measure(plugin: RateLimit | None, count: int, keys: int, inflight: int = 1, rounds: int = 5) -> float:
    return statistics.median([await _per_request(plugin, _requests(count, keys), inflight) for _ in range(rounds)])


async def bench(count: int, redis_url: str | None) -> dict[str, float]:
    # A limit that is never reached, so every request takes the full "allowed" path.
    options = {"limit": 1_000_000, "window": "1h", "key": "ip"}
    results: dict[str, float] = {}
    base = await _measure(None, count, 1000)
    local = build_plugin(RateLimit, route="bench", store="local", **options)  # type: ignore[arg-type]
    results["local"] = (await _measure(local, count, 1000) - base) * 1e6
    if redis_url:
        remote = build_plugin(RateLimit, route="bench", settings=GatewaySettings(redis_url=redis_url),
                              store="redis", **options)  # type: ignore[arg-type]
        await remote.startup()
        try:
            n = max(count // 10, 1000)
            results["redis"] = (await _measure(remote, n, 1000) - base) * 1e6
            results["redis, 32 in flight"] = (await _measure(remote, n, 1000, inflight=32) - base) * 1e6
            errors = remote.context.metrics.registry.get_sample_value(
                "gateway_ratelimit_decisions_total", {"route": "bench", "decision": "store_error_allowed"})
            results["redis store errors"] = errors or 0.0
        finally:
            await remote.shutdown()
            await remote.context.redis.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--redis-url", default="")
    args = parser.parse_args()
    server: subprocess.Popen[bytes] | None = None
    url = args.redis_url
    binary = shutil.which("redis-server")
    if not url and binary:
        port = free_port()
        server = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                   "--appendonly", "no", "--dir", tempfile.mkdtemp()], stdout=subprocess.DEVNULL)
        time.sleep(0.3)
        url = f"redis://127.0.0.1:{port}/0"
    try:
        with event_loop_runner() as runner:
            results = runner.run(bench(args.requests, url or None))
    finally:
        if server is not None:
            server.terminate()
            server.wait(5)
    for name, value in results.items():
        unit = "" if name.endswith("errors") else " µs/request"
        print(f"{name:>22}: {value:8.1f}{unit}")
    if not url:
        print("  (no redis-server found: Redis store not measured)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
