"""API orchestration: one request fans out to several upstream calls — in parallel where
independent, in sequence where one needs another's data — and their JSON is shaped and
merged into one answer.

Usable without the gateway::

    orchestrator = orchestrator_from_steps(
        [{"name": "user", "upstream": "users", "path": "/users/{path.id}", "into": "user"},
         {"name": "orders", "upstream": "orders", "path": "/orders?user={user.id}", "into": "orders"}],
        merge="deep",
    )
    async with aiohttp.ClientSession() as session:
        caller = SessionCaller(session, {"users": "http://users:8080", "orders": "http://orders:8080"})
        result = await orchestrator.run(Scope(params={"id": "1"}), caller, budget=1.0)
    result.status, result.body, result.complete, result.errors
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from gateway.config_model import StepConfig
from gateway.orchestration.bounded import DEFAULT_MAX_DEPTH, BadJson, loads_bounded
from gateway.orchestration.callers import SessionCaller, UpstreamCaller
from gateway.orchestration.engine import (
    Orchestrator,
    Result,
    StepCall,
    StepCaller,
    StepFailed,
    StepReply,
    StepResult,
)
from gateway.orchestration.merge import merge
from gateway.orchestration.plan import Plan, PlanError, build_plan
from gateway.orchestration.shaping import Shape
from gateway.orchestration.templates import Scope


def orchestrator_from_steps(steps: Sequence[Mapping[str, Any]], *, max_json_depth: int = DEFAULT_MAX_DEPTH,
                            **options: Any) -> Orchestrator:
    """An Orchestrator from step tables shaped like ``[[routes.steps]]`` in routes.toml.

    ``options`` are the route's ``merge``, ``arrays``, ``errors_key`` and ``status``; a step's
    answer nested deeper than ``max_json_depth`` fails that step.
    Raises PlanError (with locations such as ``steps[1].path``) for invalid steps.
    """
    configs = []
    problems: list[tuple[str, str]] = []
    for index, step in enumerate(steps):
        try:
            configs.append(StepConfig.model_validate(step))
        except ValidationError as exc:
            problems += [(f"steps[{index}]." + ".".join(map(str, e["loc"])), e["msg"]) for e in exc.errors()]
    if problems:
        raise PlanError(problems)
    return Orchestrator(build_plan(configs, **options), max_json_depth=max_json_depth)


__all__ = [
    "DEFAULT_MAX_DEPTH", "BadJson", "Orchestrator", "Plan", "PlanError", "Result", "Scope", "SessionCaller", "Shape",
    "StepCall", "StepCaller", "StepFailed", "StepReply", "StepResult", "UpstreamCaller", "build_plan",
    "loads_bounded", "merge", "orchestrator_from_steps",
]
