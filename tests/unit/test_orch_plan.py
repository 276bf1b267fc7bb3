"""Planning a route's steps (docs/orchestration.md): dependencies, located config errors, cycles."""

from __future__ import annotations

import itertools
from collections.abc import Collection
from typing import Any

import pytest

from gateway.config_model import StepConfig
from gateway.orchestration.plan import Plan, PlanError, StepPlan, build_plan


def step(name: str, path: str = "/x", upstream: str = "u", **options: Any) -> StepConfig:
    return StepConfig.model_validate({"name": name, "upstream": upstream, "path": path, **options})


def problems_of(steps: list[StepConfig], **options: Any) -> list[tuple[str, str]]:
    with pytest.raises(PlanError) as info:
        build_plan(steps, **options)
    error = info.value
    assert isinstance(error, ValueError)
    assert error.problems, "a PlanError lists its problems"
    for location, message in error.problems:
        assert f"{location}: {message}" in str(error)
    return error.problems


def find(problems: list[tuple[str, str]], *fragments: str) -> tuple[str, str]:
    """The one problem whose message contains every fragment."""
    matching = [p for p in problems if all(f in p[1] for f in fragments)]
    assert len(matching) == 1, f"expected one problem with {fragments} in {problems}"
    return matching[0]


def by_name(plan: Plan) -> dict[str, StepPlan]:
    return {s.name: s for s in plan.steps}


# --- dependencies --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"path": "/b/{a.id}"},
        {"path": "/b?x={a}"},
        {"headers": {"X-Token": "Bearer {a.token}"}},
        {"body": {"outer": {"list": ["{a.id}"]}}},
        {"when": "{a.enabled}"},
        {"for_each": "a.items", "path": "/b/{item.id}"},
        {"for_each": "{a.items}", "path": "/b/{item}"},
        {"after": ["a"]},
    ],
)
def test_dependency_sources(options: dict[str, Any]) -> None:
    plan = build_plan([step("a"), step("b", **options)])
    steps = by_name(plan)
    assert steps["b"].depends_on == ("a",)
    assert steps["a"].depends_on == ()


def test_dependencies_are_collected_from_every_field_once() -> None:
    plan = build_plan([
        step("a"), step("c"), step("d"), step("e"),
        step("b", path="/b/{a.id}/{a.other}", headers={"X": "{c.y}"}, body={"k": "{e.z}"}, after=["d", "a"]),
    ])
    depends = by_name(plan)["b"].depends_on
    assert sorted(depends) == ["a", "c", "d", "e"]
    assert len(depends) == len(set(depends))


def test_client_references_are_not_dependencies() -> None:
    plan = build_plan(
        [step("a", path="/x/{path.id}?q={query.q}", headers={"X-T": "{header.X-Tenant}", "X-C": "{consumer}"},
              body={"b": "{body.user.id}"})],
        path_params=["id"],
    )
    assert plan.steps[0].depends_on == ()


def test_steps_keep_declaration_order() -> None:
    plan = build_plan([step("z", path="/z/{a.id}"), step("a"), step("m")])
    assert [s.name for s in plan.steps] == ["z", "a", "m"]


def test_plan_options_are_kept() -> None:
    plan = build_plan([step("a")], merge="deep", arrays="concat", errors_key="_errors", status=207)
    assert (plan.merge, plan.arrays, plan.errors_key, plan.status) == ("deep", "concat", "_errors", 207)
    default = build_plan([step("a")])
    assert (default.merge, default.arrays, default.errors_key, default.status) == ("shallow", "replace", None, 200)


# --- reference problems --------------------------------------------------------------------


def test_unknown_step_reference_suggests_a_name() -> None:
    problems = problems_of([step("user"), step("orders", path="/orders?u={usr.id}")])
    location, message = find(problems, "'usr'")
    assert location.startswith("steps[1]")
    assert "unknown step" in message
    assert "did you mean 'user'" in message


def test_unknown_step_reference_without_a_close_name() -> None:
    problems = problems_of([step("user"), step("orders", headers={"X": "{zzzzzz.id}"})])
    _, message = find(problems, "'zzzzzz'")
    assert "did you mean" not in message


def test_unknown_after() -> None:
    problems = problems_of([step("user"), step("orders", after=["user", "usre"])])
    location, message = find(problems, "'usre'")
    assert location == "steps[1].after[1]"
    assert "did you mean 'user'" in message


def test_item_without_for_each() -> None:
    problems = problems_of([step("a", path="/a/{item.id}")])
    location, message = find(problems, "{item.id}")
    assert location.startswith("steps[0]")
    assert "for_each" in message


def test_path_reference_must_be_a_route_parameter() -> None:
    problems = problems_of([step("a", path="/a/{path.uid}")], path_params=["id"])
    location, message = find(problems, "'uid'")
    assert location.startswith("steps[0]")
    assert "{path.uid}" in message
    build_plan([step("a", path="/a/{path.id}")], path_params=["id"])  # a real parameter is fine
    build_plan([step("a", path="/a/{path.uid}")])  # unknown route: not checked


@pytest.mark.parametrize(
    "options",
    [{"path": "/a/{a.id}"}, {"headers": {"X": "{a.token}"}}, {"body": {"x": "{a}"}}, {"when": "{a.ok}"}],
)
def test_self_reference(options: dict[str, Any]) -> None:
    problems = problems_of([step("a", **options)])
    location, message = find(problems, "own answer")
    assert location.startswith("steps[0]")
    assert "{a" in message


def test_after_itself_is_rejected() -> None:
    problems_of([step("a", after=["a"])])


@pytest.mark.parametrize("name", ["path", "query", "header", "body", "consumer", "item"])
def test_reserved_step_names(name: str) -> None:
    problems = problems_of([step(name)])
    location, message = find(problems, "reserved")
    assert location == "steps[0].name"
    assert repr(name) in message


def test_duplicate_step_names() -> None:
    problems = problems_of([step("a"), step("b"), step("a")])
    location, message = find(problems, "already")
    assert location == "steps[2].name"
    assert "steps[0]" in message


def test_unknown_upstream() -> None:
    problems = problems_of([step("a", upstream="user")], upstreams={"users", "orders"})
    location, message = find(problems, "'user'")
    assert location == "steps[0].upstream"
    assert "unknown upstream" in message
    assert "did you mean 'users'" in message
    build_plan([step("a", upstream="users")], upstreams={"users"})


def test_select_and_drop_together() -> None:
    problems = problems_of([step("a", select=["x"], drop=["y"])])
    location, _ = find(problems, "select", "drop")
    assert location == "steps[0]"


@pytest.mark.parametrize("expression", ["foo[", "a..b", "[["])
def test_bad_jmespath_in_pick(expression: str) -> None:
    problems = problems_of([step("ok"), step("a", pick=expression)])
    location, _ = find(problems, "JMESPath")
    assert location == "steps[1].pick"


@pytest.mark.parametrize("for_each", ["query.q", "path.id", "header.X", "consumer", "item", "", "a..b"])
def test_bad_for_each(for_each: str) -> None:
    problems = problems_of([step("a"), step("b", for_each=for_each)], path_params=["id"])
    assert any(location == "steps[1].for_each" for location, _ in problems)


# --- cycles --------------------------------------------------------------------------------


def cycle_in(problems: list[tuple[str, str]], where: str = "steps") -> list[str]:
    location, message = find(problems, "cycle")
    assert location == where
    names = [name.strip() for name in message.split("cycle:", 1)[1].split("→")]
    assert names[0] == names[-1], f"not a closed cycle: {message}"
    return names


def test_two_step_cycle() -> None:
    names = cycle_in(problems_of([step("a", path="/a/{b.id}"), step("b", path="/b/{a.id}")]))
    assert sorted(names[:-1]) == ["a", "b"]


def test_three_step_cycle_is_reported_with_its_path() -> None:
    steps = [
        step("start"),  # not in the cycle
        step("a", path="/a/{b.id}"),
        step("b", headers={"X": "{c.id}"}),
        step("c", after=["a", "start"]),
    ]
    names = cycle_in(problems_of(steps, where="routes[3].steps"), "routes[3].steps")
    assert sorted(names[:-1]) == ["a", "b", "c"]
    edges = {("a", "b"), ("b", "c"), ("c", "a")}  # x depends on y
    pairs = set(itertools.pairwise(names))
    assert pairs == edges or pairs == {(y, x) for x, y in edges}


def test_cycle_through_after_and_when() -> None:
    names = cycle_in(problems_of([step("a", when="{b.ok}"), step("b", after=["a"])]))
    assert sorted(names[:-1]) == ["a", "b"]


def test_diamond_is_not_a_cycle() -> None:
    plan = build_plan([
        step("root"), step("left", path="/l/{root.id}"), step("right", path="/r/{root.id}"),
        step("join", path="/j/{left.id}/{right.id}"),
    ])
    assert sorted(by_name(plan)["join"].depends_on) == ["left", "right"]


# --- locations -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"path": "/a/{path.id"}, "path"),
        ({"path": "/a/{}"}, "path"),
        ({"headers": {"X-A": "{oops"}}, "headers.X-A"),
        ({"when": "{}"}, "when"),
        ({"body": {"a": ["{unclosed"]}}, "body"),
        ({"for_each": "query.q"}, "for_each"),
        ({"pick": "foo["}, "pick"),
    ],
)
def test_locations_name_the_field(options: dict[str, Any], field: str) -> None:
    problems = problems_of([step("first"), step("second", **options)], where="routes[0].steps")
    assert any(location == f"routes[0].steps[1].{field}" for location, _ in problems), problems


def test_reference_problems_are_located_under_the_step() -> None:
    problems = problems_of([step("first"), step("second", path="/s/{frist.id}")], where="routes[0].steps")
    location, _ = find(problems, "'frist'")
    assert location.startswith("routes[0].steps[1]")


def test_every_problem_is_reported_at_once() -> None:
    problems = problems_of(
        [step("a", upstream="nope"), step("a"), step("body"), step("c", path="/c/{zz.id}"), step("d", pick="[[")],
        upstreams={"u"},
    )
    locations = {location for location, _ in problems}
    assert {"steps[0].upstream", "steps[1].name", "steps[2].name", "steps[4].pick"} <= locations
    assert any(location.startswith("steps[3]") for location in locations)


# --- per step and per plan -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "optional", "has_fallback"),
    [
        ({}, False, False),
        ({"optional": True}, True, False),
        ({"fallback": {"items": []}}, True, True),
        ({"fallback": []}, True, True),
        ({"fallback": False}, True, True),
        ({"optional": True, "fallback": {"x": 1}}, True, True),
    ],
)
def test_a_step_with_a_fallback_is_optional(options: dict[str, Any], optional: bool, has_fallback: bool) -> None:
    compiled = build_plan([step("a", **options)]).steps[0]
    assert compiled.optional is optional
    assert compiled.has_fallback is has_fallback


def test_step_fields_are_compiled() -> None:
    compiled = build_plan([
        step("a"),
        step("b", method="POST", path="/b/{a.id}", headers={"X": "{a.t}"}, body={"k": "{a.id}"}, when="{a.ok}",
             for_each="a.items", max_fanout=7, timeout="250ms", pick="x", into="out"),
    ]).steps[1]
    assert compiled.method == "POST"
    assert compiled.upstream == "u"
    assert compiled.path.source == "/b/{a.id}"
    assert [name for name, _ in compiled.headers] == ["X"]
    assert compiled.when is not None and compiled.when.source == "{a.ok}"
    assert compiled.for_each is not None and (compiled.for_each.step, compiled.for_each.path) == ("a", ("items",))
    assert compiled.max_fanout == 7
    assert compiled.timeout == pytest.approx(0.25)
    assert compiled.shape.into == "out"


@pytest.mark.parametrize(
    ("steps", "reads_body"),
    [
        ([step("a")], False),
        ([step("a", path="/a/{path.id}?q={query.q}", headers={"X": "{header.H}"})], False),
        ([step("a"), step("b", body={"user": "{body.user.id}"})], True),
        ([step("a", path="/a/{body.id}")], True),
        ([step("a", headers={"X": "{body}"})], True),
        ([step("a", when="{body.flag}")], True),
        ([step("a", for_each="body.items", path="/a/{item}")], True),
        ([step("a", body={"user": "{a2.id}"}), step("a2")], False),
    ],
)
def test_reads_body(steps: list[StepConfig], reads_body: bool) -> None:
    assert build_plan(steps).reads_body is reads_body


@pytest.mark.parametrize(
    ("upstreams", "expected"),
    [(["users"], {"users"}), (["users", "orders", "users"], {"users", "orders"})],
)
def test_upstreams(upstreams: list[str], expected: Collection[str]) -> None:
    plan = build_plan([step(f"s{i}", upstream=name) for i, name in enumerate(upstreams)])
    assert plan.upstreams == set(expected)
