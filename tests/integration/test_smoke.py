from __future__ import annotations

import aiohttp

from tests.conftest import StartGateway, StartUpstream, metric, scrape, url


async def test_proxy_passes_request_and_counts_it(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    up = await upstream()
    gw = await gateway(f"""
        [upstreams.svc]
        targets = ["{up.url}"]
        [[routes]]
        name = "svc"
        path = "/svc/{{rest:.*}}"
        upstream = "svc"
        rewrite = "/v1/{{rest}}"
    """)
    async with http.get(url(gw, "/svc/a/b?x=1")) as response:
        assert response.status == 200
        assert await response.json() == {"path": "/v1/a/b?x=1", "method": "GET"}
    text = await scrape(gw)
    assert metric(text, "gateway_requests_total", route="svc", code="200", source="upstream") == 1
    assert metric(text, "gateway_upstream_requests_total", route="svc", upstream="svc", outcome="ok") == 1
