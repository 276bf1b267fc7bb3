"""Fixtures for the rate-limit tests: a gateway with one rate-limited route, the session's
private redis-server, emptied per test, and one a test may kill, restart or replace with a
socket that never answers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import StartGateway, StartUpstream
from tests.support import RedisServer, url
from tests.support.redis_server import running_redis
from tests.support.resilience import Limited, StartLimited, limited_route


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """The session's private Redis (started once, stopped at the end)."""
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The shared Redis, emptied for this test."""
    if not redis_server.answers():
        redis_server.start()
    assert redis_server.command("FLUSHALL").startswith(b"+OK")
    return redis_server.url


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own, to kill, restart or blackhole."""
    with running_redis(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def limited(upstream: StartUpstream, gateway: StartGateway) -> StartLimited:
    """Start an upstream and a gateway with one rate-limited route in front of it:
    ``await limited(options, redis=URL, settings=GATEWAY_TOML, name=ROUTE)``."""

    async def start(options: str, *, redis: str = "", settings: str = "", name: str = "limited") -> Limited:
        up = await upstream()
        settings = "\n".join([f'redis_url = "{redis}"' if redis else "", settings])
        gw = await gateway(limited_route(up.url, options, gateway=settings, name=name))
        return Limited(up, gw, url(gw, f"/{name}/x"))

    return start
