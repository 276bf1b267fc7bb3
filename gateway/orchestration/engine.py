"""Running a plan: each step starts as soon as the steps it depends on have finished,
under one deadline for the whole answer; results are shaped and merged in declaration
order, whatever order they arrived in.

Usable without the gateway (docs/orchestration.md): give ``Orchestrator`` a plan (or step tables) and a
``StepCaller`` — e.g. ``SessionCaller`` over an aiohttp session — and ``await run(...)``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from gateway import request_scope
from gateway.errors import GatewayError
from gateway.orchestration.bounded import DEFAULT_MAX_DEPTH, BadJson, loads_bounded
from gateway.orchestration.merge import NotAnObject, merge
from gateway.orchestration.plan import Plan, StepPlan
from gateway.orchestration.templates import (
    ANY_DATA,
    CLIENT_DATA,
    MissingInput,
    MissingStepData,
    Ref,
    Scope,
    Template,
    UnsafeValue,
    render_json,
    truthy,
    url_part,
)
from gateway.request_scope import INTERNAL

Outcome = Literal["ok", "failed", "fallback", "skipped"]
log = logging.getLogger("gateway.orchestration")


@dataclass(slots=True)
class StepCall:
    """One HTTP call a step makes."""

    step: str
    upstream: str
    method: str
    path_qs: str
    headers: dict[str, str]
    body: bytes | None
    deadline: float  # event-loop time by which the answer must be there


@dataclass(slots=True)
class StepReply:
    status: int
    body: bytes
    content_type: str | None = None


StepCaller = Callable[[StepCall], Awaitable[StepReply]]


class StepObserver(Protocol):
    def step_finished(self, step: str, outcome: Outcome, seconds: float) -> None: ...


class StepFailed(Exception):
    """A step could not produce a usable answer; ``status`` is the upstream's or 502/503/504."""

    def __init__(self, status: int, message: str, *, from_upstream: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.from_upstream = from_upstream


class BadClientInput(Exception):
    """The client's request lacks a value a template needs, or gives one it may not (a 400)."""


@dataclass(slots=True)
class StepResult:
    name: str
    outcome: Outcome
    status: int | None = None
    error: str | None = None
    value: Any = None  # shaped answer, or the fallback (already nested with `into`)
    merged: bool = False  # whether `value` goes into the response
    by_condition: bool = False  # skipped because of `when`, not because of a failure
    bad_request: bool = False  # the client's request lacks a value this step needs
    from_upstream: bool = False  # `status` is what the upstream answered


@dataclass
class Result:
    """What an orchestration produced."""

    status: int
    body: dict[str, Any] | None
    complete: bool
    errors: list[dict[str, Any]]
    steps: dict[str, StepResult] = field(default_factory=dict)
    failed_step: str | None = None  # the required step whose failure decided `status`
    detail: str | None = None


class Orchestrator:
    """Runs one plan; holds no per-request state, so one instance serves every request.

    A step's answer nested deeper than ``max_json_depth`` fails that step.
    """

    def __init__(self, plan: Plan, observer: StepObserver | None = None, *,
                 max_json_depth: int = DEFAULT_MAX_DEPTH) -> None:
        self.plan = plan
        self.observer = observer
        self.max_json_depth = max_json_depth

    async def run(
        self,
        scope: Scope,
        call: StepCaller,
        *,
        budget: float,
        headers: Mapping[str, str] | None = None,
    ) -> Result:
        """Run every step within ``budget`` seconds; ``headers`` go with each call (e.g. the request id)."""
        loop = asyncio.get_running_loop()
        run = _Run(self, scope, call, loop, loop.time() + budget, dict(headers or {}))
        return await run.execute()


class _Run:
    """The state of one orchestration."""

    def __init__(self, owner: Orchestrator, scope: Scope, call: StepCaller, loop: asyncio.AbstractEventLoop,
                 deadline: float, headers: dict[str, str]) -> None:
        self.plan = owner.plan
        self.observer = owner.observer
        self.max_depth = owner.max_json_depth
        self.call = call
        self.loop = loop
        self.deadline = deadline
        self.headers = headers
        self.raw: dict[str, Any] = {}
        self.scope = scope.with_results(self.raw)  # the caller's Scope stays untouched
        self.finished: dict[str, asyncio.Future[StepResult]] = {s.name: loop.create_future() for s in self.plan.steps}
        # Resolved once: every step reported, a decisive result (a Result), or the budget ran out.
        self._outcome: asyncio.Future[Result | None] = loop.create_future()
        self._unreported = len(self.plan.steps)

    async def execute(self) -> Result:
        tasks = [self.loop.create_task(self._step(step)) for step in self.plan.steps]
        timer = self.loop.call_at(self.deadline, self._conclude, None)
        try:
            abort = await self._outcome if tasks else None
        finally:
            timer.cancel()
            pending = [task for task in tasks if not task.done()]
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        results = {s.name: self._settle(s, decided=abort is not None) for s in self.plan.steps}
        if abort is not None:
            abort.steps = results
            return abort
        for step in self.plan.steps:
            if results[step.name].outcome == "failed" and not step.optional:  # only the budget gets here
                detail = f"step {step.name!r} did not finish within the route's timeout"
                return Result(504, None, False, [], results, failed_step=step.name, detail=detail)
        return self._success(results)

    def _settle(self, step: StepPlan, *, decided: bool) -> StepResult:
        """The result of a step; one that never finished was cut short by the budget (or by
        a decisive failure elsewhere, which makes it skipped)."""
        future = self.finished[step.name]
        if future.done() and not future.cancelled():
            return future.result()
        if decided:
            result = StepResult(step.name, "skipped", None, "the answer was decided by another step")
        else:
            result = self._failed(step, 504, "the route's timeout ran out before this step finished")
        self._observe(step.name, result.outcome, 0.0)
        return result

    def _decisive(self, result: StepResult, step: StepPlan) -> Result | None:
        """A result that decides the whole answer: a bad request, a required step's failure,
        a required step that could not be called."""
        if result.bad_request:
            return Result(400, None, False, [], failed_step=step.name, detail=result.error)
        if result.outcome == "failed" and not step.optional:
            # An upstream's own 503/504 is an upstream error (502); 503/504 are the gateway's
            # words for an open breaker and a spent budget.
            status = result.status if result.status in (503, 504) and not result.from_upstream else 502
            detail = f"step {step.name!r} failed: {result.error}"
            return Result(status, None, False, [], failed_step=step.name, detail=detail)
        if result.outcome == "skipped" and not result.by_condition and not step.optional:
            detail = f"step {step.name!r} was not called: {result.error}"
            return Result(502, None, False, [], failed_step=step.name, detail=detail)
        return None

    def _success(self, results: dict[str, StepResult]) -> Result:
        values = [r.value for r in results.values() if r.merged]
        errors = [
            {"step": r.name, "status": r.status, "error": r.error}
            for r in results.values()
            if r.outcome in ("failed", "fallback")
        ]
        complete = all(r.outcome == "ok" or (r.outcome == "skipped" and r.by_condition) for r in results.values())
        try:
            body = merge(values, self.plan.merge, self.plan.arrays)
        except NotAnObject as exc:
            return Result(502, None, False, errors, results, detail=f"the steps' answers cannot be merged: {exc}")
        if errors and self.plan.errors_key:
            body[self.plan.errors_key] = errors
        return Result(self.plan.status, body, complete, errors, results)

    # -- one step ----------------------------------------------------------------------

    def _conclude(self, verdict: Result | None) -> None:
        if not self._outcome.done():
            self._outcome.set_result(verdict)

    def _report(self, step: StepPlan, result: StepResult) -> None:
        """A step finished. A step's dependants can only finish after it, so the first
        decisive result is the root cause, not a dependant it made skip."""
        future = self.finished[step.name]
        if not future.done():
            future.set_result(result)
        verdict = self._decisive(result, step)
        self._unreported -= 1
        if verdict is not None or self._unreported == 0:
            self._conclude(verdict)

    async def _step(self, step: StepPlan) -> StepResult:
        start = time.perf_counter()
        try:
            result = await self._step_inner(step)
        except Exception:  # a bug must not leave the answer waiting for the budget
            log.exception("orchestration step %s failed unexpectedly", step.name)
            result = self._failed(step, 502, "the gateway could not complete this step")
        self._observe(step.name, result.outcome, time.perf_counter() - start)
        self._report(step, result)
        return result

    async def _step_inner(self, step: StepPlan) -> StepResult:
        if step.depends_on:
            before = [await self.finished[d] for d in step.depends_on]
            broken = [r for r in before if not r.by_condition and r.outcome != "ok"]
            if broken:
                return self._skipped(step, by_condition=False, why=f"depends on {broken[0].name!r}, which failed")
            if any(r.outcome == "skipped" for r in before):
                return self._skipped(step, by_condition=True, why="a step it depends on was skipped")
        request = request_scope.current()
        span = request.start_span(f"step {step.name}", INTERNAL, {"gateway.step": step.name}) \
            if request is not None else None
        if span is not None and request is not None:  # this task's calls are children of the step's span
            request_scope.enter(request.child(span.span_id))
        try:
            if step.when is not None and not _holds(step.when, self.scope):
                result = self._skipped(step, by_condition=True, why="`when` is false")
            else:
                raw: Any = await (self._fan_out(step, step.for_each) if step.for_each is not None
                                  else self._call_once(step, self.scope))
                self.raw[step.name] = raw
                result = StepResult(step.name, "ok", 200, value=step.shape.apply(raw), merged=True)
        except BadClientInput as exc:
            result = StepResult(step.name, "failed", 400, str(exc), bad_request=True)
        except StepFailed as exc:
            result = self._failed(step, exc.status, exc.message, from_upstream=exc.from_upstream)
        except BaseException:  # cancelled: the answer was decided without this step
            if span is not None:
                request_scope.end_span(span, "cancelled")
            raise
        if span is not None:
            span.attributes["gateway.step.outcome"] = result.outcome
            request_scope.end_span(span, result.error if result.outcome in ("failed", "fallback") else None)
        return result

    def _skipped(self, step: StepPlan, *, by_condition: bool, why: str) -> StepResult:
        use_fallback = not by_condition and step.has_fallback
        return StepResult(step.name, "skipped", None, why, step.shape.wrap(step.fallback) if use_fallback else None,
                          merged=use_fallback, by_condition=by_condition)

    def _failed(self, step: StepPlan, status: int, error: str, *, from_upstream: bool = False) -> StepResult:
        if step.has_fallback:
            return StepResult(step.name, "fallback", status, error, step.shape.wrap(step.fallback), merged=True,
                              from_upstream=from_upstream)
        return StepResult(step.name, "failed", status, error, from_upstream=from_upstream)

    async def _fan_out(self, step: StepPlan, source: Ref) -> list[Any]:
        try:
            items = self.scope.lookup(source)
        except MissingInput as exc:
            raise BadClientInput(str(exc)) from None
        except MissingStepData as exc:
            raise StepFailed(502, str(exc)) from None
        if not isinstance(items, list):
            raise StepFailed(502, f"{source} is not an array")
        if len(items) > step.max_fanout:
            raise StepFailed(502, f"{source} has {len(items)} elements, more than max_fanout = {step.max_fanout}")
        calls = [asyncio.ensure_future(self._call_once(step, self.scope.with_item(item))) for item in items]
        try:
            return list(await asyncio.gather(*calls))
        except BaseException:
            for task in calls:
                task.cancel()
            await asyncio.gather(*calls, return_exceptions=True)
            raise

    async def _call_once(self, step: StepPlan, scope: Scope) -> Any:
        try:
            path_qs = step.path.render(scope, url_part, ANY_DATA)
            headers = dict(self.headers)
            for name, template in step.headers:
                value = template.render(scope, guard=CLIENT_DATA)
                if "\r" in value or "\n" in value:
                    raise StepFailed(502, f"header {name} would contain a line break")
                headers[name] = value
            body = None
            if step.body is not None:
                body = json.dumps(render_json(step.body, scope, CLIENT_DATA)).encode()
                headers.setdefault("Content-Type", "application/json")
        except MissingInput as exc:
            raise BadClientInput(str(exc)) from None
        except MissingStepData as exc:
            raise StepFailed(502, str(exc)) from None
        except UnsafeValue as exc:
            raise _refusal(exc) from None
        deadline = self.deadline
        if step.timeout is not None:
            deadline = min(deadline, self.loop.time() + step.timeout)
        call = StepCall(step.name, step.upstream, step.method, path_qs, headers, body, deadline)
        try:
            if step.timeout is None:  # the route budget as a whole is enforced by execute()
                reply = await self.call(call)
            else:  # the step's own limit covers its whole answer, body included
                async with asyncio.timeout_at(deadline):
                    reply = await self.call(call)
        except TimeoutError:
            raise StepFailed(504, f"no answer within the step's timeout ({step.timeout:g}s)") from None
        except GatewayError as exc:
            raise StepFailed(exc.status, exc.detail) from None
        return decode_reply(reply, self.max_depth)

    def _observe(self, step: str, outcome: Outcome, seconds: float) -> None:
        if self.observer is not None:
            self.observer.step_finished(step, outcome, seconds)


def _holds(when: Template, scope: Scope) -> bool:
    """``when``: the template's value is truthy; a missing value is false, like null."""
    try:
        return truthy(when.value(scope))
    except LookupError:
        return False
    except UnsafeValue as exc:
        raise _refusal(exc) from None


def _refusal(exc: UnsafeValue) -> BadClientInput | StepFailed:
    """A value that may not be sent: the client's request is bad (400), or a step's answer."""
    if exc.from_client:
        return BadClientInput(str(exc))
    return StepFailed(502, str(exc))


def decode_reply(reply: StepReply, max_depth: int = DEFAULT_MAX_DEPTH) -> Any:
    """A step's answer as JSON: any 2xx with a JSON body; 204 gives null; anything else fails,
    and so does JSON nested deeper than ``max_depth``, invalid UTF-8 or a lone surrogate."""
    if not 200 <= reply.status < 300:
        raise StepFailed(reply.status, f"the upstream answered {reply.status}", from_upstream=True)
    if reply.status == 204:
        return None
    kind = (reply.content_type or "").split(";", 1)[0].strip().lower()
    if kind and kind != "application/json" and not kind.endswith("+json"):
        raise StepFailed(502, f"the upstream answered {kind}, not JSON")
    try:
        return loads_bounded(reply.body, max_depth)
    except BadJson as exc:
        raise StepFailed(502, f"the upstream's answer {exc}") from None


