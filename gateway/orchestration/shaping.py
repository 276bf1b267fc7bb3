"""Shaping a step's JSON, in this order: ``pick`` (JMESPath), ``select`` (keep dot-paths)
or ``drop`` (remove dot-paths), ``rename`` (old → new), ``into`` (nest under a key).

Pure functions; each returns a new value and leaves its input untouched. ``select`` and
``drop`` apply to every element when they meet an array.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jmespath
from jmespath.parser import ParsedResult

PathTree = dict[str, "PathTree | None"]  # None marks the end of a path


def path_tree(paths: Sequence[str]) -> PathTree:
    """``["a.b", "a.c", "d"]`` → ``{"a": {"b": None, "c": None}, "d": None}``."""
    tree: PathTree = {}
    for path in paths:
        node = tree
        keys = path.split(".")
        for key in keys[:-1]:
            child = node.get(key, {})
            if child is None:  # "a" and "a.b": keeping/dropping "a" already covers "a.b"
                break
            node[key] = child
            node = child
        else:
            node[keys[-1]] = None
    return tree


def select(value: Any, tree: PathTree) -> Any:
    """Keep only the paths in ``tree``, nesting kept: ``{"address": {"city": ...}}``."""
    if isinstance(value, list):
        return [select(item, tree) for item in value]
    if not isinstance(value, dict):
        return value
    out = {}
    for key, sub in tree.items():
        if key not in value:
            continue
        if sub is None:
            out[key] = value[key]
        elif isinstance(value[key], (dict, list)):  # a path through a scalar is missing, not kept
            out[key] = select(value[key], sub)
    return out


def drop(value: Any, tree: PathTree) -> Any:
    """Remove the paths in ``tree``."""
    if isinstance(value, list):
        return [drop(item, tree) for item in value]
    if not isinstance(value, dict):
        return value
    out = dict(value)
    for key, sub in tree.items():
        if key not in out:
            continue
        if sub is None:
            del out[key]
        else:
            out[key] = drop(out[key], sub)
    return out


def rename(value: Any, renames: Mapping[str, str]) -> Any:
    """Move each ``old`` dot-path to ``new`` (objects only; arrays: every element)."""
    if isinstance(value, list):
        return [rename(item, renames) for item in value]
    if not isinstance(value, dict):
        return value
    out = _copy_objects(value)
    moving = []
    for old, new in renames.items():  # take every old value first, so swapping two names works
        found, moved = _pop(out, old.split("."))
        if found:
            moving.append((new, moved))
    for new, moved in moving:
        _put(out, new.split("."), moved)
    return out


def nest(value: Any, into: str) -> dict[str, Any]:
    """``into = "a.b"`` → ``{"a": {"b": value}}``."""
    for key in reversed(into.split(".")):
        value = {key: value}
    return value  # type: ignore[no-any-return]


def _copy_objects(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy_objects(v) for k, v in value.items()}
    return value


def _pop(obj: dict[str, Any], keys: list[str]) -> tuple[bool, Any]:
    for key in keys[:-1]:
        obj = obj.get(key)  # type: ignore[assignment]
        if not isinstance(obj, dict):
            return False, None
    if keys[-1] not in obj:
        return False, None
    return True, obj.pop(keys[-1])


def _put(obj: dict[str, Any], keys: list[str], value: Any) -> None:
    for key in keys[:-1]:
        child = obj.get(key)
        if not isinstance(child, dict):
            child = obj[key] = {}
        obj = child
    obj[keys[-1]] = value


@dataclass(frozen=True)
class Shape:
    """A step's shaping, compiled once."""

    pick: ParsedResult | None = None
    select: PathTree | None = None
    drop: PathTree | None = None
    rename: Mapping[str, str] | None = None
    into: str | None = None

    @classmethod
    def compile(
        cls,
        *,
        pick: str | None = None,
        select: Sequence[str] | None = None,
        drop: Sequence[str] | None = None,
        rename: Mapping[str, str] | None = None,
        into: str | None = None,
    ) -> Shape:
        """Compile the options; raises ValueError for a bad JMESPath expression."""
        try:
            compiled = jmespath.compile(pick) if pick else None
        except jmespath.exceptions.JMESPathError as exc:
            raise ValueError(f"not a valid JMESPath expression: {exc}") from None
        return cls(
            compiled,
            path_tree(select) if select is not None else None,
            path_tree(drop) if drop is not None else None,
            dict(rename) if rename else None,
            into,
        )

    def apply(self, value: Any) -> Any:
        """Shape one step's decoded JSON."""
        if self.pick is not None:
            value = self.pick.search(value)
        if self.select is not None:
            value = select(value, self.select)
        if self.drop is not None:
            value = drop(value, self.drop)
        if self.rename:
            value = rename(value, self.rename)
        return self.wrap(value)

    def wrap(self, value: Any) -> Any:
        """Only the ``into`` part (what a fallback gets)."""
        return nest(value, self.into) if self.into else value
