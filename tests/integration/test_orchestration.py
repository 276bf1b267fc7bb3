"""Orchestrated routes against real, delayed and failing upstreams (docs/orchestration.md)."""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any

import aiohttp
from aiohttp import web

from gateway.orchestration import Scope, SessionCaller, orchestrator_from_steps
from tests.conftest import StartGateway, StartUpstream, Upstream, metric, scrape, url


class Service:
    """A JSON service whose answers, delays and statuses the test sets per path."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, Any, float]] = {}
        self.started: dict[str, float] = {}
        self.cancelled: list[str] = []

    def answer(self, path: str, body: Any, *, status: int = 200, delay: float = 0.0) -> None:
        self.routes[path] = (status, body, delay)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        key = request.path
        self.started[request.path_qs] = asyncio.get_running_loop().time()
        status, body, delay = self.routes.get(key, (404, {"error": "no such thing"}, 0.0))
        try:
            await asyncio.sleep(delay)
        except asyncio.CancelledError:
            self.cancelled.append(request.path_qs)
            raise
        if isinstance(body, str):
            return web.Response(status=status, text=body, content_type="text/html")
        return web.json_response(body, status=status)


async def _service(upstream: StartUpstream) -> tuple[Service, Upstream]:
    service = Service()
    return service, await upstream(service.handle)


def _route(upstreams: dict[str, str], steps: str, *, timeout: str = "2s", extra: str = "",
           path: str = "/combo/{id}") -> str:
    ups = "\n".join(f'[upstreams.{name}]\ntargets = ["{target}"]' for name, target in upstreams.items())
    return f"""
{ups}
[[routes]]
name = "combo"
path = "{path}"
timeout = "{timeout}"
{extra}
{steps}
"""


async def test_independent_steps_run_in_parallel(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    svc, up = await _service(upstream)
    svc.answer("/a", {"a": 1}, delay=0.3)
    svc.answer("/b", {"b": 2}, delay=0.3)
    gw = await gateway(_route({"s": up.url}, """
[[routes.steps]]
name = "a"
upstream = "s"
path = "/a"
[[routes.steps]]
name = "b"
upstream = "s"
path = "/b"
"""))
    started = time.monotonic()
    async with http.get(url(gw, "/combo/1")) as response:
        assert response.status == 200
        assert await response.json() == {"a": 1, "b": 2}
        assert response.headers["X-Gateway-Complete"] == "true"
    assert time.monotonic() - started < 0.55


async def test_dependent_step_waits_and_gets_the_url_encoded_value(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    svc, up = await _service(upstream)
    svc.answer("/users/7", {"id": "a b/c&d", "name": "Ada"}, delay=0.1)
    svc.answer("/orders", [{"id": 1}])
    gw = await gateway(_route({"s": up.url}, """
[[routes.steps]]
name = "user"
upstream = "s"
path = "/users/{path.id}"
into = "user"
[[routes.steps]]
name = "orders"
upstream = "s"
path = "/orders?user={user.id}"
into = "orders"
"""))
    async with http.get(url(gw, "/combo/7")) as response:
        assert response.status == 200
        assert await response.json() == {"user": {"id": "a b/c&d", "name": "Ada"}, "orders": [{"id": 1}]}
    orders_request = next(r for r in up.requests if r.path == "/orders")
    assert orders_request.raw_path == "/orders?user=a%20b%2Fc%26d"
    assert svc.started["/orders?user=a%20b%2Fc%26d"] >= svc.started["/users/7"] + 0.1


async def test_step_starts_when_its_own_dependency_finishes(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    svc, up = await _service(upstream)
    svc.answer("/fast", {"f": 1}, delay=0.1)
    svc.answer("/slow", {"s": 1}, delay=0.5)
    svc.answer("/after-fast", {"x": 1})
    gw = await gateway(_route({"s": up.url}, """
[[routes.steps]]
name = "fast"
upstream = "s"
path = "/fast"
[[routes.steps]]
name = "slow"
upstream = "s"
path = "/slow"
[[routes.steps]]
name = "next"
upstream = "s"
path = "/after-fast?f={fast.f}"
"""))
    async with http.get(url(gw, "/combo/1")) as response:
        assert response.status == 200
    fast_started = svc.started["/fast"]
    next_started = svc.started["/after-fast?f=1"]
    assert 0.1 <= next_started - fast_started < 0.3, "the step waited for an unrelated slow step"


async def test_merge_is_deterministic_whatever_the_arrival_order(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    svc, up = await _service(upstream)
    gw = await gateway(_route({"s": up.url}, """
[[routes.steps]]
name = "one"
upstream = "s"
path = "/one"
[[routes.steps]]
name = "two"
upstream = "s"
path = "/two"
[[routes.steps]]
name = "three"
upstream = "s"
path = "/three"
""", extra='merge = "deep"\narrays = "concat"'))
    bodies = set()
    rng = random.Random(7)
    for _ in range(20):
        svc.answer("/one", {"k": "one", "n": {"a": 1}, "list": [1]}, delay=rng.uniform(0, 0.03))
        svc.answer("/two", {"k": "two", "n": {"b": 2}, "list": [2]}, delay=rng.uniform(0, 0.03))
        svc.answer("/three", {"n": {"a": 3}, "list": [3]}, delay=rng.uniform(0, 0.03))
        async with http.get(url(gw, "/combo/1")) as response:
            bodies.add(await response.text())
    assert len(bodies) == 1
    assert json.loads(bodies.pop()) == {"k": "two", "n": {"a": 3, "b": 2}, "list": [1, 2, 3]}


async def test_optional_failure_uses_fallback_and_reports_it(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    svc, up = await _service(upstream)
    svc.answer("/user", {"id": 1})
    svc.answer("/recs", {"error": "down"}, status=503)
    gw = await gateway(_route({"s": up.url}, """
[[routes.steps]]
name = "user"
upstream = "s"
path = "/user"
into = "user"
[[routes.steps]]
name = "recs"
upstream = "s"
path = "/recs"
into = "recommendations"
optional = true
fallback = []
""", extra='errors_key = "_errors"'))
    async with http.get(url(gw, "/combo/1")) as response:
        assert response.status == 200
        assert response.headers["X-Gateway-Complete"] == "false"
        assert await response.json() == {
            "user": {"id": 1},
            "recommendations": [],
            "_errors": [{"step": "recs", "status": 503, "error": "the upstream answered 503"}],
        }
    text = await scrape(gw)
    assert metric(text, "gateway_steps_total", route="combo", step="recs", outcome="fallback") == 1
    assert metric(text, "gateway_steps_total", route="combo", step="user", outcome="ok") == 1


async def test_required_failure_is_a_problem_and_dependants_are_not_called(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    svc, up = await _service(upstream)
    svc.answer("/user", {"error": "boom"}, status=500)
    svc.answer("/orders", [])
    gw = await gateway(_route({"s": up.url}, """
[[routes.steps]]
name = "user"
upstream = "s"
path = "/user"
[[routes.steps]]
name = "orders"
upstream = "s"
path = "/orders?user={user.id}"
"""))
    async with http.get(url(gw, "/combo/1")) as response:
        assert response.status == 502
        assert response.headers["Content-Type"] == "application/problem+json"
        problem = await response.json()
    assert problem["status"] == 502
    assert problem["step"] == "user"
    assert problem["route"] == "combo"
    assert up.url.split("//")[1] not in json.dumps(problem)
    assert [r.path for r in up.requests] == ["/user"]
    text = await scrape(gw)
    assert metric(text, "gateway_steps_total", route="combo", step="user", outcome="failed") == 1
    assert metric(text, "gateway_steps_total", route="combo", step="orders", outcome="skipped") == 1


async def test_budget_spent_is_a_504_and_in_flight_calls_are_cancelled(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    svc, up = await _service(upstream)
    svc.answer("/quick", {"q": 1})
    svc.answer("/stuck", {"s": 1}, delay=5)
    gw = await gateway(_route({"s": up.url}, """
[[routes.steps]]
name = "quick"
upstream = "s"
path = "/quick"
[[routes.steps]]
name = "stuck"
upstream = "s"
path = "/stuck"
""", timeout="300ms"))
    started = time.monotonic()
    async with http.get(url(gw, "/combo/1")) as response:
        assert response.status == 504
        assert (await response.json())["step"] == "stuck"
    elapsed = time.monotonic() - started
    assert 0.28 <= elapsed < 0.6
    for _ in range(50):  # the upstream notices the disconnect shortly after
        if svc.cancelled:
            break
        await asyncio.sleep(0.02)
    assert svc.cancelled == ["/stuck"]


async def test_non_json_answer_fails_the_step(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    svc, up = await _service(upstream)
    svc.answer("/page", "<html>oops</html>")
    gw = await gateway(_route({"s": up.url}, """
[[routes.steps]]
name = "page"
upstream = "s"
path = "/page"
optional = true
""", extra='errors_key = "errors"'))
    async with http.get(url(gw, "/combo/1")) as response:
        assert response.status == 200
        body = await response.json()
    assert body["errors"][0]["step"] == "page"
    assert body["errors"][0]["status"] == 502
    assert "JSON" in body["errors"][0]["error"]


async def test_when_false_skips_the_call(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    svc, up = await _service(upstream)
    svc.answer("/user", {"id": 1, "premium": False})
    svc.answer("/perks", {"perks": ["x"]})
    gw = await gateway(_route({"s": up.url}, """
[[routes.steps]]
name = "user"
upstream = "s"
path = "/user"
[[routes.steps]]
name = "perks"
upstream = "s"
path = "/perks"
when = "{user.premium}"
"""))
    async with http.get(url(gw, "/combo/1")) as response:
        assert response.status == 200
        assert response.headers["X-Gateway-Complete"] == "true"
        assert await response.json() == {"id": 1, "premium": False}
    assert [r.path for r in up.requests] == ["/user"]
    text = await scrape(gw)
    assert metric(text, "gateway_steps_total", route="combo", step="perks", outcome="skipped") == 1


async def test_for_each_keeps_order_and_enforces_max_fanout(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    svc, up = await _service(upstream)
    svc.answer("/cart", {"items": [{"sku": "c"}, {"sku": "a"}, {"sku": "b"}]})
    for sku, delay in (("a", 0.05), ("b", 0.0), ("c", 0.1)):
        svc.answer(f"/products/{sku}", {"sku": sku, "price": ord(sku)}, delay=delay)
    steps = """
[[routes.steps]]
name = "cart"
upstream = "s"
path = "/cart"
pick = "{count: length(items)}"
[[routes.steps]]
name = "products"
upstream = "s"
path = "/products/{item.sku}"
for_each = "cart.items"
max_fanout = MAX
into = "products"
"""
    gw = await gateway(_route({"s": up.url}, steps.replace("MAX", "3")))
    async with http.get(url(gw, "/combo/1")) as response:
        assert response.status == 200
        body = await response.json()
    assert [p["sku"] for p in body["products"]] == ["c", "a", "b"]
    assert body["count"] == 3
    hits = len(up.requests)
    small = await gateway(_route({"s": up.url}, steps.replace("MAX", "2")))
    async with http.get(url(small, "/combo/1")) as response:
        assert response.status == 502
        assert "max_fanout" in (await response.json())["detail"]
    assert len(up.requests) == hits + 1  # only the cart: no product call was made


async def test_missing_client_value_is_a_400_and_nothing_is_called(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    _, up = await _service(upstream)
    gw = await gateway(_route({"s": up.url}, """
[[routes.steps]]
name = "search"
upstream = "s"
path = "/search?q={query.q}"
"""))
    async with http.get(url(gw, "/combo/1")) as response:
        assert response.status == 400
        assert "{query.q}" in (await response.json())["detail"]
    assert up.hits == 0


async def test_post_body_template_sends_typed_json(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    svc, up = await _service(upstream)
    svc.answer("/quote", {"price": 10})
    gw = await gateway(_route({"s": up.url}, """
[[routes.steps]]
name = "quote"
upstream = "s"
method = "POST"
path = "/quote"
body = { user = "{body.user.id}", qty = "{body.qty}", note = "for {path.id}", tags = ["{body.qty}"] }
"""))
    async with http.post(url(gw, "/combo/9"), json={"user": {"id": 42}, "qty": 3}) as response:
        assert response.status == 200
    sent = json.loads(up.bodies[0])
    assert sent == {"user": 42, "qty": 3, "note": "for 9", "tags": [3]}
    assert up.requests[0].headers["Content-Type"] == "application/json"


async def test_step_metrics_are_exact(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    svc, up = await _service(upstream)
    svc.answer("/a", {"a": 1})
    svc.answer("/b", {"b": 1}, status=500)
    gw = await gateway(_route({"s": up.url}, """
[[routes.steps]]
name = "a"
upstream = "s"
path = "/a"
[[routes.steps]]
name = "b"
upstream = "s"
path = "/b"
optional = true
"""))
    for _ in range(3):
        async with http.get(url(gw, "/combo/1")) as response:
            assert response.status == 200
    text = await scrape(gw)
    assert metric(text, "gateway_steps_total", route="combo", step="a", outcome="ok") == 3
    assert metric(text, "gateway_steps_total", route="combo", step="b", outcome="failed") == 3
    assert metric(text, "gateway_step_duration_seconds_count", route="combo", step="a") == 3
    assert metric(text, "gateway_upstream_requests_total", route="combo", upstream="s", code="500",
                  outcome="http_error") == 3
    assert metric(text, "gateway_requests_total", route="combo", code="200", source="upstream") == 3


async def test_engine_works_as_a_library_without_the_gateway(upstream: StartUpstream) -> None:
    svc, up = await _service(upstream)
    svc.answer("/users/5", {"id": 5, "name": "Grace", "secret": "x"})
    svc.answer("/orders", [{"id": 9}])
    orchestrator = orchestrator_from_steps(
        [
            {"name": "user", "upstream": "users", "path": "/users/{path.id}", "drop": ["secret"], "into": "user"},
            {"name": "orders", "upstream": "orders", "path": "/orders?user={user.id}", "into": "orders"},
        ],
        merge="deep",
    )
    async with aiohttp.ClientSession() as session:
        caller = SessionCaller(session, {"users": up.url, "orders": up.url})
        result = await orchestrator.run(Scope(params={"id": "5"}), caller, budget=2.0)
    assert result.status == 200
    assert result.complete
    assert result.body == {"user": {"id": 5, "name": "Grace"}, "orders": [{"id": 9}]}


async def test_a_step_timeout_covers_the_body_too(upstream: StartUpstream, gateway: StartGateway,
                                                  http: aiohttp.ClientSession) -> None:
    async def slow_body(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(b'{"slow":')
        await asyncio.sleep(2)
        await response.write(b"1}")
        return response

    up = await upstream(slow_body, record_bodies=False)
    gw = await gateway(_route({"s": up.url}, """
[[routes.steps]]
name = "slow"
upstream = "s"
path = "/slow"
timeout = "300ms"
fallback = { slow = 0 }
"""))
    started = time.monotonic()
    async with http.get(url(gw, "/combo/1")) as response:
        assert response.status == 200
        assert response.headers["X-Gateway-Complete"] == "false"
        assert await response.json() == {"slow": 0}
    assert time.monotonic() - started < 1.0
