"""Redis fixtures for the rate-limit tests: the session's private redis-server, emptied per
test, and one a test may kill, restart or replace with a socket that never answers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import Handler, Plugin, PluginConfig, Request, Response
from tests.support import RedisServer, redis_binary


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """The session's private Redis (started once, stopped at the end)."""
    server = RedisServer(redis_binary(), tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


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
    server = RedisServer(redis_binary(), tmp_path / "redis")
    server.start()
    yield server
    server.stop()


# --- shared by the rate-limit tests -------------------------------------------------------


class ConsumerFromHeader(Plugin[PluginConfig]):
    """Test stand-in for an auth plugin: ``X-Test-User`` names the consumer."""

    name = "consumer_from_header"

    async def handle(self, request: Request, call_next: Handler) -> Response:
        request.consumer = request.headers.get("X-Test-User") or None
        return await call_next(request)


SET_CONSUMER = "tests.integration.ratelimit.conftest:ConsumerFromHeader"


def limited_route(upstream_url: str, plugin: str, *, gateway: str = "", name: str = "limited") -> str:
    """routes.toml text: one route ``name`` at /NAME/... with a consumer stand-in and ``plugin``
    (the rate_limit options, one per line)."""
    return f"""
        [gateway]
        {gateway}
        [upstreams.svc]
        targets = ["{upstream_url}"]
        [[routes]]
        name = "{name}"
        path = "/{name}/{{rest:.*}}"
        upstream = "svc"
          [[routes.plugins]]
          use = "{SET_CONSUMER}"
          [[routes.plugins]]
          use = "rate_limit"
          {plugin}
    """
