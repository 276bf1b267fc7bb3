"""Orchestrated routes against real, delayed and failing upstreams (docs/orchestration.md)."""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from gateway.orchestration import Scope, SessionCaller, orchestrator_from_steps
from gateway.process import GatewayProcess
from tests.conftest import StartGateway, StartUpstream, Upstream
from tests.support import metric, scrape, url
from tests.support.auth import Answer, call, route, step


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


def combo_route(target: str, *steps: str, **fields: object) -> str:
    """Upstream ``svc`` at ``target`` and the orchestrated route ``combo`` at ``/combo/{id}``
    (a 2 s budget unless ``fields`` set another ``timeout``)."""
    fields = {"timeout": "2s", **fields}
    return f'[upstreams.svc]\ntargets = ["{target}"]\n' + route("combo", "/combo/{id}", *steps, upstream=None, **fields)


@dataclass
class Combo:
    """A ``Service`` behind its upstream, and gateways with a ``combo`` route in front of it."""

    svc: Service
    up: Upstream
    start_gateway: StartGateway
    http: aiohttp.ClientSession

    async def start(self, *steps: str, **fields: object) -> GatewayProcess:
        return await self.start_gateway(combo_route(self.up.url, *steps, **fields))

    async def get(self, gw: GatewayProcess, path: str = "/combo/1", **request: Any) -> Answer:
        return await call(self.http, gw, path, **request)


@pytest.fixture
async def combo(upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession) -> Combo:
    service = Service()
    return Combo(service, await upstream(service.handle), gateway, http)


async def step_outcomes(gw: GatewayProcess) -> dict[tuple[str, str], float]:
    """Every non-zero gateway_steps_total sample of the ``combo`` route, by (step, outcome)."""
    counts = {}
    for family in text_string_to_metric_families(await scrape(gw)):
        for sample in family.samples:
            if sample.name == "gateway_steps_total" and sample.labels["route"] == "combo" and sample.value:
                counts[sample.labels["step"], sample.labels["outcome"]] = sample.value
    return counts


async def test_independent_steps_run_in_parallel(combo: Combo) -> None:
    combo.svc.answer("/a", {"a": 1}, delay=0.3)
    combo.svc.answer("/b", {"b": 2}, delay=0.3)
    gw = await combo.start(step("a", "/a"), step("b", "/b"))
    started = time.monotonic()
    status, headers, body = await combo.get(gw)
    assert (status, body, headers["X-Gateway-Complete"]) == (200, {"a": 1, "b": 2}, "true")
    assert time.monotonic() - started < 0.55


async def test_dependent_step_waits_and_gets_the_url_encoded_value(combo: Combo) -> None:
    svc = combo.svc
    svc.answer("/users/7", {"id": "a b/c&d", "name": "Ada"}, delay=0.1)
    svc.answer("/orders", [{"id": 1}])
    gw = await combo.start(step("user", "/users/{path.id}", into="user"),
                           step("orders", "/orders?user={user.id}", into="orders"))
    status, _, body = await combo.get(gw, "/combo/7")
    assert (status, body) == (200, {"user": {"id": "a b/c&d", "name": "Ada"}, "orders": [{"id": 1}]})
    orders_request = next(r for r in combo.up.requests if r.path == "/orders")
    assert orders_request.raw_path == "/orders?user=a%20b%2Fc%26d"
    assert svc.started["/orders?user=a%20b%2Fc%26d"] >= svc.started["/users/7"] + 0.1


async def test_step_starts_when_its_own_dependency_finishes(combo: Combo) -> None:
    svc = combo.svc
    svc.answer("/fast", {"f": 1}, delay=0.1)
    svc.answer("/slow", {"s": 1}, delay=0.5)
    svc.answer("/after-fast", {"x": 1})
    gw = await combo.start(step("fast", "/fast"), step("slow", "/slow"), step("next", "/after-fast?f={fast.f}"))
    assert (await combo.get(gw)).status == 200
    fast_started = svc.started["/fast"]
    next_started = svc.started["/after-fast?f=1"]
    assert 0.1 <= next_started - fast_started < 0.3, "the step waited for an unrelated slow step"


async def test_merge_is_deterministic_whatever_the_arrival_order(combo: Combo) -> None:
    gw = await combo.start(step("one", "/one"), step("two", "/two"), step("three", "/three"),
                           merge="deep", arrays="concat")
    bodies = set()
    rng = random.Random(7)
    for _ in range(20):
        combo.svc.answer("/one", {"k": "one", "n": {"a": 1}, "list": [1]}, delay=rng.uniform(0, 0.03))
        combo.svc.answer("/two", {"k": "two", "n": {"b": 2}, "list": [2]}, delay=rng.uniform(0, 0.03))
        combo.svc.answer("/three", {"n": {"a": 3}, "list": [3]}, delay=rng.uniform(0, 0.03))
        async with combo.http.get(url(gw, "/combo/1")) as response:
            bodies.add(await response.text())
    assert len(bodies) == 1
    assert json.loads(bodies.pop()) == {"k": "two", "n": {"a": 3, "b": 2}, "list": [1, 2, 3]}


async def test_optional_failure_uses_fallback_and_reports_it(combo: Combo) -> None:
    combo.svc.answer("/user", {"id": 1})
    combo.svc.answer("/recs", {"error": "down"}, status=503)
    gw = await combo.start(step("user", "/user", into="user"),
                           step("recs", "/recs", into="recommendations", optional=True, fallback=[]),
                           errors_key="_errors")
    status, headers, body = await combo.get(gw)
    assert (status, headers["X-Gateway-Complete"]) == (200, "false")
    assert body == {
        "user": {"id": 1},
        "recommendations": [],
        "_errors": [{"step": "recs", "status": 503, "error": "the upstream answered 503"}],
    }
    assert await step_outcomes(gw) == {("recs", "fallback"): 1, ("user", "ok"): 1}


async def test_required_failure_is_a_problem_and_dependants_are_not_called(combo: Combo) -> None:
    combo.svc.answer("/user", {"error": "boom"}, status=500)
    combo.svc.answer("/orders", [])
    gw = await combo.start(step("user", "/user"), step("orders", "/orders?user={user.id}"))
    status, headers, problem = await combo.get(gw)
    assert (status, headers["Content-Type"]) == (502, "application/problem+json")
    assert (problem["status"], problem["step"], problem["route"]) == (502, "user", "combo")
    assert combo.up.url.split("//")[1] not in json.dumps(problem)
    assert [r.path for r in combo.up.requests] == ["/user"]
    assert await step_outcomes(gw) == {("user", "failed"): 1, ("orders", "skipped"): 1}


async def test_budget_spent_is_a_504_and_in_flight_calls_are_cancelled(combo: Combo) -> None:
    combo.svc.answer("/quick", {"q": 1})
    combo.svc.answer("/stuck", {"s": 1}, delay=5)
    gw = await combo.start(step("quick", "/quick"), step("stuck", "/stuck"), timeout="300ms")
    started = time.monotonic()
    status, _, problem = await combo.get(gw)
    assert (status, problem["step"]) == (504, "stuck")
    elapsed = time.monotonic() - started
    assert 0.28 <= elapsed < 0.6
    for _ in range(50):  # the upstream notices the disconnect shortly after
        if combo.svc.cancelled:
            break
        await asyncio.sleep(0.02)
    assert combo.svc.cancelled == ["/stuck"]


async def test_non_json_answer_fails_the_step(combo: Combo) -> None:
    combo.svc.answer("/page", "<html>oops</html>")
    gw = await combo.start(step("page", "/page", optional=True), errors_key="errors")
    status, _, body = await combo.get(gw)
    assert status == 200
    assert body["errors"][0]["step"] == "page"
    assert body["errors"][0]["status"] == 502
    assert "JSON" in body["errors"][0]["error"]


async def test_when_false_skips_the_call(combo: Combo) -> None:
    combo.svc.answer("/user", {"id": 1, "premium": False})
    combo.svc.answer("/perks", {"perks": ["x"]})
    gw = await combo.start(step("user", "/user"), step("perks", "/perks", when="{user.premium}"))
    status, headers, body = await combo.get(gw)
    assert (status, body, headers["X-Gateway-Complete"]) == (200, {"id": 1, "premium": False}, "true")
    assert [r.path for r in combo.up.requests] == ["/user"]
    assert await step_outcomes(gw) == {("user", "ok"): 1, ("perks", "skipped"): 1}


async def test_for_each_keeps_order_and_enforces_max_fanout(combo: Combo) -> None:
    combo.svc.answer("/cart", {"items": [{"sku": "c"}, {"sku": "a"}, {"sku": "b"}]})
    for sku, delay in (("a", 0.05), ("b", 0.0), ("c", 0.1)):
        combo.svc.answer(f"/products/{sku}", {"sku": sku, "price": ord(sku)}, delay=delay)

    def steps(max_fanout: int) -> list[str]:
        return [step("cart", "/cart", pick="{count: length(items)}"),
                step("products", "/products/{item.sku}", for_each="cart.items", max_fanout=max_fanout,
                     into="products")]

    status, _, body = await combo.get(await combo.start(*steps(3)))
    assert status == 200
    assert [p["sku"] for p in body["products"]] == ["c", "a", "b"]
    assert body["count"] == 3
    hits = len(combo.up.requests)
    status, _, problem = await combo.get(await combo.start(*steps(2)))
    assert status == 502
    assert "max_fanout" in problem["detail"]
    assert len(combo.up.requests) == hits + 1  # only the cart: no product call was made


async def test_missing_client_value_is_a_400_and_nothing_is_called(combo: Combo) -> None:
    gw = await combo.start(step("search", "/search?q={query.q}"))
    status, _, problem = await combo.get(gw)
    assert status == 400
    assert "{query.q}" in problem["detail"]
    assert combo.up.hits == 0


async def test_post_body_template_sends_typed_json(combo: Combo) -> None:
    combo.svc.answer("/quote", {"price": 10})
    template = {"user": "{body.user.id}", "qty": "{body.qty}", "note": "for {path.id}", "tags": ["{body.qty}"]}
    gw = await combo.start(step("quote", "/quote", method="POST", body=template))
    answer = await combo.get(gw, "/combo/9", method="POST", json_body={"user": {"id": 42}, "qty": 3})
    assert answer.status == 200
    sent = json.loads(combo.up.bodies[0])
    assert sent == {"user": 42, "qty": 3, "note": "for 9", "tags": [3]}
    assert combo.up.requests[0].headers["Content-Type"] == "application/json"


async def test_step_metrics_are_exact(combo: Combo) -> None:
    combo.svc.answer("/a", {"a": 1})
    combo.svc.answer("/b", {"b": 1}, status=500)
    gw = await combo.start(step("a", "/a"), step("b", "/b", optional=True))
    for _ in range(3):
        assert (await combo.get(gw)).status == 200
    assert await step_outcomes(gw) == {("a", "ok"): 3, ("b", "failed"): 3}
    text = await scrape(gw)
    assert metric(text, "gateway_step_duration_seconds_count", route="combo", step="a") == 3
    assert metric(text, "gateway_upstream_requests_total", route="combo", upstream="svc", code="500",
                  outcome="http_error") == 3
    assert metric(text, "gateway_requests_total", route="combo", code="200", source="upstream") == 3


async def test_engine_works_as_a_library_without_the_gateway(combo: Combo) -> None:
    combo.svc.answer("/users/5", {"id": 5, "name": "Grace", "secret": "x"})
    combo.svc.answer("/orders", [{"id": 9}])
    orchestrator = orchestrator_from_steps(
        [
            {"name": "user", "upstream": "users", "path": "/users/{path.id}", "drop": ["secret"], "into": "user"},
            {"name": "orders", "upstream": "orders", "path": "/orders?user={user.id}", "into": "orders"},
        ],
        merge="deep",
    )
    async with aiohttp.ClientSession() as session:
        caller = SessionCaller(session, {"users": combo.up.url, "orders": combo.up.url})
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
    gw = await gateway(combo_route(up.url, step("slow", "/slow", timeout="300ms", fallback={"slow": 0})))
    started = time.monotonic()
    status, headers, body = await call(http, gw, "/combo/1")
    assert (status, body, headers["X-Gateway-Complete"]) == (200, {"slow": 0}, "false")
    assert time.monotonic() - started < 1.0
