"""Merging step results into one JSON object, deterministic in declaration order:
a later step wins a key conflict, whoever answered first."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

MergeMode = Literal["shallow", "deep"]
ArrayMode = Literal["replace", "concat"]


class NotAnObject(TypeError):
    """A result that is not a JSON object cannot be merged (give the step an ``into``)."""


def merge(results: Sequence[Any], mode: MergeMode = "shallow", arrays: ArrayMode = "replace") -> dict[str, Any]:
    """Merge results in the order given (``None`` adds nothing); inputs are never modified."""
    out: dict[str, Any] = {}
    for result in results:
        if result is None:  # a 204 (null) adds nothing
            continue
        if not isinstance(result, dict):
            raise NotAnObject(f"a {type(result).__name__} cannot be merged into the response object")
        if mode == "shallow":
            out.update(result)
        else:
            out = _deep(out, result, arrays)
    return out


def _deep(base: dict[str, Any], extra: dict[str, Any], arrays: ArrayMode) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if key not in out:
            out[key] = value
            continue
        current = out[key]
        if isinstance(current, dict) and isinstance(value, dict):
            out[key] = _deep(current, value, arrays)
        elif arrays == "concat" and isinstance(current, list) and isinstance(value, list):
            out[key] = current + value
        else:
            out[key] = value
    return out
