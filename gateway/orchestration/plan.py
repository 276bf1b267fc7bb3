"""Planning a route's steps once, at config load: compile templates and shaping, find each
step's dependencies (template references, ``for_each`` and ``after``), reject unknown
references and cycles with located errors."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.config_model import StepConfig
from gateway.hints import unknown
from gateway.orchestration.merge import ArrayMode, MergeMode
from gateway.orchestration.shaping import Shape
from gateway.orchestration.templates import (
    RESERVED,
    Ref,
    Template,
    compile_json,
    compile_template,
    json_refs,
    parse_ref,
)

Problem = tuple[str, str]


class PlanError(ValueError):
    """Every problem found in a route's steps, each with its location."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(f"{loc}: {msg}" for loc, msg in self.problems))


@dataclass(frozen=True)
class StepPlan:
    """One step, compiled."""

    name: str
    upstream: str
    method: str
    path: Template
    headers: tuple[tuple[str, Template], ...]
    body: Any  # a compiled JSON table (Templates inside) or None
    when: Template | None
    for_each: Ref | None
    max_fanout: int
    timeout: float | None
    optional: bool
    fallback: Any
    shape: Shape
    depends_on: tuple[str, ...]

    @property
    def has_fallback(self) -> bool:
        return self.fallback is not None


@dataclass(frozen=True)
class Plan:
    """A route's steps in declaration order, plus how their results are merged."""

    steps: tuple[StepPlan, ...]
    merge: MergeMode = "shallow"
    arrays: ArrayMode = "replace"
    errors_key: str | None = None
    status: int = 200

    @property
    def reads_body(self) -> bool:
        """Whether any template reads the client's JSON body (so it must be parsed)."""
        return any(ref.source == "body" for step in self.steps for ref in _all_refs(step))

    @property
    def reads_path(self) -> bool:
        """Whether any template reads a path parameter."""
        return any(ref.source == "path" for step in self.steps for ref in _all_refs(step))

    @property
    def upstreams(self) -> set[str]:
        return {step.upstream for step in self.steps}


def build_plan(
    steps: Sequence[StepConfig],
    *,
    merge: MergeMode = "shallow",
    arrays: ArrayMode = "replace",
    errors_key: str | None = None,
    status: int = 200,
    path_params: Collection[str] | None = None,
    upstreams: Collection[str] | None = None,
    where: str = "steps",
) -> Plan:
    """Compile and check ``steps``; raise PlanError listing every problem found."""
    problems: list[Problem] = []
    names = [s.name for s in steps]
    compiled: list[StepPlan] = []
    for index, step in enumerate(steps):
        at = f"{where}[{index}]"
        if names.index(step.name) != index:
            problems.append((f"{at}.name", f"{step.name!r} is already the name of {where}[{names.index(step.name)}]"))
        if step.name in RESERVED:
            problems.append((f"{at}.name", f"{step.name!r} is reserved for templates; choose another name"))
        if upstreams is not None and step.upstream not in upstreams:
            problems.append((f"{at}.upstream", unknown("upstream", step.upstream, upstreams)))
        if step.select is not None and step.drop is not None:
            problems.append((at, "use either `select` or `drop`, not both"))
        plan = _compile_step(step, at, problems)
        if plan is not None:
            compiled.append(plan)
            _check_refs(plan, step, at, set(names), path_params, problems)
    if not problems:
        problems.extend(_cycles(compiled, where))
    if problems:
        raise PlanError(problems)
    return Plan(tuple(compiled), merge, arrays, errors_key, status)


def _compile_step(step: StepConfig, at: str, problems: list[Problem]) -> StepPlan | None:
    before = len(problems)

    def template(text: str, location: str) -> Template:
        try:
            return compile_template(text)
        except ValueError as exc:
            problems.append((location, str(exc)))
            return compile_template("")

    path = template(step.path, f"{at}.path")
    headers = tuple((name, template(value, f"{at}.headers.{name}")) for name, value in step.headers.items())
    when = template(step.when, f"{at}.when") if step.when is not None else None
    body = None
    if step.body is not None:
        try:
            body = compile_json(step.body)
        except ValueError as exc:
            problems.append((f"{at}.body", str(exc)))
    for_each = None
    if step.for_each is not None:
        try:
            for_each = parse_ref(step.for_each.strip("{}"))
        except ValueError as exc:
            problems.append((f"{at}.for_each", str(exc)))
        else:
            if for_each.source not in ("step", "body"):
                problems.append((f"{at}.for_each", "must name a step's array (STEP.dot.path) or a body array"))
    try:
        shape = Shape.compile(pick=step.pick, select=step.select, drop=step.drop, rename=step.rename, into=step.into)
    except ValueError as exc:
        problems.append((f"{at}.pick", str(exc)))
        shape = Shape()
    if len(problems) > before:
        return None
    depends = [r.step for r in _refs_of(path, headers, body, when, for_each) if r.step is not None]
    depends += step.after
    return StepPlan(
        name=step.name, upstream=step.upstream, method=step.method, path=path, headers=headers, body=body,
        when=when, for_each=for_each, max_fanout=step.max_fanout, timeout=step.timeout,
        optional=step.optional or step.fallback is not None, fallback=step.fallback, shape=shape,
        depends_on=tuple(dict.fromkeys(d for d in depends if d != "")),
    )


def _refs_of(path: Template, headers: Sequence[tuple[str, Template]], body: Any, when: Template | None,
             for_each: Ref | None) -> list[Ref]:
    refs = list(path.refs)
    for _, value in headers:
        refs += value.refs
    refs += json_refs(body)
    if when is not None:
        refs += when.refs
    if for_each is not None:
        refs.append(for_each)
    return refs


def _all_refs(step: StepPlan) -> list[Ref]:
    return _refs_of(step.path, step.headers, step.body, step.when, step.for_each)


def _check_refs(plan: StepPlan, step: StepConfig, at: str, names: set[str],
                path_params: Collection[str] | None, problems: list[Problem]) -> None:
    for ref in _all_refs(plan):
        if ref.source == "step" and ref.step not in names:
            problems.append((at, f"{ref} refers to {unknown('step', ref.step or '', names)}"))
        elif ref.source == "item" and plan.for_each is None:
            problems.append((at, f"{ref} is only available in a step with `for_each`"))
        elif ref.source == "path" and path_params is not None and ref.path[0] not in path_params:
            problems.append((at, f"{ref}: the route path has no parameter {ref.path[0]!r}"))
        elif ref.step == step.name:
            problems.append((at, f"{ref}: a step cannot read its own answer"))
    for index, name in enumerate(step.after):
        if name not in names:
            problems.append((f"{at}.after[{index}]", unknown("step", name, names)))


def _cycles(steps: Sequence[StepPlan], where: str) -> list[Problem]:
    graph = {s.name: s.depends_on for s in steps}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        stack.append(name)
        for dep in graph.get(name, ()):
            if state.get(dep) == 1:
                return [*stack[stack.index(dep):], dep]
            if dep not in state and (cycle := visit(dep)) is not None:
                return cycle
        stack.pop()
        state[name] = 2
        return None

    for name in graph:
        if name not in state and (cycle := visit(name)) is not None:
            return [(where, "steps depend on each other in a cycle: " + " → ".join(cycle))]
    return []
