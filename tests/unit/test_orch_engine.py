"""The Orchestrator (docs/orchestration.md) with a fake StepCaller: concurrency, dependencies, merge order,
failures, the route budget, ``when``, ``for_each`` and observers."""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import ServiceUnavailable, UpstreamError, UpstreamTimeout
from gateway.orchestration import (
    Orchestrator,
    PlanError,
    Result,
    Scope,
    StepCall,
    StepReply,
    orchestrator_from_steps,
)


@dataclass
class Answer:
    """What the fake upstream does for one call."""

    body: Any = None  # JSON-encoded, unless bytes
    status: int = 200
    content_type: str | None = "application/json"
    delay: float = 0.0
    raises: BaseException | None = None


Table = Mapping[str, Answer | Callable[[StepCall], Answer]]


class FakeUpstreams:
    """A StepCaller answering from a table keyed by ``path_qs`` (first) or step name."""

    def __init__(self, table: Table) -> None:
        self.table = table
        self.calls: list[StepCall] = []
        self.events: list[tuple[str, str]] = []  # ("start" | "end" | "cancelled", step)
        self.started: dict[str, float] = {}  # path_qs → loop time
        self.ended: dict[str, float] = {}
        self.cancelled: list[str] = []

    def steps_called(self) -> list[str]:
        return [call.step for call in self.calls]

    def ends(self) -> list[str]:
        return [step for kind, step in self.events if kind == "end"]

    async def __call__(self, call: StepCall) -> StepReply:
        loop = asyncio.get_running_loop()
        self.calls.append(call)
        self.events.append(("start", call.step))
        self.started[call.path_qs] = loop.time()
        entry = self.table[call.path_qs] if call.path_qs in self.table else self.table[call.step]
        answer = entry(call) if callable(entry) else entry
        try:
            await asyncio.sleep(answer.delay)
        except asyncio.CancelledError:
            self.cancelled.append(call.path_qs)
            self.events.append(("cancelled", call.step))
            raise
        self.ended[call.path_qs] = loop.time()
        self.events.append(("end", call.step))
        if answer.raises is not None:
            raise answer.raises
        body = answer.body if isinstance(answer.body, bytes) else json.dumps(answer.body).encode()
        return StepReply(answer.status, body, answer.content_type)


class Recorder:
    """A StepObserver."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, float]] = []

    def step_finished(self, step: str, outcome: str, seconds: float) -> None:
        self.seen.append((step, outcome, seconds))

    def outcomes(self) -> dict[str, str]:
        return {step: outcome for step, outcome, _ in self.seen}


def orchestrator(*steps: Mapping[str, Any], **options: Any) -> Orchestrator:
    return orchestrator_from_steps([{"upstream": "svc", **s} for s in steps], **options)


async def run(orch: Orchestrator, fake: FakeUpstreams, scope: Scope | None = None, budget: float = 2.0,
              headers: Mapping[str, str] | None = None) -> Result:
    return await orch.run(scope or Scope(), fake, budget=budget, headers=headers)


# --- concurrency and dependencies ----------------------------------------------------------


async def test_independent_steps_run_concurrently() -> None:
    fake = FakeUpstreams({"a": Answer({"a": 1}, delay=0.05), "b": Answer({"b": 2}, delay=0.05)})
    orch = orchestrator({"name": "a", "path": "/a"}, {"name": "b", "path": "/b"})
    loop = asyncio.get_running_loop()
    began = loop.time()
    result = await run(orch, fake)
    elapsed = loop.time() - began
    assert [kind for kind, _ in fake.events] == ["start", "start", "end", "end"]
    assert elapsed < 0.095  # not 0.1: they overlapped
    assert result.status == 200
    assert result.body == {"a": 1, "b": 2}
    assert result.complete is True
    assert result.errors == []


async def test_dependent_step_gets_url_encoded_value() -> None:
    fake = FakeUpstreams({
        "user": Answer({"name": "a b", "tenant": "x/y&z?", "id": 7}, delay=0.01),
        "orders": Answer({"orders": []}),
    })
    orch = orchestrator(
        {"name": "user", "path": "/users/{path.id}", "into": "user"},
        {"name": "orders", "path": "/orders?user={user.name}&t={user.tenant}&id={user.id}",
         "headers": {"X-User": "{user.name}"}},
    )
    result = await run(orch, fake, Scope(params={"id": "1 2"}))
    assert result.status == 200
    paths = [call.path_qs for call in fake.calls]
    assert paths == ["/users/1%202", "/orders?user=a%20b&t=x%2Fy%26z%3F&id=7"]
    assert fake.calls[1].headers["X-User"] == "a b"  # headers are not URL-encoded
    assert fake.events.index(("end", "user")) < fake.events.index(("start", "orders"))


async def test_dependent_step_starts_as_soon_as_its_dependency_finishes() -> None:
    fake = FakeUpstreams({
        "fast": Answer({"id": "f"}, delay=0.02),
        "slow": Answer({"slow": True}, delay=0.1),
        "/c/f": Answer({"c": True}, delay=0.01),
    })
    orch = orchestrator(
        {"name": "fast", "path": "/fast", "into": "fast"},
        {"name": "slow", "path": "/slow", "into": "slow"},
        {"name": "c", "path": "/c/{fast.id}", "into": "c"},
    )
    result = await run(orch, fake)
    assert result.status == 200
    assert fake.started["/c/f"] - fake.ended["/fast"] < 0.03
    assert fake.started["/c/f"] < fake.ended["/slow"]
    assert fake.events.index(("end", "c")) < fake.events.index(("end", "slow"))


async def test_after_orders_steps_without_data() -> None:
    fake = FakeUpstreams({"a": Answer({"a": 1}, delay=0.03), "b": Answer({"b": 1})})
    orch = orchestrator({"name": "a", "path": "/a"}, {"name": "b", "path": "/b", "after": ["a"]})
    result = await run(orch, fake)
    assert result.status == 200
    assert fake.steps_called() == ["a", "b"]
    assert fake.events.index(("end", "a")) < fake.events.index(("start", "b"))


async def test_templates_read_the_answer_before_shaping() -> None:
    fake = FakeUpstreams({"user": Answer({"id": 7, "name": "Ada", "secret": "s"}), "orders": Answer([1, 2])})
    orch = orchestrator(
        {"name": "user", "path": "/u", "select": ["name"], "into": "user"},
        {"name": "orders", "path": "/o?u={user.id}", "into": "orders"},
    )
    result = await run(orch, fake)
    assert result.status == 200
    assert fake.calls[1].path_qs == "/o?u=7"
    assert result.body == {"user": {"name": "Ada"}, "orders": [1, 2]}


async def test_step_call_carries_method_headers_body_and_deadline() -> None:
    fake = FakeUpstreams({"u": Answer({"id": 7, "active": True}), "p": Answer({})})
    orch = orchestrator(
        {"name": "u", "path": "/u"},
        {"name": "p", "method": "POST", "upstream": "writer", "path": "/p",
         "headers": {"X-Tenant": "{header.X-Tenant}"},
         "body": {"user": "{u.id}", "active": "{u.active}", "label": "user {u.id}", "n": 1}},
    )
    loop = asyncio.get_running_loop()
    began = loop.time()
    result = await run(orch, fake, Scope(headers={"X-Tenant": "acme"}), budget=1.0,
                       headers={"X-Request-Id": "rid-1"})
    assert result.status == 200
    call = fake.calls[1]
    assert (call.step, call.upstream, call.method) == ("p", "writer", "POST")
    assert call.headers["X-Request-Id"] == "rid-1"
    assert call.headers["X-Tenant"] == "acme"
    assert call.headers["Content-Type"] == "application/json"
    assert call.body is not None
    assert json.loads(call.body) == {"user": 7, "active": True, "label": "user 7", "n": 1}
    assert fake.calls[0].body is None
    assert began < call.deadline <= began + 1.0 + 0.01


async def test_step_timeout_is_capped_by_the_route_budget() -> None:
    fake = FakeUpstreams({"short": Answer({}), "long": Answer({})})
    orch = orchestrator({"name": "short", "path": "/s", "timeout": "50ms"}, {"name": "long", "path": "/l",
                                                                              "timeout": "10s"})
    loop = asyncio.get_running_loop()
    began = loop.time()
    await run(orch, fake, budget=0.5)
    deadlines = {call.step: call.deadline - began for call in fake.calls}
    assert deadlines["short"] == pytest.approx(0.05, abs=0.02)
    assert deadlines["long"] == pytest.approx(0.5, abs=0.02)


# --- deterministic merge -------------------------------------------------------------------


async def test_merge_is_deterministic_whatever_the_arrival_order() -> None:
    rng = random.Random(7)

    def answer(name: str) -> Callable[[StepCall], Answer]:
        def make(_: StepCall) -> Answer:
            return Answer({"winner": name, name: True, "nested": {"from": name, name: 1}, "list": [name]},
                          delay=rng.uniform(0.001, 0.02))
        return make

    names = ["a", "b", "c", "d"]
    orch = orchestrator(*({"name": n, "path": f"/{n}"} for n in names), merge="deep", arrays="concat")
    bodies: set[str] = set()
    arrivals: set[tuple[str, ...]] = set()
    for _ in range(20):
        fake = FakeUpstreams({n: answer(n) for n in names})
        result = await run(orch, fake)
        assert result.status == 200
        bodies.add(json.dumps(result.body))
        arrivals.add(tuple(fake.ends()))
    assert len(arrivals) > 1  # answers really arrived in different orders
    assert len(bodies) == 1
    body = json.loads(bodies.pop())
    assert body["winner"] == "d"  # the last declared step wins the conflict
    assert body["nested"] == {"from": "d", "a": 1, "b": 1, "c": 1, "d": 1}
    assert body["list"] == ["a", "b", "c", "d"]


async def test_later_declared_step_wins_even_when_it_answers_first() -> None:
    fake = FakeUpstreams({"first": Answer({"k": "first"}, delay=0.04), "second": Answer({"k": "second"})})
    orch = orchestrator({"name": "first", "path": "/1"}, {"name": "second", "path": "/2"})
    result = await run(orch, fake)
    assert fake.ends() == ["second", "first"]
    assert result.body == {"k": "second"}


async def test_route_status_is_used() -> None:
    fake = FakeUpstreams({"a": Answer({"a": 1})})
    result = await run(orchestrator({"name": "a", "path": "/a"}, status=201), fake)
    assert result.status == 201


# --- optional and required failures --------------------------------------------------------


async def test_optional_failure_merges_fallback() -> None:
    fake = FakeUpstreams({
        "user": Answer({"id": 1}),
        "recs": Answer({"error": "boom"}, status=500),
        "ads": Answer(raises=UpstreamError("reset")),
    })
    orch = orchestrator(
        {"name": "user", "path": "/u", "into": "user"},
        {"name": "recs", "path": "/r", "fallback": {"items": []}, "into": "recs"},
        {"name": "ads", "path": "/ads", "optional": True, "into": "ads"},
        errors_key="_errors",
    )
    result = await run(orch, fake)
    assert result.status == 200
    assert result.complete is False
    assert result.failed_step is None
    expected_errors = [{"step": "recs", "status": 500}, {"step": "ads", "status": 502}]
    assert [{k: e[k] for k in ("step", "status")} for e in result.errors] == expected_errors
    assert all(isinstance(e["error"], str) and e["error"] for e in result.errors)
    assert result.body == {"user": {"id": 1}, "recs": {"items": []}, "_errors": result.errors}
    assert result.steps["recs"].outcome == "fallback"
    assert result.steps["ads"].outcome == "failed"
    assert result.steps["user"].outcome == "ok"


async def test_errors_key_absent_when_nothing_failed() -> None:
    fake = FakeUpstreams({"a": Answer({"a": 1})})
    result = await run(orchestrator({"name": "a", "path": "/a", "optional": True}, errors_key="_errors"), fake)
    assert result.body == {"a": 1}
    assert result.complete is True
    assert result.errors == []


async def test_errors_listed_but_not_in_body_without_errors_key() -> None:
    fake = FakeUpstreams({"a": Answer({"a": 1}), "b": Answer(status=404, body={"nope": 1})})
    result = await run(orchestrator({"name": "a", "path": "/a"}, {"name": "b", "path": "/b", "optional": True}),
                       fake)
    assert result.body == {"a": 1}
    assert result.complete is False
    assert [(e["step"], e["status"]) for e in result.errors] == [("b", 404)]


async def test_required_failure_is_502_and_dependants_are_not_called() -> None:
    fake = FakeUpstreams({
        "user": Answer({"error": "x"}, status=500, delay=0.01),
        "orders": Answer({"orders": []}),
        "other": Answer({"other": 1}),
    })
    orch = orchestrator(
        {"name": "user", "path": "/u"},
        {"name": "orders", "path": "/o?u={user.id}"},
        {"name": "other", "path": "/x"},
    )
    result = await run(orch, fake)
    assert result.status == 502
    assert result.failed_step == "user"
    assert result.body is None
    assert result.complete is False
    assert "orders" not in fake.steps_called()
    assert result.steps["orders"].outcome != "ok"


@pytest.mark.parametrize("status", [400, 404, 500, 502, 503, 504])
async def test_required_step_upstream_status_gives_502(status: int) -> None:
    # the upstream's own answer is an "upstream error" (502); 503/504 are for the gateway's
    # breaker and the route budget
    fake = FakeUpstreams({"a": Answer({"e": 1}, status=status)})
    result = await run(orchestrator({"name": "a", "path": "/a"}), fake)
    assert result.status == 502
    assert result.failed_step == "a"


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (ServiceUnavailable("breaker open"), 503),
        (UpstreamTimeout("too slow"), 504),
        (UpstreamError("connection reset"), 502),
    ],
)
async def test_gateway_side_failures_keep_their_status(error: Exception, status: int) -> None:
    fake = FakeUpstreams({"a": Answer(raises=error), "b": Answer({"b": 1}, raises=error)})
    required = await run(orchestrator({"name": "a", "path": "/a"}), fake)
    assert required.status == status
    assert required.failed_step == "a"
    optional = await run(
        orchestrator({"name": "ok", "path": "/ok", "upstream": "x"}, {"name": "b", "path": "/b", "optional": True},
                     errors_key="errors"),
        FakeUpstreams({"ok": Answer({"ok": 1}), "b": Answer(raises=error)}),
    )
    assert optional.status == 200
    assert optional.body is not None
    assert [(e["step"], e["status"]) for e in optional.body["errors"]] == [("b", status)]


@pytest.mark.parametrize(
    ("error", "status"),
    [(ServiceUnavailable("breaker open"), 503), (UpstreamTimeout("too slow"), 504)],
)
async def test_failed_step_decides_the_status_not_its_dependants(error: Exception, status: int) -> None:
    # the dependants are "not called"; whichever order the engine sees them finish in,
    # the answer is the failed step's status
    orch = orchestrator(
        {"name": "root", "path": "/root"},
        {"name": "left", "path": "/l/{root.id}"},
        {"name": "right", "path": "/r/{root.id}"},
    )
    seen: set[tuple[int, str | None]] = set()
    for _ in range(30):
        fake = FakeUpstreams({"root": Answer(raises=error, delay=0.002)})
        result = await run(orch, fake)
        seen.add((result.status, result.failed_step))
        assert fake.steps_called() == ["root"]
    assert seen == {(status, "root")}


async def test_missing_client_input_decides_over_its_dependants() -> None:
    orch = orchestrator(
        {"name": "list", "path": "/list"},
        {"name": "each", "path": "/each/{item}?q={query.q}", "for_each": "list.ids"},
        {"name": "left", "path": "/l/{each.0.id}"},
        {"name": "right", "path": "/r/{each.0.id}"},
    )
    seen: set[tuple[int, str | None]] = set()
    for _ in range(30):
        fake = FakeUpstreams({"list": Answer({"ids": [1, 2]}, delay=0.002)})
        result = await run(orch, fake)
        seen.add((result.status, result.failed_step))
    assert seen == {(400, "each")}


async def test_missing_step_data_fails_that_step() -> None:
    fake = FakeUpstreams({"a": Answer({"id": None}), "b": Answer({"b": 1}), "c": Answer({"c": 1})})
    required = await run(orchestrator({"name": "a", "path": "/a"}, {"name": "b", "path": "/b/{a.id}"}), fake)
    assert required.status == 502
    assert required.failed_step == "b"
    assert "b" not in fake.steps_called()
    fake = FakeUpstreams({"a": Answer({"x": 1}), "c": Answer({"c": 1})})
    optional = await run(orchestrator({"name": "a", "path": "/a", "into": "a"},
                                      {"name": "c", "path": "/c/{a.id}", "optional": True}), fake)
    assert optional.status == 200
    assert fake.steps_called() == ["a"]
    assert [(e["step"], e["status"]) for e in optional.errors] == [("c", 502)]


# --- the route budget ----------------------------------------------------------------------


async def test_budget_spent_is_504_and_cancels_calls_in_flight() -> None:
    fake = FakeUpstreams({"fast": Answer({"fast": 1}), "slow": Answer({"slow": 1}, delay=0.5)})
    orch = orchestrator({"name": "fast", "path": "/fast"}, {"name": "slow", "path": "/slow"})
    loop = asyncio.get_running_loop()
    began = loop.time()
    result = await run(orch, fake, budget=0.05)
    assert loop.time() - began < 0.3
    assert result.status == 504
    assert result.failed_step == "slow"
    assert result.body is None
    assert fake.cancelled == ["/slow"]


async def test_budget_spent_on_an_optional_step_uses_its_fallback() -> None:
    fake = FakeUpstreams({"main": Answer({"main": 1}), "extra": Answer({"extra": 1}, delay=0.5)})
    orch = orchestrator(
        {"name": "main", "path": "/m"},
        {"name": "extra", "path": "/e", "fallback": {"none": True}, "into": "extra"},
        errors_key="_errors",
    )
    result = await run(orch, fake, budget=0.05)
    assert result.status == 200
    assert result.complete is False
    assert result.body is not None
    assert result.body["main"] == 1
    assert result.body["extra"] == {"none": True}
    assert [(e["step"], e["status"]) for e in result.body["_errors"]] == [("extra", 504)]
    assert fake.cancelled == ["/e"]


async def test_budget_spent_cancels_every_for_each_call() -> None:
    fake = FakeUpstreams({"list": Answer({"ids": [1, 2, 3]}), "each": Answer({}, delay=0.5)})
    orch = orchestrator({"name": "list", "path": "/list"},
                        {"name": "each", "path": "/each/{item}", "for_each": "list.ids"})
    result = await run(orch, fake, budget=0.05)
    assert result.status == 504
    assert sorted(fake.cancelled) == ["/each/1", "/each/2", "/each/3"]


async def test_steps_waiting_on_a_slow_step_fail_with_the_budget() -> None:
    fake = FakeUpstreams({"slow": Answer({"id": 1}, delay=0.5), "next": Answer({})})
    orch = orchestrator({"name": "slow", "path": "/s"}, {"name": "next", "path": "/n/{slow.id}"})
    result = await run(orch, fake, budget=0.04)
    assert result.status == 504
    assert fake.steps_called() == ["slow"]
    assert fake.cancelled == ["/s"]


# --- bodies --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"<html>hi</html>", "text/html"),
        (b'{"ok": true}', "text/html; charset=utf-8"),
        (b'"ok"', "text/plain"),
        (b"{not json", "application/json"),
        (b"{not json", None),
        (b"", "application/json"),
    ],
)
async def test_non_json_answer_fails_the_step(body: bytes, content_type: str | None) -> None:
    fake = FakeUpstreams({"a": Answer(body, content_type=content_type)})
    required = await run(orchestrator({"name": "a", "path": "/a"}), fake)
    assert required.status == 502
    assert required.failed_step == "a"
    fake = FakeUpstreams({"a": Answer(body, content_type=content_type), "b": Answer({"b": 1})})
    optional = await run(orchestrator({"name": "a", "path": "/a", "optional": True}, {"name": "b", "path": "/b"}),
                         fake)
    assert optional.status == 200
    assert optional.body == {"b": 1}
    assert [(e["step"], e["status"]) for e in optional.errors] == [("a", 502)]


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "application/json; charset=utf-8", "application/problem+json", "APPLICATION/JSON", None],
)
async def test_json_answers_are_accepted(content_type: str | None) -> None:
    fake = FakeUpstreams({"a": Answer({"a": [1, {"b": None}]}, content_type=content_type)})
    result = await run(orchestrator({"name": "a", "path": "/a"}), fake)
    assert result.status == 200
    assert result.body == {"a": [1, {"b": None}]}


@pytest.mark.parametrize("status", [200, 201, 202, 206])
async def test_any_2xx_is_success(status: int) -> None:
    fake = FakeUpstreams({"a": Answer({"a": status}, status=status)})
    result = await run(orchestrator({"name": "a", "path": "/a"}), fake)
    assert (result.status, result.body) == (200, {"a": status})


async def test_204_gives_null() -> None:
    fake = FakeUpstreams({"gone": Answer(b"", status=204, content_type=None), "a": Answer({"a": 1})})
    orch = orchestrator({"name": "a", "path": "/a"}, {"name": "gone", "path": "/g", "into": "gone"})
    result = await run(orch, fake)
    assert result.status == 200
    assert result.complete is True
    assert result.body == {"a": 1, "gone": None}


# --- when ----------------------------------------------------------------------------------


@pytest.mark.parametrize("flag", [False, None, 0, "", [], {}])
async def test_when_false_skips_the_step(flag: Any) -> None:
    fake = FakeUpstreams({"a": Answer({"flag": flag, "a": 1}), "b": Answer({"b": 1})})
    orch = orchestrator({"name": "a", "path": "/a", "select": ["a"]}, {"name": "b", "path": "/b", "when": "{a.flag}"})
    result = await run(orch, fake)
    assert fake.steps_called() == ["a"]
    assert result.status == 200
    assert result.body == {"a": 1}
    assert result.steps["b"].outcome == "skipped"
    assert result.complete is True
    assert result.errors == []


@pytest.mark.parametrize("flag", [True, 1, "0", "false", [0], {"x": 0}])
async def test_when_true_calls_the_step(flag: Any) -> None:
    fake = FakeUpstreams({"a": Answer({"flag": flag, "a": 1}), "b": Answer({"b": 1})})
    orch = orchestrator({"name": "a", "path": "/a", "select": ["a"]}, {"name": "b", "path": "/b", "when": "{a.flag}"})
    result = await run(orch, fake)
    assert fake.steps_called() == ["a", "b"]
    assert result.body == {"a": 1, "b": 1}


@pytest.mark.parametrize("when", ["{query.debug}", "{a.missing}", "{header.X-Debug}"])
async def test_when_missing_value_skips(when: str) -> None:
    fake = FakeUpstreams({"a": Answer({"a": 1}), "b": Answer({"b": 1})})
    orch = orchestrator({"name": "a", "path": "/a"}, {"name": "b", "path": "/b", "when": when})
    result = await run(orch, fake)
    assert result.status == 200  # not a 400: a missing `when` value is just false
    assert fake.steps_called() == ["a"]
    assert result.steps["b"].outcome == "skipped"


async def test_when_reads_client_input() -> None:
    orch = orchestrator({"name": "a", "path": "/a", "when": "{query.expand}"})
    fake = FakeUpstreams({"a": Answer({"a": 1})})
    assert (await run(orch, fake, Scope(query={"expand": "1"}))).body == {"a": 1}
    assert fake.steps_called() == ["a"]


# --- for_each ------------------------------------------------------------------------------


async def test_for_each_keeps_input_order_with_random_delays() -> None:
    rng = random.Random(3)
    skus = ["a b", "c/d", "e", "f", "g", "h"]

    def detail(call: StepCall) -> Answer:
        return Answer({"path": call.path_qs}, delay=rng.uniform(0.005, 0.04))

    fake = FakeUpstreams({"list": Answer({"items": [{"sku": s, "n": i} for i, s in enumerate(skus)]}),
                          "detail": detail, "after": Answer({})})
    orch = orchestrator(
        {"name": "list", "path": "/list", "into": "list"},
        {"name": "detail", "path": "/p/{item.sku}?n={item.n}", "for_each": "list.items", "into": "details"},
        {"name": "after", "path": "/after?first={detail.0.path}"},
    )
    result = await run(orch, fake)
    assert result.status == 200, result.detail
    expected = [f"/p/{s.replace(' ', '%20').replace('/', '%2F')}?n={i}" for i, s in enumerate(skus)]
    assert result.body is not None
    assert [d["path"] for d in result.body["details"]] == expected
    detail_events = [kind for kind, step in fake.events if step == "detail"]
    assert detail_events[: len(skus)] == ["start"] * len(skus)  # all calls in flight together
    arrival = [call for call in expected if call in fake.ended]
    assert sorted(arrival, key=lambda p: fake.ended[p]) != expected  # they did finish out of order
    assert fake.calls[-1].path_qs == "/after?first=%2Fp%2Fa%2520b%3Fn%3D0"


async def test_for_each_whole_item_and_body_source() -> None:
    fake = FakeUpstreams({"each": lambda call: Answer({"got": call.path_qs})})
    orch = orchestrator({"name": "each", "path": "/x/{item}", "for_each": "body.ids", "into": "all"})
    result = await run(orch, fake, Scope(body={"ids": [3, "x y", True]}))
    assert result.body == {"all": [{"got": "/x/3"}, {"got": "/x/x%20y"}, {"got": "/x/true"}]}


async def test_for_each_over_an_empty_array_calls_nothing() -> None:
    fake = FakeUpstreams({"list": Answer({"items": []}), "each": Answer({})})
    orch = orchestrator({"name": "list", "path": "/l", "into": "list"},
                        {"name": "each", "path": "/e/{item}", "for_each": "list.items", "into": "each"})
    result = await run(orch, fake)
    assert result.body == {"list": {"items": []}, "each": []}
    assert fake.steps_called() == ["list"]


async def test_for_each_beyond_max_fanout_fails_the_step() -> None:
    fake = FakeUpstreams({"list": Answer({"ids": [1, 2, 3]}), "each": Answer({})})
    required = await run(orchestrator(
        {"name": "list", "path": "/l"},
        {"name": "each", "path": "/e/{item}", "for_each": "list.ids", "max_fanout": 2},
    ), fake)
    assert required.status == 502
    assert required.failed_step == "each"
    assert fake.steps_called() == ["list"]
    fake = FakeUpstreams({"list": Answer({"ids": [1, 2, 3]}), "each": Answer({})})
    optional = await run(orchestrator(
        {"name": "list", "path": "/l", "into": "l"},
        {"name": "each", "path": "/e/{item}", "for_each": "list.ids", "max_fanout": 2, "fallback": [],
         "into": "each"},
    ), fake)
    assert optional.body == {"l": {"ids": [1, 2, 3]}, "each": []}
    assert [(e["step"], e["status"]) for e in optional.errors] == [("each", 502)]
    assert fake.steps_called() == ["list"]


async def test_for_each_exactly_max_fanout_is_fine() -> None:
    fake = FakeUpstreams({"list": Answer({"ids": [1, 2]}), "each": lambda c: Answer(c.path_qs)})
    result = await run(orchestrator(
        {"name": "list", "path": "/l", "into": "l"},
        {"name": "each", "path": "/e/{item}", "for_each": "list.ids", "max_fanout": 2, "into": "e"},
    ), fake)
    assert result.body == {"l": {"ids": [1, 2]}, "e": ["/e/1", "/e/2"]}


async def test_for_each_over_a_non_array_fails() -> None:
    fake = FakeUpstreams({"list": Answer({"ids": {"a": 1}}), "each": Answer({})})
    result = await run(orchestrator(
        {"name": "list", "path": "/l"}, {"name": "each", "path": "/e/{item}", "for_each": "list.ids"}), fake)
    assert result.status == 502
    assert result.failed_step == "each"


async def test_for_each_one_failing_item_fails_the_step() -> None:
    fake = FakeUpstreams({"list": Answer({"ids": [1, 2]}), "/e/1": Answer({}, delay=0.05),
                          "/e/2": Answer({}, status=500)})
    result = await run(orchestrator(
        {"name": "list", "path": "/l"}, {"name": "each", "path": "/e/{item}", "for_each": "list.ids"}), fake)
    assert result.status == 502
    assert result.failed_step == "each"
    assert fake.cancelled == ["/e/1"]


# --- client input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"path": "/s?q={query.q}"},
        {"path": "/s/{path.id}"},
        {"path": "/s", "headers": {"X-T": "{header.X-Tenant}"}},
        {"path": "/s", "body": {"user": "{body.user.id}"}},
        {"path": "/s/{consumer}"},
    ],
)
async def test_missing_client_input_is_400(options: dict[str, Any]) -> None:
    fake = FakeUpstreams({"s": Answer({"s": 1}), "other": Answer({"o": 1}, delay=0.02)})
    result = await run(orchestrator({"name": "other", "path": "/o"}, {"name": "s", **options}), fake)
    assert result.status == 400
    assert result.failed_step == "s"
    assert result.body is None
    assert "s" not in fake.steps_called()


async def test_missing_client_input_in_a_dependent_step_is_400() -> None:
    fake = FakeUpstreams({"a": Answer({"id": 1}, delay=0.01), "b": Answer({})})
    result = await run(orchestrator({"name": "a", "path": "/a"},
                                    {"name": "b", "path": "/b/{a.id}?q={query.q}", "optional": True}), fake)
    assert result.status == 400
    assert fake.steps_called() == ["a"]


async def test_client_input_is_rendered() -> None:
    fake = FakeUpstreams({"s": Answer({"s": 1})})
    await run(orchestrator({"name": "s", "path": "/s/{path.id}?q={query.q}&c={consumer}"}), fake,
              Scope(params={"id": "x/1"}, query={"q": "a&b"}, consumer="app one"))
    assert fake.calls[0].path_qs == "/s/x%2F1?q=a%26b&c=app%20one"


# --- observer ------------------------------------------------------------------------------


async def test_observer_sees_each_step_once_with_its_outcome() -> None:
    recorder = Recorder()
    fake = FakeUpstreams({
        "ok": Answer({"flag": False}, delay=0.01),
        "fb": Answer(status=500),
        "fail": Answer(raises=ServiceUnavailable("open")),
        "cond": Answer({}),
    })
    orch = orchestrator(
        {"name": "ok", "path": "/ok", "into": "ok"},
        {"name": "fb", "path": "/fb", "fallback": {"x": 1}, "into": "fb"},
        {"name": "fail", "path": "/fail", "optional": True},
        {"name": "cond", "path": "/cond", "when": "{ok.flag}"},
    )
    orch.observer = recorder
    result = await run(orch, fake)
    assert result.status == 200
    assert sorted(step for step, _, _ in recorder.seen) == ["cond", "fail", "fb", "ok"]
    assert recorder.outcomes() == {"ok": "ok", "fb": "fallback", "fail": "failed", "cond": "skipped"}
    assert all(seconds >= 0 for _, _, seconds in recorder.seen)
    assert {s: sec for s, _, sec in recorder.seen}["ok"] >= 0.005


async def test_observer_on_a_required_failure_and_on_the_budget() -> None:
    recorder = Recorder()
    orch = orchestrator(
        {"name": "root", "path": "/r"},
        {"name": "child", "path": "/c/{root.id}"},
        {"name": "slow", "path": "/s"},
    )
    orch.observer = recorder
    fake = FakeUpstreams({"root": Answer(status=500, delay=0.01), "slow": Answer({}, delay=0.5)})
    result = await run(orch, fake)
    assert result.status == 502
    assert sorted(step for step, _, _ in recorder.seen) == ["child", "root", "slow"]
    assert recorder.outcomes()["root"] == "failed"
    assert recorder.outcomes()["child"] == "skipped"
    assert fake.cancelled == ["/s"]

    recorder.seen.clear()
    fake = FakeUpstreams({"root": Answer({"id": 1}), "child": Answer({}), "slow": Answer({}, delay=0.5)})
    result = await run(orch, fake, budget=0.05)
    assert result.status == 504
    assert sorted(step for step, _, _ in recorder.seen) == ["child", "root", "slow"]
    assert recorder.outcomes() == {"root": "ok", "child": "ok", "slow": "failed"}


# --- building ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("steps", "location"),
    [
        ([{"name": "a", "upstream": "u", "path": "/a"}, {"name": "b", "upstream": "u", "path": "no-slash"}],
         "steps[1].path"),
        ([{"name": "a", "upstream": "u", "path": "/a", "pathh": "/x"}], "steps[0].pathh"),
        ([{"name": "a", "upstream": "u", "path": "/a"}, {"name": "b", "upstream": "u", "path": "/b/{a.id"}],
         "steps[1].path"),
        ([{"name": "a", "upstream": "u", "path": "/a", "pick": "x["}], "steps[0].pick"),
        ([{"name": "a", "upstream": "u", "path": "/a"}, {"name": "b", "upstream": "u", "path": "/b",
                                                          "after": ["c"]}], "steps[1].after[0]"),
    ],
)
def test_orchestrator_from_invalid_steps(steps: list[dict[str, Any]], location: str) -> None:
    with pytest.raises(PlanError) as info:
        orchestrator_from_steps(steps)
    assert location in [loc for loc, _ in info.value.problems]
    assert location in str(info.value)


def test_orchestrator_from_steps_passes_route_options() -> None:
    orch = orchestrator_from_steps([{"name": "a", "upstream": "u", "path": "/a"}], merge="deep", arrays="concat",
                                   errors_key="_e", status=203)
    assert (orch.plan.merge, orch.plan.arrays, orch.plan.errors_key, orch.plan.status) == (
        "deep", "concat", "_e", 203)


# --- the dot-segment guard -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("scope", "where"),
    [
        (Scope(params={"id": "..%2Fprivate"}), "path"),
        (Scope(params={"id": ".."}), "path"),
        (Scope(params={"id": "%2e%2e"}), "path"),
        (Scope(params={"id": "..;x"}), "path"),
        (Scope(query={"q": "../x"}), "query"),
        (Scope(query={"q": "%252e%252e"}), "query"),
        (Scope(headers={"X-Id": "..\\x"}), "header"),
        (Scope(body={"name": {"nested": [".."]}}), "body"),
        (Scope(body={"name": "."}), "body text"),
    ],
)
async def test_client_values_with_dot_segments_are_refused_before_any_call(scope: Scope, where: str) -> None:
    fake = FakeUpstreams({"s": Answer({})})
    steps: dict[str, dict[str, Any]] = {
        "path": {"name": "s", "path": "/public/{path.id}/x.json"},
        "query": {"name": "s", "path": "/search?q={query.q}"},
        "header": {"name": "s", "path": "/s", "headers": {"X-Id": "{header.X-Id}"}},
        "body": {"name": "s", "path": "/s", "method": "POST", "body": {"n": "{body.name}"}},
        "body text": {"name": "s", "path": "/s", "method": "POST", "body": {"n": "name={body.name}"}},
    }
    result = await run(orchestrator(steps[where]), fake, scope)
    assert result.status == 400
    assert "'.' or '..' segments" in (result.detail or "")
    assert fake.calls == []


async def test_ordinary_values_with_dots_pass() -> None:
    fake = FakeUpstreams({"s": Answer({})})
    orch = orchestrator({"name": "s", "path": "/files/{path.id}?v={query.v}", "headers": {"X-V": "{query.v}"}})
    result = await run(orch, fake, Scope(params={"id": "report.v2.pdf"}, query={"v": "1.2..3"}))
    assert result.status == 200
    assert fake.calls[0].path_qs == "/files/report.v2.pdf?v=1.2..3"


async def test_a_dot_segment_from_an_earlier_step_fails_the_step_that_would_send_it() -> None:
    fake = FakeUpstreams({"user": Answer({"home": "../admin"}), "files": Answer({})})
    orch = orchestrator(
        {"name": "user", "path": "/user"},
        {"name": "files", "path": "/files/{user.home}", "optional": True},
    )
    result = await run(orch, fake)
    assert result.status == 200
    assert fake.steps_called() == ["user"]
    assert result.steps["files"].outcome == "failed"


@given(st.text(alphabet=st.sampled_from(list("./\\%2eEfF5c;a")), max_size=12))
async def test_no_call_ever_carries_a_dot_segment_from_client_data(value: str) -> None:
    fake = FakeUpstreams({"s": Answer({})})
    orch = orchestrator({"name": "s", "path": "/public/{path.id}/x?q={query.q}"})
    result = await run(orch, fake, Scope(params={"id": value}, query={"q": value}))
    for call in fake.calls:
        decoded = call.path_qs
        for _ in range(5):
            decoded = unquote(decoded)
        assert not any(piece.partition(";")[0] in (".", "..") for piece in re.split(r"[/\\?=]", decoded)[1:])
    assert result.status in (200, 400)
