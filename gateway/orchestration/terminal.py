"""The orchestration terminal: a route with ``[[routes.steps]]`` answers with the merged
result of its steps (docs/orchestration.md)."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, unquote_to_bytes

from multidict import MultiDict
from prometheus_client.metrics import MetricWrapperBase

from gateway.errors import BadRequest, GatewayError, GatewayTimeout, ServiceUnavailable, UpstreamError
from gateway.http import Request, Response
from gateway.metrics import Metrics
from gateway.orchestration.bounded import DEFAULT_MAX_DEPTH, BadJson, loads_bounded
from gateway.orchestration.engine import Orchestrator, Outcome, StepCaller
from gateway.orchestration.plan import Plan
from gateway.orchestration.templates import Scope

_ERRORS: dict[int, type[GatewayError]] = {
    400: BadRequest, 503: ServiceUnavailable, 504: GatewayTimeout,
}


class StepMetrics:
    """``gateway_steps_total`` and ``gateway_step_duration_seconds`` for one route, bound once."""

    def __init__(self, metrics: Metrics, route: str, plan: Plan) -> None:
        outcomes: tuple[Outcome, ...] = ("ok", "failed", "fallback", "skipped")
        self._counts = {
            (step.name, outcome): metrics.steps.labels(route, step.name, outcome)
            for step in plan.steps for outcome in outcomes
        }
        self._durations: dict[str, MetricWrapperBase] = {
            step.name: metrics.step_duration.labels(route, step.name) for step in plan.steps
        }

    def step_finished(self, step: str, outcome: Outcome, seconds: float) -> None:
        self._counts[(step, outcome)].inc()
        if outcome != "skipped":
            self._durations[step].observe(seconds)  # type: ignore[attr-defined]


class OrchestrationTerminal:
    """Run the route's plan for a request and answer with the merged JSON."""

    def __init__(self, route: str, plan: Plan, caller: StepCaller, budget: float, metrics: Metrics,
                 max_json_depth: int = DEFAULT_MAX_DEPTH) -> None:
        self.route = route
        self.orchestrator = Orchestrator(plan, StepMetrics(metrics, route, plan), max_json_depth=max_json_depth)
        self.caller = caller
        self.budget = budget
        self.max_json_depth = max_json_depth
        self.reads_body = plan.reads_body
        self.reads_path = plan.reads_path

    async def __call__(self, request: Request) -> Response:
        if self.reads_path and "%" in request.path:
            _check_path(request.path)
        scope = Scope(
            params=request.params, query=_query(request.query_string), headers=request.headers,
            body=await self._body(request), consumer=request.consumer,
        )
        headers = {request.request_id_header: request.request_id, "Accept": "application/json"}
        if request.consumer is not None:
            headers["X-Consumer"] = request.consumer
        if request.subject is not None:
            headers["X-Consumer-Subject"] = request.subject
        result = await self.orchestrator.run(scope, self.caller, budget=self.budget, headers=headers)
        if result.body is None:
            error = _ERRORS.get(result.status, UpstreamError)
            raise error(result.detail or "the orchestration failed", extensions={"step": result.failed_step})
        response = Response.json(result.body, result.status)
        response.headers["X-Gateway-Complete"] = "true" if result.complete else "false"
        response.source = "upstream"
        return response

    async def _body(self, request: Request) -> Any:
        if not self.reads_body or request.body.empty:
            return Scope().body  # "absent": {body.*} templates then answer 400
        try:
            return loads_bounded(await request.body.read(), self.max_json_depth)
        except BadJson as exc:
            raise BadRequest(f"the request body {exc}") from None


def _query(query_string: str) -> MultiDict[str]:
    """The query's parameters; undecodable escapes (``%FF``) stay visible as lone surrogates,
    which templates refuse, instead of becoming U+FFFD."""
    return MultiDict(parse_qsl(query_string, keep_blank_values=True, errors="surrogateescape"))


def _check_path(path: str) -> None:
    """Path parameters are decoded from the path: its escapes must be UTF-8 (``%FF`` is not)."""
    try:
        unquote_to_bytes(path).decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("the request path is not valid UTF-8 once decoded") from None
