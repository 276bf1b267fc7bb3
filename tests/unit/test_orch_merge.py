"""Merging step results (docs/orchestration.md): shallow / deep, arrays replace / concat, declaration order wins."""

from __future__ import annotations

import copy
import json
import random
from typing import Any

import pytest

from gateway.orchestration.merge import ArrayMode, MergeMode, NotAnObject, merge


def merged(results: list[Any], mode: MergeMode = "shallow", arrays: ArrayMode = "replace") -> dict[str, Any]:
    """Merge and check that no input was modified."""
    before = copy.deepcopy(results)
    out = merge(results, mode, arrays)
    assert results == before, "an input was modified"
    return out


# --- shallow -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("results", "expected"),
    [
        ([], {}),
        ([{}], {}),
        ([{"a": 1}], {"a": 1}),
        ([{"a": 1}, {"b": 2}], {"a": 1, "b": 2}),
        ([{"a": 1}, {"a": 2}, {"a": 3}], {"a": 3}),  # later wins
        ([{"a": 1, "b": 1}, {"b": 2}, {"c": 3}], {"a": 1, "b": 2, "c": 3}),
        # top level only: a later object replaces an earlier one whole
        ([{"u": {"name": "n", "age": 1}}, {"u": {"age": 2}}], {"u": {"age": 2}}),
        ([{"t": [1, 2]}, {"t": [3]}], {"t": [3]}),
        ([{"a": {"b": 1}}, {"a": None}], {"a": None}),
    ],
)
def test_shallow(results: list[Any], expected: dict[str, Any]) -> None:
    assert merged(results, "shallow") == expected


def test_shallow_ignores_array_concat() -> None:
    assert merged([{"t": [1]}, {"t": [2]}], "shallow", "concat") == {"t": [2]}


# --- deep ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("results", "expected"),
    [
        ([], {}),
        ([{"u": {"name": "n", "addr": {"city": "P"}}}, {"u": {"addr": {"zip": "Z"}, "age": 3}}],
         {"u": {"name": "n", "addr": {"city": "P", "zip": "Z"}, "age": 3}}),
        ([{"a": {"b": {"c": 1, "d": 1}}}, {"a": {"b": {"d": 2}}}, {"a": {"b": {"e": 3}}}],
         {"a": {"b": {"c": 1, "d": 2, "e": 3}}}),
        ([{"a": 1}, {"a": 2}], {"a": 2}),
        # arrays are replaced by default
        ([{"t": [1, 2]}, {"t": [3]}], {"t": [3]}),
        ([{"a": {"t": [1]}}, {"a": {"t": [2], "x": 1}}], {"a": {"t": [2], "x": 1}}),
        # scalar vs object: later wins
        ([{"a": 1}, {"a": {"b": 2}}], {"a": {"b": 2}}),
        ([{"a": {"b": 2}}, {"a": 1}], {"a": 1}),
        ([{"a": {"b": 2}}, {"a": None}], {"a": None}),
        ([{"a": {"b": 2}}, {"a": [1]}], {"a": [1]}),
        ([{"a": [1]}, {"a": {"b": 2}}], {"a": {"b": 2}}),
    ],
)
def test_deep(results: list[Any], expected: dict[str, Any]) -> None:
    assert merged(results, "deep") == expected


@pytest.mark.parametrize(
    ("results", "expected"),
    [
        ([{"t": [1, 2]}, {"t": [3]}], {"t": [1, 2, 3]}),
        ([{"t": [1]}, {"t": [2]}, {"t": [3]}], {"t": [1, 2, 3]}),
        ([{"a": {"t": [{"id": 1}]}}, {"a": {"t": [{"id": 2}]}}], {"a": {"t": [{"id": 1}, {"id": 2}]}}),
        ([{"t": [1]}, {"u": [2]}], {"t": [1], "u": [2]}),
        # an array meets a non-array: later wins
        ([{"t": [1]}, {"t": "x"}], {"t": "x"}),
        ([{"t": "x"}, {"t": [1]}], {"t": [1]}),
        ([{"t": [1]}, {"t": {"k": 1}}], {"t": {"k": 1}}),
    ],
)
def test_deep_concat(results: list[Any], expected: dict[str, Any]) -> None:
    assert merged(results, "deep", "concat") == expected


def test_deep_merge_does_not_mutate_shared_nested_objects() -> None:
    first = {"u": {"a": {"x": 1}, "t": [1]}}
    second = {"u": {"a": {"y": 2}, "t": [2]}}
    third = {"u": {"a": {"z": 3}, "t": [3]}}
    out = merged([first, second, third], "deep", "concat")
    assert out == {"u": {"a": {"x": 1, "y": 2, "z": 3}, "t": [1, 2, 3]}}
    assert first == {"u": {"a": {"x": 1}, "t": [1]}}
    assert second == {"u": {"a": {"y": 2}, "t": [2]}}


# --- non-objects ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["shallow", "deep"])
@pytest.mark.parametrize(
    "results",
    [[1], ["s"], [[1, 2]], [True], [{"a": 1}, [1]], [{"a": 1}, "x", {"b": 2}]],
)
def test_non_object_result_cannot_be_merged(results: list[Any], mode: MergeMode) -> None:
    with pytest.raises(NotAnObject):
        merge(results, mode)
    assert issubclass(NotAnObject, TypeError)


# --- determinism ---------------------------------------------------------------------------

DECLARED = ["user", "orders", "prefs", "late"]
ANSWERS: dict[str, dict[str, Any]] = {
    "user": {"name": "Ada", "shared": "user", "meta": {"from": "user", "user": True}, "list": ["u"]},
    "orders": {"orders": [1, 2], "shared": "orders", "meta": {"from": "orders", "orders": True}, "list": ["o"]},
    "prefs": {"theme": "dark", "meta": {"prefs": True}, "list": ["p"]},
    "late": {"shared": "late", "meta": {"from": "late"}, "list": ["l"]},
}


@pytest.mark.parametrize(("mode", "arrays"), [("shallow", "replace"), ("deep", "replace"), ("deep", "concat")])
def test_declaration_order_decides_whatever_the_arrival_order(mode: MergeMode, arrays: ArrayMode) -> None:
    rng = random.Random(20240601)
    outputs: set[str] = set()
    arrival_orders: set[tuple[str, ...]] = set()
    for _ in range(20):
        arrival = DECLARED[:]
        rng.shuffle(arrival)
        arrival_orders.add(tuple(arrival))
        arrived: dict[str, Any] = {}
        for name in arrival:  # each answer produced independently (a fresh decode of the upstream's JSON)
            arrived[name] = json.loads(json.dumps(ANSWERS[name]))
        out = merged([arrived[name] for name in DECLARED], mode, arrays)
        outputs.add(json.dumps(out))
    assert len(arrival_orders) > 1  # the answers really arrived in different orders
    assert len(outputs) == 1
    out = json.loads(outputs.pop())
    assert out["shared"] == "late"  # the last declared step wins, not the last to arrive
    if mode == "deep":
        assert out["meta"] == {"from": "late", "user": True, "orders": True, "prefs": True}
        assert out["list"] == (["u", "o", "p", "l"] if arrays == "concat" else ["l"])
    else:
        assert out["meta"] == {"from": "late"}
        assert out["list"] == ["l"]


def test_order_of_results_matters() -> None:
    # the merge is not commutative: the engine must pass results in declaration order
    forward = merge([ANSWERS["user"], ANSWERS["late"]], "deep", "concat")
    backward = merge([ANSWERS["late"], ANSWERS["user"]], "deep", "concat")
    assert forward["shared"] == "late"
    assert backward["shared"] == "user"
    assert forward["list"] == ["u", "l"]
    assert backward["list"] == ["l", "u"]


@pytest.mark.parametrize("mode", ["shallow", "deep"])
def test_null_results_add_nothing(mode: MergeMode) -> None:
    assert merge([{"a": 1}, None, {"b": 2}], mode) == {"a": 1, "b": 2}
    assert merge([None], mode) == {}
