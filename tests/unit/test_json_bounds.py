"""Bounded JSON: the nesting depth measured without recursion, invalid UTF-8 and lone
surrogates refused; and what templates, shaping and merging do with such data."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.orchestration import StepCall, bounded, orchestrator_from_steps
from gateway.orchestration.bounded import BadJson, BadText, TooDeep, exceeds_depth, loads_bounded
from gateway.orchestration.engine import StepCaller, StepFailed, StepReply, decode_reply
from gateway.orchestration.merge import merge
from gateway.orchestration.shaping import Shape
from gateway.orchestration.templates import (
    CLIENT_DATA,
    MissingInput,
    Scope,
    UnsafeValue,
    compile_json,
    compile_template,
    render_json,
    url_part,
)


def depth_of(value: Any) -> int:
    """The reference: nesting of a decoded value, recursively."""
    if isinstance(value, dict):
        return 1 + max((depth_of(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth_of(v) for v in value), default=0)
    return 0


def measured(data: bytes) -> int:
    """The smallest limit ``exceeds_depth`` accepts ``data`` under."""
    limit = 0
    while exceeds_depth(data, limit):
        limit += 1
    return limit


def chain(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


@pytest.mark.parametrize(("text", "depth"), [
    ("1", 0),
    ("null", 0),
    ('"a"', 0),
    ('"[[[{{{"', 0),
    ("[]", 1),
    ("{}", 1),
    ("[1, 2, 3]", 1),
    ('{"a": []}', 2),
    ("[[[]]]", 3),
    ("[[], [[]], []]", 3),
    ('{"a": {"b": [1, {"c": null}]}, "d": []}', 4),
    (' \n[ [ ] ,\t[ [ 1 ] ] ]\r\n', 3),
    ('["]]]", "[[[["]', 1),
    ('{"[": {"]": "{"}}', 2),
    (r'["\"[[[", 1]', 1),  # an escaped quote does not end the string
    (r'["\\", [[1]]]', 3),  # an escaped backslash does not escape the quote after it
    (r'["\\\"[[[\\", []]', 2),
    (r'["\\\\", "\\\\\"[[[", []]', 2),
    (r'["\u005b\u005b", [[]]]', 3),  # "\u005b" is "[" once decoded, but inside a string
    ('["é[", {"ü": ["😀"]}]', 3),
    ('[{"": ""}, ""]', 2),
])
def test_depth_table(text: str, depth: int) -> None:
    data = text.encode()
    assert depth_of(json.loads(text)) == depth
    assert measured(data) == depth
    assert not exceeds_depth(data, depth)
    if depth:
        assert exceeds_depth(data, depth - 1)


def test_depth_at_the_limit() -> None:
    assert not exceeds_depth(json.dumps(chain(64)).encode(), 64)
    assert exceeds_depth(json.dumps(chain(65)).encode(), 64)
    assert exceeds_depth(b"[" * 5000 + b"]" * 5000, 64)
    assert exceeds_depth(b"[" * 10_000, 64)  # unterminated: still too deep, not a decoder's recursion


def test_depth_over_many_brackets_and_late_nesting() -> None:
    """Past the counting chunk: many medium-deep groups, the deepest one last."""
    group = json.dumps(chain(60)).encode()
    late = b"[" + b",".join([group] * 200 + [json.dumps(chain(66)).encode()]) + b"]"
    assert len(late.translate(None, b"\"'0123456789,:k ")) > 4 * bounded._CHUNK
    assert measured(late) == 67
    wide = b"[" + b",".join([b'[{"a": [1, [2]]}]'] * 20_000) + b"]"
    assert measured(wide) == 5


@pytest.mark.parametrize("text", [
    "]", "]]]][[[[", "[", '"[[[[', '["a', "[1,,]", '["\\', "[[[]", '"\\"[[[[',
])
def test_invalid_json_is_refused_as_invalid(text: str) -> None:
    assert not exceeds_depth(text.encode(), 3)
    with pytest.raises(BadJson) as caught:
        loads_bounded(text.encode(), 3)
    assert type(caught.value) is BadJson
    assert str(caught.value) == "is not valid JSON"


def test_invalid_json_may_be_called_too_deep_but_is_refused() -> None:
    """Past the first error a decoder reads nothing: counting there can only say more."""
    with pytest.raises(BadJson):
        loads_bounded(b'{"a" [[[[', 3)


json_scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                | st.text() | st.text(alphabet='[]{}"\\:,u0 \u00e9\U0001f600', max_size=12))
json_keys = st.text() | st.text(alphabet='[]{}"\\:,u0 ', max_size=6)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(json_keys, inner, max_size=5),
    max_leaves=40,
)


@st.composite
def documents(draw: st.DrawFn) -> tuple[Any, bytes]:
    value = draw(json_values)
    for wrap_in_list in draw(st.lists(st.booleans(), max_size=80)):
        value = [value] if wrap_in_list else {draw(json_keys): value}
    text = json.dumps(value, ensure_ascii=draw(st.booleans()), indent=draw(st.sampled_from([None, 0, 2])),
                      separators=draw(st.sampled_from([None, (",", ":"), (" , ", " : ")])))
    return value, text.encode("utf-8")


@given(documents())
def test_depth_matches_a_recursive_reference(document: tuple[Any, bytes]) -> None:
    value, data = document
    depth = depth_of(value)
    assert not exceeds_depth(data, depth)
    if depth:
        assert exceeds_depth(data, depth - 1)
    assert loads_bounded(data, depth) == value


@given(st.integers(min_value=0, max_value=3000),
       st.binary(max_size=300) | st.text(alphabet='[]{}"\\:,1 ', max_size=300).map(str.encode))
def test_anything_is_decoded_or_refused_never_a_recursion_error(opening: int, tail: bytes) -> None:
    for data in (b"[" * opening + tail, b'{"a":' * opening + tail, tail + b"[" * opening):
        with contextlib.suppress(BadJson):
            loads_bounded(data, 64)


def test_text_must_be_utf8_without_lone_surrogates() -> None:
    assert loads_bounded(rb'{"a": "\ud83d\ude00", "b": "\\udcff"}') == {"a": "\U0001f600", "b": "\\udcff"}
    assert loads_bounded('\ufeff{"a": "é"}'.encode()) == {"a": "é"}
    refused = [b'"\xff"', b'"caf\xe9"', b'"\xed\xb3\xbf"', '"é"'.encode("utf-16"),
               rb'"\udcff"', rb'["a", "\ud800"]', rb'{"\udfff": 1}', rb'"\ud83d\u0041"', rb'"\ude00\ud83d"']
    for data in refused:
        with pytest.raises(BadText):
            loads_bounded(data)


def test_too_deep_is_refused_before_decoding() -> None:
    with pytest.raises(TooDeep, match="nested deeper than 64 levels"):
        loads_bounded(b"[" * 5000 + b"]" * 5000)
    # A limit above what the decoder can recurse to still ends in TooDeep, not RecursionError.
    with pytest.raises(TooDeep, match="nested deeper than 100000 levels"):
        loads_bounded(b"[" * 50_000 + b"]" * 50_000, 100_000)


def test_a_step_answer_beyond_the_limit_fails_the_step() -> None:
    ok = StepReply(200, json.dumps(chain(64)).encode(), "application/json")
    assert decode_reply(ok) == chain(64)
    for body, error in ((json.dumps(chain(65)).encode(), "the upstream's answer is nested deeper than 64 levels"),
                        (rb'{"id": "\udcff"}', "the upstream's answer contains a lone surrogate"),
                        (b'{"id": "\xff"}', "the upstream's answer is not valid UTF-8"),
                        (b"{", "the upstream's answer is not valid JSON")):
        with pytest.raises(StepFailed) as caught:
            decode_reply(StepReply(200, body, "application/json"))
        assert caught.value.status == 502
        assert caught.value.message.startswith(error)
    with pytest.raises(StepFailed):
        decode_reply(StepReply(200, b"[[[1]]]", "application/json"), 2)


# --- templates ------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["header", "query", "path"])
def test_templates_refuse_text_that_is_not_unicode(source: str) -> None:
    scope = Scope(params={"x": "a\udcffb"}, query={"x": "a\udcffb"}, headers={"x": "a\udcffb"})
    template = compile_template(f"/items/{{{source}.x}}")
    with pytest.raises(UnsafeValue) as caught:
        template.render(scope, url_part)
    assert caught.value.from_client
    assert "is not valid Unicode text" in str(caught.value)
    with pytest.raises(UnsafeValue):
        compile_template(f"{{{source}.x}}").value(scope)
    fine = Scope(params={"x": "café"}, query={"x": "café"}, headers={"x": "café"})
    assert template.render(fine, url_part) == "/items/caf%C3%A9"


def test_templates_refuse_lone_surrogates_in_step_data_and_bodies() -> None:
    scope = Scope(body={"a": {"b": ["\ud800"]}}, results={"user": {"id": "\udcff", "ok": "x"}})
    with pytest.raises(UnsafeValue) as caught:
        compile_template("/u/{user.id}").render(scope, url_part)
    assert not caught.value.from_client
    with pytest.raises(UnsafeValue):
        render_json(compile_json({"whole": "{body.a}"}), scope, CLIENT_DATA)
    assert compile_template("/u/{user.ok}").render(scope, url_part) == "/u/x"
    with pytest.raises(MissingInput):
        compile_template("{body.missing}").render(scope)


# --- shaping, merging and rendering at the depth limit ---------------------------------------------


def test_shaping_merging_and_rendering_handle_data_at_the_limit() -> None:
    deep = {"top": chain(63)}
    objects = json.loads('{"k": ' * 64 + "1" + "}" * 64)
    others = json.loads('{"k": ' * 63 + '{"j": [2]}' + "}" * 63)
    merged = merge([objects, others], "deep", "concat")  # recurses all the way down
    assert merged == json.loads('{"k": ' * 63 + '{"k": 1, "j": [2]}' + "}" * 63)
    assert merge([deep, {"top": chain(63, leaf=2)}], "deep") == {"top": chain(63, leaf=2)}
    shape = Shape.compile(select=["top"], drop=["top.zzz"], rename={"top": "renamed"}, into="a.b")
    assert shape.apply(deep) == {"a": {"b": {"renamed": deep["top"]}}}
    lists = json.loads("[" * 64 + "1" + "]" * 64)
    assert Shape.compile(select=["x"]).apply(lists) == lists
    assert Shape.compile(drop=["x"], rename={"x": "y"}).apply(lists) == lists
    assert Shape.compile(pick="top").apply(deep) == deep["top"]
    body = render_json(compile_json({"nested": {"value": "{body.v}"}}), Scope(body={"v": deep}), CLIENT_DATA)
    assert json.loads(json.dumps(body)) == {"nested": {"value": deep}}


# --- the engine as a library --------------------------------------------------------------------------


def _answer(body: bytes) -> tuple[StepCaller, list[StepCall]]:
    calls: list[StepCall] = []

    async def caller(call: StepCall) -> StepReply:
        calls.append(call)
        return StepReply(200, body, "application/json")

    return caller, calls


async def test_the_library_engine_has_a_depth_limit_by_default() -> None:
    steps = [{"name": "a", "upstream": "u", "path": "/a", "into": "a"}]
    caller, _ = _answer(json.dumps(chain(65)).encode())
    result = await orchestrator_from_steps(steps).run(Scope(), caller, budget=1.0)
    assert (result.status, result.failed_step) == (502, "a")
    assert result.detail == "step 'a' failed: the upstream's answer is nested deeper than 64 levels"
    result = await orchestrator_from_steps(steps, max_json_depth=65).run(Scope(), caller, budget=1.0)
    assert result.status == 200
    assert result.body == {"a": chain(65)}


async def test_when_reading_invalid_text_from_the_client_is_a_bad_request() -> None:
    steps = [{"name": "a", "upstream": "u", "path": "/a", "when": "{header.X-Flag}"}]
    caller, calls = _answer(b"{}")
    result = await orchestrator_from_steps(steps).run(Scope(headers={"X-Flag": "\udcff"}), caller, budget=1.0)
    assert result.status == 400
    assert "is not valid Unicode text" in (result.detail or "")
    assert calls == []
