"""Fixtures for the rate-limit tests: a gateway with one rate-limited route (the Redis
fixtures are in tests/conftest.py)."""

from __future__ import annotations

import pytest

from tests.conftest import StartGateway, StartUpstream
from tests.support import url
from tests.support.resilience import Limited, StartLimited, limited_route


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
