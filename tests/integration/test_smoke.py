from __future__ import annotations

import aiohttp

from tests.conftest import StartGateway, StartUpstream
from tests.support import metric, scrape
from tests.support.edge import fetch_json, proxied


async def test_proxy_passes_request_and_counts_it(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    _, gw = await proxied(upstream, gateway, rewrite="/v1/{rest}")
    assert await fetch_json(http, gw, "/svc/a/b?x=1") == {"path": "/v1/a/b?x=1", "method": "GET"}
    text = await scrape(gw)
    assert metric(text, "gateway_requests_total", route="svc", code="200", source="upstream") == 1
    assert metric(text, "gateway_upstream_requests_total", route="svc", upstream="svc", outcome="ok") == 1
