"""``${VAR}`` and ``${VAR:-default}`` in every string of a parsed config (docs/configuration.md)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.envsubst import expand, references

ENV = {"HOST": "db.internal", "PORT": "5432", "EMPTY": "", "TRICKY": "${HOST}"}


def run(value: Any, env: dict[str, str] | None = None) -> tuple[Any, list[tuple[str, str]]]:
    errors: list[tuple[str, str]] = []
    return expand(value, ENV if env is None else env, "", errors), errors


@pytest.mark.parametrize(
    ("raw", "expanded"),
    [
        ("plain", "plain"),
        ("${HOST}", "db.internal"),
        ("redis://${HOST}:${PORT}/0", "redis://db.internal:5432/0"),
        ("${MISSING:-fallback}", "fallback"),
        ("${MISSING:-}", ""),
        ("${MISSING:-a:b/c}", "a:b/c"),
        ("${HOST:-unused}", "db.internal"),
        ("${A:-x}${B:-y}", "xy"),
        ("$HOST", "$HOST"),  # only the braced form is a reference
        ("cost: $5", "cost: $5"),
        ("${TRICKY}", "${HOST}"),  # a value is inserted as is, never expanded again
    ],
)
def test_strings_are_expanded(raw: str, expanded: str) -> None:
    value, errors = run(raw)
    assert value == expanded
    assert errors == []


def test_default_applies_to_a_set_but_empty_variable_like_the_shell() -> None:
    # ``${VAR:-default}`` means "VAR, or default when VAR is unset *or empty*" in every shell,
    # docker compose and envsubst; a blank REDIS_URL must not silently win over the default.
    value, errors = run("${EMPTY:-fallback}")
    assert value == "fallback"
    assert errors == []


def test_a_set_empty_variable_without_default_is_empty_not_an_error() -> None:
    assert run("x${EMPTY}y") == ("xy", [])


def test_nested_tables_and_arrays_are_walked_and_other_types_kept() -> None:
    raw = {
        "gateway": {"redis_url": "redis://${HOST}:${PORT}", "workers": 2, "debug": False},
        "upstreams": {"db": {"targets": ["http://${HOST}:1", "http://${MISSING:-backup}:2"]}},
        "routes": [{"plugins": [{"use": "headers", "request": {"set": {"X-Port": "${PORT}"}}}]}],
        "weights": [1, 2.5],
    }
    value, errors = run(raw)
    assert errors == []
    assert value == {
        "gateway": {"redis_url": "redis://db.internal:5432", "workers": 2, "debug": False},
        "upstreams": {"db": {"targets": ["http://db.internal:1", "http://backup:2"]}},
        "routes": [{"plugins": [{"use": "headers", "request": {"set": {"X-Port": "5432"}}}]}],
        "weights": [1, 2.5],
    }


def test_keys_are_not_expanded() -> None:
    value, _ = run({"${HOST}": "v"})
    assert value == {"${HOST}": "v"}


@pytest.mark.parametrize(
    ("raw", "location"),
    [
        ({"gateway": {"redis_url": "${NOPE}"}}, "gateway.redis_url"),
        ({"consumers": {"alice": {"api_keys": ["ok", "${ALICE_KEY}"]}}}, "consumers.alice.api_keys[1]"),
        ({"routes": [{}, {"plugins": [{"use": "x", "secret": "${NOPE}"}]}]}, "routes[1].plugins[0].secret"),
        ({"a": [[1, "${NOPE}"]]}, "a[0][1]"),
    ],
)
def test_unset_variable_is_a_located_error(raw: Any, location: str) -> None:
    value, errors = run(raw)
    assert len(errors) == 1
    where, message = errors[0]
    assert where == location
    assert "is not set" in message
    assert "${" in message and ":-default}" in message  # tells how to give a default
    assert value is not raw


def test_unset_variable_error_names_the_variable_and_leaves_an_empty_string() -> None:
    value, errors = run({"k": "pre-${ALICE_KEY}-post"})
    assert value == {"k": "pre--post"}
    assert [loc for loc, _ in errors] == ["k"]
    assert "ALICE_KEY" in errors[0][1]


def test_every_unset_variable_is_reported() -> None:
    _, errors = run({"a": "${ONE}", "b": ["${TWO}", "${THREE}"]})
    assert [loc for loc, _ in errors] == ["a", "b[0]", "b[1]"]
    assert [m.split()[2] for _, m in errors] == ["ONE", "TWO", "THREE"]


def test_location_prefix_is_used() -> None:
    errors: list[tuple[str, str]] = []
    expand({"x": "${NOPE}"}, {}, "routes[3]", errors)
    assert errors[0][0] == "routes[3].x"


@pytest.mark.parametrize(
    ("value", "refers"),
    [("${A}", True), ("x${A:-d}y", True), ("plain", False), ("$A", False), (5, False), (None, False)],
)
def test_references(value: object, refers: bool) -> None:
    assert references(value) is refers
