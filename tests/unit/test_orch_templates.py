"""Step templates (docs/orchestration.md): compiling, references, URL encoding, typed values, lookups, truthiness."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.orchestration.templates import (
    MissingInput,
    MissingStepData,
    Ref,
    Scope,
    compile_json,
    compile_template,
    json_refs,
    parse_ref,
    render_json,
    to_text,
    truthy,
    url_part,
)

# --- compile_template ---------------------------------------------------------------------


def test_plain_text_has_no_references() -> None:
    template = compile_template("/users/all?limit=10")
    assert template.parts == ("/users/all?limit=10",)
    assert template.refs == ()
    assert template.whole is None
    assert template.render(Scope()) == "/users/all?limit=10"


def test_empty_template_renders_empty() -> None:
    template = compile_template("")
    assert template.refs == ()
    assert template.render(Scope()) == ""


def test_references_and_text_are_split_in_order() -> None:
    template = compile_template("/users/{path.id}/orders?q={query.q}&t={user.tenant.id}")
    path_id = Ref("path", path=("id",), text="path.id")
    query_q = Ref("query", path=("q",), text="query.q")
    tenant = Ref("step", step="user", path=("tenant", "id"), text="user.tenant.id")
    assert template.parts == ("/users/", path_id, "/orders?q=", query_q, "&t=", tenant)
    assert template.refs == (path_id, query_q, tenant)
    assert template.whole is None


def test_adjacent_references() -> None:
    template = compile_template("{path.a}{path.b}")
    assert [str(ref) for ref in template.refs] == ["{path.a}", "{path.b}"]
    assert template.render(Scope(params={"a": "1", "b": "2"})) == "12"


# source -> what it renders as with {path.id} = 7
DOUBLED_BRACES = {
    "/x{{/{path.id}": "/x{/7",  # escape before a reference
    "{{{path.id}": "{7",  # escaped brace right before a reference
    "{path.id}}}": "7}",  # escape after a reference
    "{{{path.id}}}": "{7}",  # a reference between literal braces
    "{{literal}}": "{literal}",  # escapes only, no reference at all
    "a{{b": "a{b",
    "/a}}": "/a}",
    "{{}}": "{}",
    '{{"json": {path.id}}}': '{"json": 7}',
}


@pytest.mark.parametrize(("source", "expected"), DOUBLED_BRACES.items())
def test_doubled_braces_are_literal_braces(source: str, expected: str) -> None:
    assert compile_template(source).render(Scope(params={"id": "7"})) == expected


def test_escaped_reference_is_not_a_reference() -> None:
    template = compile_template("/x/{{path.id}}/y")
    assert template.refs == ()
    assert template.render(Scope()) == "/x/{path.id}/y"


@pytest.mark.parametrize(
    "source",
    [
        "{path.id",
        "path.id}",
        "{",
        "}",
        "/a}",
        "/a{b",
        "{path.id}}",  # one stray closing brace after a reference
        "{path.id}{",  # one stray opening brace after a reference
        "/x{/{path.id}",  # a stray opening brace before a reference
        "/a}/{path.id}",  # a stray closing brace before a reference
        "{{{path.id",  # literal brace, then an unclosed reference
        "{path.{id}}",
    ],
)
def test_unbalanced_braces_are_rejected(source: str) -> None:
    with pytest.raises(ValueError, match=r"brace|reference|empty|segment"):
        compile_template(source)


@pytest.mark.parametrize("source", ["{}", "/x/{}", "{ }", "a{}b"])
def test_empty_reference_is_rejected(source: str) -> None:
    with pytest.raises(ValueError, match="empty"):
        compile_template(source)


# --- parse_ref -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("path.id", Ref("path", path=("id",), text="path.id")),
        ("query.q", Ref("query", path=("q",), text="query.q")),
        ("header.X-Tenant", Ref("header", path=("X-Tenant",), text="header.X-Tenant")),
        ("body", Ref("body", path=(), text="body")),
        ("body.user.id", Ref("body", path=("user", "id"), text="body.user.id")),
        ("body.items.0", Ref("body", path=("items", "0"), text="body.items.0")),
        ("consumer", Ref("consumer", text="consumer")),
        ("item", Ref("item", path=(), text="item")),
        ("item.sku", Ref("item", path=("sku",), text="item.sku")),
        ("item.price.amount", Ref("item", path=("price", "amount"), text="item.price.amount")),
        ("user", Ref("step", step="user", path=(), text="user")),
        ("user.address.city", Ref("step", step="user", path=("address", "city"), text="user.address.city")),
        ("user.items.0.id", Ref("step", step="user", path=("items", "0", "id"), text="user.items.0.id")),
        ("  path.id  ", Ref("path", path=("id",), text="path.id")),
    ],
)
def test_parse_ref_sources(text: str, expected: Ref) -> None:
    ref = parse_ref(text)
    assert ref == expected
    assert str(ref) == "{" + expected.text + "}"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "path",  # needs a name
        "query",
        "header",
        "path.",
        "consumer.name",  # consumer takes no path
        "user..id",  # empty segment
        "body..id",
        "item..sku",
        "user.id.",  # trailing empty segment
        "user.",
        "body.",
        "item.",
        ".id",  # no source / step name
    ],
)
def test_parse_ref_rejects_malformed_references(text: str) -> None:
    with pytest.raises(ValueError):
        parse_ref(text)


# --- render: URL encoding ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        ("plain", "plain"),
        ("a b", "a%20b"),
        ("a/b", "a%2Fb"),
        ("x&y=1", "x%26y%3D1"),
        ("what?", "what%3F"),
        ("#frag", "%23frag"),
        ("100%", "100%25"),
        ("a+b", "a%2Bb"),
        ("café", "caf%C3%A9"),
        ("日本", "%E6%97%A5%E6%9C%AC"),
        ("../admin", "..%2Fadmin"),
    ],
)
def test_render_url_encodes_values_not_text(value: str, encoded: str) -> None:
    template = compile_template("/search/{query.q}?q={query.q}&page=1 /x")
    rendered = template.render(Scope(query={"q": value}), url_part)
    assert rendered == f"/search/{encoded}?q={encoded}&page=1 /x"


def test_url_part_is_the_encoder() -> None:
    assert url_part("a b/c?d&e") == "a%20b%2Fc%3Fd%26e"


def test_render_without_encoder_keeps_values_raw() -> None:
    template = compile_template("Bearer {header.Authorization}")
    assert template.render(Scope(headers={"Authorization": "a b/c"})) == "Bearer a b/c"


def test_render_encodes_typed_values_as_text() -> None:
    template = compile_template("/u/{user.id}?active={user.active}&tags={user.tags}")
    scope = Scope(results={"user": {"id": 42, "active": True, "tags": ["a", "b"]}})
    assert template.render(scope, url_part) == "/u/42?active=true&tags=%5B%22a%22%2C%22b%22%5D"


# --- value: typed whole references ---------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("n", 42),
        ("f", 1.5),
        ("yes", True),
        ("no", False),
        ("s", "text"),
        ("obj", {"a": [1, 2], "b": {"c": None}}),
        ("arr", [1, "two", False]),
    ],
)
def test_whole_reference_keeps_json_type(field: str, expected: Any) -> None:
    data = {"n": 42, "f": 1.5, "yes": True, "no": False, "s": "text",
            "obj": {"a": [1, 2], "b": {"c": None}}, "arr": [1, "two", False]}
    template = compile_template("{a." + field + "}")
    assert template.whole is not None
    value = template.value(Scope(results={"a": data}))
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("n={a.n}", "n=42"),
        (" {a.n}", " 42"),
        ("{a.n} ", "42 "),
        ("{a.n}{a.n}", "4242"),
        ("{a.yes}!", "true!"),
        ("obj:{a.obj}", 'obj:{"k":[1,2]}'),
    ],
)
def test_mixed_template_value_is_text(source: str, expected: str) -> None:
    template = compile_template(source)
    assert template.whole is None
    value = template.value(Scope(results={"a": {"n": 42, "yes": True, "obj": {"k": [1, 2]}}}))
    assert value == expected


# --- to_text -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (True, "true"),
        (False, "false"),
        (0, "0"),
        (42, "42"),
        (-3, "-3"),
        (1.5, "1.5"),
        ("already text", "already text"),
        ("", ""),
        ({"a": 1, "b": [1, 2]}, '{"a":1,"b":[1,2]}'),
        ([1, "x", None], '[1,"x",null]'),
        ({}, "{}"),
    ],
)
def test_to_text(value: Any, text: str) -> None:
    assert to_text(value) == text


# --- Scope.lookup --------------------------------------------------------------------------


def full_scope() -> Scope:
    return Scope(
        params={"id": "7"},
        query={"q": "shoes"},
        headers={"X-Tenant": "acme"},
        body={"user": {"id": 5, "tags": ["a", "b"]}, "items": [{"id": "i0"}, {"id": "i1"}]},
        consumer="mobile-app",
        results={"user": {"id": 9, "items": [{"id": 10}, {"id": 11}], "zero": 0, "no": False}},
        item={"sku": "S-1", "n": 3},
    )


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{path.id}", "7"),
        ("{query.q}", "shoes"),
        ("{header.X-Tenant}", "acme"),
        ("{body.user.id}", 5),
        ("{body.user.tags}", ["a", "b"]),
        ("{body.items.1.id}", "i1"),
        ("{consumer}", "mobile-app"),
        ("{item.sku}", "S-1"),
        ("{item}", {"sku": "S-1", "n": 3}),
        ("{user.id}", 9),
        ("{user.items.0.id}", 10),
        ("{user.items.1.id}", 11),
        ("{user.zero}", 0),  # 0 and false are values, not missing
        ("{user.no}", False),
    ],
)
def test_lookup_finds_values(source: str, expected: Any) -> None:
    assert compile_template(source).value(full_scope()) == expected


@pytest.mark.parametrize(
    ("source", "scope"),
    [
        ("{path.id}", Scope()),
        ("{path.id}", Scope(params={"other": "1"})),
        ("{query.q}", Scope(query={"Q": "case matters"})),
        ("{header.X-Tenant}", Scope()),
        ("{body.user.id}", Scope()),  # no body at all
        ("{body.user.id}", Scope(body={"user": {}})),
        ("{body.user.id}", Scope(body={"user": {"id": None}})),  # null is missing
        ("{body.user.id}", Scope(body={"user": "flat"})),
        ("{body}", Scope(body=None)),
        ("{body.items.5}", Scope(body={"items": [1]})),
        ("{consumer}", Scope()),
    ],
)
def test_missing_client_values_raise_missing_input(source: str, scope: Scope) -> None:
    template = compile_template(source)
    with pytest.raises(MissingInput) as info:
        template.render(scope)
    assert not isinstance(info.value, MissingStepData)
    with pytest.raises(MissingInput):
        template.value(scope)


@pytest.mark.parametrize(
    ("source", "results"),
    [
        ("{user.id}", {}),  # the step has not answered
        ("{user.id}", {"user": {}}),
        ("{user.id}", {"user": {"id": None}}),  # null is missing
        ("{user}", {"user": None}),  # a 204 answer is null
        ("{user.id}", {"user": [{"id": 1}]}),  # an array has no key "id"
        ("{user.id}", {"user": "text"}),
        ("{user.items.2.id}", {"user": {"items": [{"id": 1}, {"id": 2}]}}),  # index out of range
        ("{user.items.x}", {"user": {"items": [1]}}),
        ("{user.a.b.c}", {"user": {"a": {"b": {}}}}),
        ("{other.id}", {"user": {"id": 1}}),
    ],
)
def test_missing_step_values_raise_missing_step_data(source: str, results: dict[str, Any]) -> None:
    template = compile_template(source)
    scope = Scope(results=results)
    with pytest.raises(MissingStepData) as info:
        template.render(scope)
    assert not isinstance(info.value, MissingInput)
    with pytest.raises(MissingStepData):
        template.value(scope)


@pytest.mark.parametrize(("source", "item"), [("{item.sku}", {"name": "x"}), ("{item.sku}", {"sku": None})])
def test_missing_item_values_are_step_data(source: str, item: Any) -> None:
    with pytest.raises(MissingStepData):
        compile_template(source).render(Scope().with_item(item))


def test_missing_value_never_renders_as_literal_reference() -> None:
    template = compile_template("/orders?user={user.id}&q={query.q}")
    with pytest.raises(LookupError):
        template.render(Scope(query={"q": "x"}), url_part)
    with pytest.raises(LookupError):
        template.render(Scope(results={"user": {"id": 1}}), url_part)


def test_with_item_keeps_the_rest_of_the_scope() -> None:
    scope = full_scope().with_item({"sku": "S-2"})
    assert compile_template("{path.id}/{item.sku}/{user.id}").render(scope) == "7/S-2/9"


# --- body tables ---------------------------------------------------------------------------


def test_render_json_nested_tables_and_arrays() -> None:
    table = {
        "user": "{u.id}",
        "greeting": "Hello {u.name}",
        "flags": {"active": "{u.active}", "tags": ["{u.tags}", "x-{u.id}", 3, True, None]},
        "profile": "{u.profile}",
        "query": "{query.q}",
        "number": 5,
        "literal": "no refs",
    }
    compiled = compile_json(table)
    scope = Scope(
        query={"q": "7"},
        results={"u": {"id": 7, "name": "Bob", "active": False, "tags": ["a", "b"], "profile": {"age": 3}}},
    )
    rendered = render_json(compiled, scope)
    assert rendered == {
        "user": 7,
        "greeting": "Hello Bob",
        "flags": {"active": False, "tags": [["a", "b"], "x-7", 3, True, None]},
        "profile": {"age": 3},
        "query": "7",
        "number": 5,
        "literal": "no refs",
    }
    assert type(rendered["user"]) is int
    assert rendered["flags"]["active"] is False
    assert sorted(str(ref) for ref in json_refs(compiled)) == sorted(
        ["{u.id}", "{u.name}", "{u.active}", "{u.tags}", "{u.id}", "{u.profile}", "{query.q}"]
    )
    assert table["user"] == "{u.id}"  # the config table itself is left alone


def test_render_json_raises_for_missing_values() -> None:
    compiled = compile_json({"a": {"b": ["{u.missing}"]}})
    with pytest.raises(MissingStepData):
        render_json(compiled, Scope(results={"u": {}}))


def test_compile_json_rejects_bad_templates_deep_inside() -> None:
    with pytest.raises(ValueError):
        compile_json({"a": [{"b": "{unclosed"}]})


# --- truthy --------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [False, None, 0, 0.0, "", [], {}])
def test_falsy_values(value: Any) -> None:
    assert truthy(value) is False


@pytest.mark.parametrize("value", [True, 1, -1, 0.5, "0", "false", "null", " ", [0], [False], {"a": None}, "no"])
def test_truthy_values(value: Any) -> None:
    assert truthy(value) is True
