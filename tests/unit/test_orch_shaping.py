"""Shaping a step's JSON (docs/orchestration.md): pick → select/drop → rename → into; inputs never mutated."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from gateway.orchestration.shaping import PathTree, Shape, drop, nest, path_tree, rename, select

USER: dict[str, Any] = {
    "id": 1,
    "name": "Ada",
    "secret": "s3cr3t",
    "address": {"city": "Paris", "zip": "75001", "geo": {"lat": 48.8, "lon": 2.3}},
    "tags": ["a", "b"],
}

ORDERS: dict[str, Any] = {
    "total": 2,
    "items": [
        {"id": 10, "price": {"amount": 5, "currency": "EUR"}, "internal": "x"},
        {"id": 11, "price": {"amount": 7, "currency": "EUR"}, "internal": "y"},
    ],
}


def unchanged(function: Callable[[Any], Any], value: Any) -> Any:
    """Call ``function(value)`` and check that ``value`` was left exactly as it was."""
    before = copy.deepcopy(value)
    result = function(value)
    assert value == before, "the input was modified"
    return result


# --- path_tree -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("paths", "tree"),
    [
        ([], {}),
        (["a"], {"a": None}),
        (["a.b", "a.c", "d"], {"a": {"b": None, "c": None}, "d": None}),
        (["a.b.c"], {"a": {"b": {"c": None}}}),
        (["a", "a.b"], {"a": None}),  # "a" covers "a.b"
        (["a.b", "a"], {"a": None}),  # whatever the order
        (["a.b.c", "a.b"], {"a": {"b": None}}),
        (["a.b", "a.b.c"], {"a": {"b": None}}),
        (["a.b", "a.b"], {"a": {"b": None}}),
    ],
)
def test_path_tree(paths: list[str], tree: PathTree) -> None:
    assert path_tree(paths) == tree


# --- select --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "paths", "expected"),
    [
        (USER, ["address.city"], {"address": {"city": "Paris"}}),
        (USER, ["name", "address.city"], {"name": "Ada", "address": {"city": "Paris"}}),
        (USER, ["address.geo.lat", "id"], {"address": {"geo": {"lat": 48.8}}, "id": 1}),
        (USER, ["address"], {"address": USER["address"]}),
        (USER, ["tags"], {"tags": ["a", "b"]}),
        # overlapping paths: the shorter one keeps everything under it
        (USER, ["address", "address.city"], {"address": USER["address"]}),
        (USER, ["address.city", "address"], {"address": USER["address"]}),
        # missing paths are ignored
        (USER, ["nope", "name"], {"name": "Ada"}),
        (USER, ["nope.deep"], {}),
        ({}, ["a.b"], {}),
        # arrays: every element
        (ORDERS, ["items.id"], {"items": [{"id": 10}, {"id": 11}]}),
        (ORDERS, ["items.price.amount", "total"],
         {"total": 2, "items": [{"price": {"amount": 5}}, {"price": {"amount": 7}}]}),
        ([{"id": 1, "x": 2}, {"id": 3, "x": 4}], ["id"], [{"id": 1}, {"id": 3}]),
        ([{"a": {"b": 1, "c": 2}}, {"a": {"b": 3, "d": 4}}], ["a.b"], [{"a": {"b": 1}}, {"a": {"b": 3}}]),
    ],
)
def test_select_keeps_nesting(value: Any, paths: list[str], expected: Any) -> None:
    assert unchanged(lambda v: select(v, path_tree(paths)), value) == expected


def test_select_path_through_a_scalar_is_missing() -> None:
    # "a.b" does not exist when "a" is a string: nothing is kept (the string must not leak)
    value = {"a": "not an object", "c": 1}
    assert unchanged(lambda v: select(v, path_tree(["a.b"])), value) == {}


# --- drop ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "paths", "expected"),
    [
        (USER, ["secret"], {k: v for k, v in USER.items() if k != "secret"}),
        (USER, ["secret", "address", "tags"], {"id": 1, "name": "Ada"}),
        (USER, ["address.geo", "address.zip", "secret", "tags"],
         {"id": 1, "name": "Ada", "address": {"city": "Paris"}}),
        (USER, ["address.geo.lat"],
         {**USER, "address": {"city": "Paris", "zip": "75001", "geo": {"lon": 2.3}}}),
        # overlapping paths
        ({"a": {"b": 1, "c": 2}, "d": 3}, ["a", "a.b"], {"d": 3}),
        ({"a": {"b": 1, "c": 2}, "d": 3}, ["a.b", "a"], {"d": 3}),
        # missing paths are ignored
        ({"a": {"b": 1}, "d": 3}, ["x", "a.zz", "d.e", "x.y.z"], {"a": {"b": 1}, "d": 3}),
        # arrays: every element
        (ORDERS, ["items.internal", "items.price.currency"],
         {"total": 2, "items": [{"id": 10, "price": {"amount": 5}}, {"id": 11, "price": {"amount": 7}}]}),
        ([{"id": 1, "x": 2}, {"id": 3}], ["x"], [{"id": 1}, {"id": 3}]),
    ],
)
def test_drop(value: Any, paths: list[str], expected: Any) -> None:
    assert unchanged(lambda v: drop(v, path_tree(paths)), value) == expected


# --- rename --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "renames", "expected"),
    [
        ({"id": 1, "n": "x"}, {"id": "user_id"}, {"user_id": 1, "n": "x"}),
        ({"a": {"b": 1, "c": 2}}, {"a.b": "x"}, {"a": {"c": 2}, "x": 1}),
        ({"id": 1}, {"id": "user.id"}, {"user": {"id": 1}}),
        ({"a": {"b": 1}}, {"a.b": "c.d"}, {"a": {}, "c": {"d": 1}}),
        ({"id": 1, "user": {"name": "n"}}, {"id": "user.id"}, {"user": {"name": "n", "id": 1}}),
        ({"a": [1, 2]}, {"a": "b"}, {"b": [1, 2]}),
        ({"a": 1, "b": 2}, {"a": "x", "b": "y"}, {"x": 1, "y": 2}),
        # missing old paths are ignored
        ({"a": 1}, {"zz": "y", "a.b": "q", "q.r.s": "t"}, {"a": 1}),
        # arrays: every element
        ([{"id": 1}, {"id": 2, "x": 0}, {"x": 5}], {"id": "key"}, [{"key": 1}, {"key": 2, "x": 0}, {"x": 5}]),
        ([{"p": {"a": 1}}, {"p": {"a": 2}}], {"p.a": "amount"}, [{"p": {}, "amount": 1}, {"p": {}, "amount": 2}]),
        # not an object: untouched
        ("text", {"a": "b"}, "text"),
        (None, {"a": "b"}, None),
    ],
)
def test_rename(value: Any, renames: dict[str, str], expected: Any) -> None:
    assert unchanged(lambda v: rename(v, renames), value) == expected


# --- nest ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "into", "expected"),
    [
        (5, "x", {"x": 5}),
        ({"a": 1}, "user", {"user": {"a": 1}}),
        ([1, 2], "a.b.c", {"a": {"b": {"c": [1, 2]}}}),
        (None, "a.b", {"a": {"b": None}}),
    ],
)
def test_nest(value: Any, into: str, expected: Any) -> None:
    assert unchanged(lambda v: nest(v, into), value) == expected


# --- Shape ---------------------------------------------------------------------------------


@pytest.mark.parametrize("expression", ["[[", "foo[", "a..b", "items[?", "`"])
def test_shape_compile_rejects_bad_jmespath(expression: str) -> None:
    with pytest.raises(ValueError, match="JMESPath"):
        Shape.compile(pick=expression)


def test_shape_without_options_is_identity() -> None:
    shape = Shape.compile()
    assert unchanged(shape.apply, USER) == USER


ENVELOPE: dict[str, Any] = {"data": {"user": USER}, "meta": {"took": 3}}


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"pick": "data.user.address"}, USER["address"]),
        ({"pick": "data.user.tags[0]"}, "a"),
        ({"pick": "data.nothing"}, None),
        # pick runs before select: select paths are relative to the picked value
        ({"pick": "data.user", "select": ["id", "address.city"]}, {"id": 1, "address": {"city": "Paris"}}),
        # select runs before rename: the selected field is renamed
        ({"select": ["meta.took"], "rename": {"meta.took": "ms"}}, {"meta": {}, "ms": 3}),
        # drop runs before rename
        ({"pick": "data.user", "drop": ["secret", "address", "tags"], "rename": {"name": "full_name"}},
         {"id": 1, "full_name": "Ada"}),
        # rename runs before into: rename paths do not include the `into` prefix
        ({"pick": "data.user", "select": ["id"], "rename": {"id": "user_id"}, "into": "profile"},
         {"profile": {"user_id": 1}}),
        ({"pick": "data.user", "select": ["name", "address.city"], "rename": {"address.city": "city"},
          "into": "a.b"}, {"a": {"b": {"name": "Ada", "address": {}, "city": "Paris"}}}),
        ({"into": "raw"}, {"raw": ENVELOPE}),
        ({"pick": "data.user.address.[city, zip]", "into": "place"}, {"place": ["Paris", "75001"]}),
    ],
)
def test_shape_apply_order(options: dict[str, Any], expected: Any) -> None:
    shape = Shape.compile(**options)
    assert unchanged(shape.apply, ENVELOPE) == expected


def test_shape_apply_projection_then_select_on_each_element() -> None:
    shape = Shape.compile(pick="items", select=["id", "price.amount"], into="lines")
    assert unchanged(shape.apply, ORDERS) == {
        "lines": [{"id": 10, "price": {"amount": 5}}, {"id": 11, "price": {"amount": 7}}]
    }


def test_rename_before_select_would_lose_the_field() -> None:
    # guards the order: if rename ran first, select(["name"]) would find nothing
    shape = Shape.compile(select=["name"], rename={"name": "n"})
    assert shape.apply({"name": "Ada", "x": 1}) == {"n": "Ada"}


def test_shape_wrap_only_nests() -> None:
    shape = Shape.compile(pick="data", select=["a"], drop=None, rename={"a": "b"}, into="x.y")
    fallback = {"secret": 1, "a": 2}
    assert unchanged(shape.wrap, fallback) == {"x": {"y": {"secret": 1, "a": 2}}}
    assert Shape.compile(select=["a"]).wrap(fallback) == fallback


def test_shape_apply_never_mutates_nested_input() -> None:
    value = copy.deepcopy(ENVELOPE)
    shape = Shape.compile(pick="data.user", drop=["address.geo"], rename={"address.city": "town.name", "id": "uid"})
    result = unchanged(shape.apply, value)
    assert result == {
        "uid": 1, "name": "Ada", "secret": "s3cr3t", "tags": ["a", "b"],
        "address": {"zip": "75001"}, "town": {"name": "Paris"},
    }
    assert value["data"]["user"]["address"]["geo"] == {"lat": 48.8, "lon": 2.3}
