"""Step templates: ``{path.id}``, ``{query.q}``, ``{header.X-Tenant}``, ``{body.user.id}``,
``{consumer}``, ``{STEP.dot.path}``, ``{item}`` / ``{item.dot.path}``.

Parsed once when a config is loaded; rendered per request. Pure functions of data.
A value that is missing never becomes a literal ``{...}``: rendering raises
``MissingInput`` (the client's request lacks it: 400) or ``MissingStepData`` (a step's
answer lacks it: that step fails). Rendering with ``guard`` refuses values from those
sources that would put a ``.`` or ``..`` segment into a path however they are decoded
(``UnsafeValue``; the same guard as a proxy route's ``rewrite``). A value that is not
valid Unicode text (a lone surrogate: invalid UTF-8 in a header or query, a ``"\udcff"``
escape in JSON) is refused from every source (``UnsafeValue`` too).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from gateway.normalize import has_dot_segment
from gateway.orchestration.bounded import has_lone_surrogate, is_text, json_strings

CLIENT_SOURCES = frozenset({"path", "query", "header", "body", "consumer"})
RESERVED = CLIENT_SOURCES | {"item"}
# What the dot-segment guard looks at: the client's data everywhere it is rendered, and
# in a step's path also what earlier steps answered.
CLIENT_DATA = frozenset({"path", "query", "header", "body"})
ANY_DATA = CLIENT_DATA | {"step", "item"}
_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")
_MISSING = object()


class MissingInput(LookupError):
    """The client's request lacks a value a template needs."""


class MissingStepData(LookupError):
    """A step's answer lacks a value a template needs."""


DOT_SEGMENT = "may not contain '.' or '..' segments"
NOT_TEXT = "is not valid Unicode text (invalid UTF-8 or a lone surrogate)"


class UnsafeValue(ValueError):
    """A value may not be sent upstream: it would put a ``.`` or ``..`` segment into a path,
    or it is not valid Unicode text."""

    def __init__(self, ref: Ref, why: str = DOT_SEGMENT) -> None:
        super().__init__(f"the value of {ref} {why}")
        self.ref = ref

    @property
    def from_client(self) -> bool:
        return self.ref.source in CLIENT_SOURCES


@dataclass(frozen=True)
class Ref:
    """One ``{...}`` reference: where the value comes from and the path inside it."""

    source: str  # path | query | header | body | consumer | item | step
    step: str | None = None
    path: tuple[str, ...] = ()
    text: str = ""

    def __str__(self) -> str:
        return "{" + self.text + "}"


def parse_ref(text: str) -> Ref:
    """Parse the inside of ``{...}``; raises ValueError for an empty or malformed reference."""
    text = text.strip()
    if not text:
        raise ValueError("empty reference {}")
    head, dot, rest = text.partition(".")
    if not head:
        raise ValueError(f"{{{text}}} has no name before the first dot")
    if head in ("path", "query", "header"):
        if not rest:
            raise ValueError(f"{{{text}}} needs a name, e.g. {{{head}.id}}")
        return Ref(head, path=(rest,), text=text)
    if head == "consumer":
        if rest:
            raise ValueError(f"{{{text}}}: consumer takes no path")
        return Ref("consumer", text=text)
    parts = tuple(rest.split(".")) if dot else ()
    if any(not p for p in parts):
        raise ValueError(f"{{{text}}} has an empty path segment")
    if head in ("body", "item"):
        return Ref(head, path=parts, text=text)
    return Ref("step", step=head, path=parts, text=text)


@dataclass(frozen=True)
class Template:
    """A string with references, compiled once."""

    source: str
    parts: tuple[str | Ref, ...]
    refs: tuple[Ref, ...] = field(default=())

    @property
    def whole(self) -> Ref | None:
        """The reference when the template is exactly one ``{...}`` (its value keeps its JSON type)."""
        only = self.parts[0]
        return only if len(self.parts) == 1 and isinstance(only, Ref) else None

    def render(self, scope: Scope, encode: Callable[[str], str] = lambda s: s,
               guard: frozenset[str] = frozenset()) -> str:
        """The template as text, each value passed through ``encode`` (e.g. URL quoting);
        values from a source in ``guard`` may not carry a dot segment, and no value may be
        invalid text (UnsafeValue)."""
        out = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            text = to_text(scope.lookup(part))
            if not is_text(text):
                raise UnsafeValue(part, NOT_TEXT)
            if part.source in guard and has_dot_segment(text):
                raise UnsafeValue(part)
            out.append(encode(text))
        return "".join(out)

    def value(self, scope: Scope, guard: frozenset[str] = frozenset()) -> Any:
        """The typed value for a whole-reference template, else the rendered string."""
        ref = self.whole
        if ref is None:
            return self.render(scope, guard=guard)
        value = scope.lookup(ref)
        if has_lone_surrogate(value):
            raise UnsafeValue(ref, NOT_TEXT)
        if ref.source in guard and any(has_dot_segment(item) for item in json_strings(value)):
            raise UnsafeValue(ref)
        return value


def compile_template(source: str) -> Template:
    """Compile ``source``; ``{{`` and ``}}`` stand for literal braces."""
    parts: list[str | Ref] = []
    refs: list[Ref] = []
    text = ""
    position = 0
    for match in _TOKEN.finditer(source):
        text += _plain(source[position:match.start()], source)
        position = match.end()
        token = match.group(0)
        if token in ("{{", "}}"):
            text += token[0]
            continue
        if text:
            parts.append(text)
            text = ""
        ref = parse_ref(match.group(1))
        parts.append(ref)
        refs.append(ref)
    text += _plain(source[position:], source)
    if text or not parts:
        parts.append(text)
    return Template(source, tuple(parts), tuple(refs))


def _plain(text: str, source: str) -> str:
    if "{" in text or "}" in text:
        raise ValueError(f"unbalanced brace in {source!r} (write {{{{ or }}}} for a literal brace)")
    return text


def url_part(value: str) -> str:
    """URL-encode a value for a path segment or a query parameter."""
    return quote(value, safe="")


def to_text(value: Any) -> str:
    """A JSON value as it appears in a URL or header."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    return json.dumps(value, separators=(",", ":"))


def dig(value: Any, path: tuple[str, ...]) -> Any:
    """Follow a dot path through objects (and arrays by index); ``_MISSING`` when absent."""
    for key in path:
        if isinstance(value, dict):
            value = value.get(key, _MISSING)
        elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        else:
            return _MISSING
        if value is _MISSING:
            return _MISSING
    return value


class Scope:
    """Everything templates may read for one request: the client's input and step results."""

    __slots__ = ("body", "consumer", "headers", "item", "params", "query", "results")

    def __init__(
        self,
        *,
        params: Mapping[str, str] | None = None,
        query: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        body: Any = _MISSING,
        consumer: str | None = None,
        results: Mapping[str, Any] | None = None,
        item: Any = _MISSING,
    ) -> None:
        self.params = params or {}
        self.query = query or {}
        self.headers = headers or {}
        self.body = body
        self.consumer = consumer
        self.results = results if results is not None else {}
        self.item = item

    def with_item(self, item: Any) -> Scope:
        return Scope(params=self.params, query=self.query, headers=self.headers, body=self.body,
                     consumer=self.consumer, results=self.results, item=item)

    def with_results(self, results: Mapping[str, Any]) -> Scope:
        return Scope(params=self.params, query=self.query, headers=self.headers, body=self.body,
                     consumer=self.consumer, results=results, item=self.item)

    def lookup(self, ref: Ref) -> Any:
        """The value of ``ref``; raises MissingInput / MissingStepData when there is none.

        JSON null counts as missing: it never reaches an upstream as text.
        """
        source = ref.source
        if source == "path":
            value = self.params.get(ref.path[0], _MISSING)
        elif source == "query":
            value = self.query.get(ref.path[0], _MISSING)
        elif source == "header":
            value = self.headers.get(ref.path[0], _MISSING)
        elif source == "consumer":
            value = self.consumer if self.consumer is not None else _MISSING
        elif source == "body":
            value = dig(self.body, ref.path) if self.body is not _MISSING else _MISSING
        elif source == "item":
            value = dig(self.item, ref.path)
        else:
            step = ref.step or ""
            value = dig(self.results[step], ref.path) if step in self.results else _MISSING
        if value is _MISSING or value is None:
            if source in CLIENT_SOURCES:
                raise MissingInput(f"the request has no value for {ref}")
            raise MissingStepData(f"no value for {ref}")
        return value


def render_json(value: Any, scope: Scope, guard: frozenset[str] = frozenset()) -> Any:
    """Render a body table: whole-reference strings keep their JSON type, others become text."""
    if isinstance(value, Template):
        return value.value(scope, guard)
    if isinstance(value, dict):
        return {key: render_json(item, scope, guard) for key, item in value.items()}
    if isinstance(value, list):
        return [render_json(item, scope, guard) for item in value]
    return value


def compile_json(value: Any) -> Any:
    """Compile every string of a body table into a Template (once, at load)."""
    if isinstance(value, str):
        return compile_template(value)
    if isinstance(value, dict):
        return {key: compile_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [compile_json(item) for item in value]
    return value


def json_refs(value: Any) -> list[Ref]:
    """Every reference in a compiled body table."""
    if isinstance(value, Template):
        return list(value.refs)
    if isinstance(value, dict):
        return [ref for item in value.values() for ref in json_refs(item)]
    if isinstance(value, list):
        return [ref for item in value for ref in json_refs(item)]
    return []


def truthy(value: Any) -> bool:
    """``when``: JSON false, null, 0, "", [] and {} are false; so is a missing value."""
    return value not in (False, None, 0, "", [], {})
