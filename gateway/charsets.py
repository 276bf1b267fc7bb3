"""Character classes of a parsed ``re`` pattern as sorted, disjoint code-point intervals,
exactly as ``re`` reads them (``\\d``, ``\\w``, negations, IGNORECASE, ASCII): what
gateway.path_regex compares when it asks whether two positions of a route pattern can
read the same character."""

from __future__ import annotations

import functools
import importlib
import re
import sys
from collections.abc import Iterable
from typing import Any

_constants: Any = importlib.import_module("re._constants")
_casefix: Any = importlib.import_module("re._casefix")

Intervals = tuple[tuple[int, int], ...]  # sorted, disjoint, inclusive code point ranges
ALL: Intervals = ((0, sys.maxunicode),)


def normalize(ranges: Iterable[tuple[int, int]]) -> Intervals:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return tuple(out)


def complement(ranges: Intervals) -> Intervals:
    out: list[tuple[int, int]] = []
    start = 0
    for lo, hi in ranges:
        if lo > start:
            out.append((start, lo - 1))
        start = hi + 1
    if start <= sys.maxunicode:
        out.append((start, sys.maxunicode))
    return tuple(out)


@functools.cache
def every_character() -> str:
    return "".join(map(chr, range(sys.maxunicode + 1)))


@functools.cache
def category(name: str, ascii_only: bool) -> Intervals:
    """The code points of ``\\d``, ``\\w``, ``\\s`` (and their negations) as ``re`` reads them."""
    base = name.removeprefix("CATEGORY_").removeprefix("UNI_").removeprefix("LOC_")
    negated = base.startswith("NOT_")
    base = base.removeprefix("NOT_")
    if ascii_only:
        table = {"DIGIT": "0-9", "WORD": "A-Za-z0-9_", "SPACE": " \\t\\n\\r\\f\\v", "LINEBREAK": "\\n"}
    else:
        table = {"DIGIT": "\\d", "WORD": "\\w", "SPACE": "\\s", "LINEBREAK": "\\n"}
    if base not in table:
        return ALL
    found = normalize((m.start(), m.end() - 1) for m in re.finditer(f"[{table[base]}]+", every_character()))
    return complement(found) if negated else found


def case_variants(code: int) -> set[int]:
    char = chr(code)
    out = {code}
    for variant in (char.lower(), char.upper(), char.swapcase(), char.casefold(), char.title()):
        if len(variant) == 1:
            out.add(ord(variant))
    for other in list(out):
        out.update(_casefix._EXTRA_CASES.get(other, ()))
        lowered = chr(other).lower()
        if len(lowered) == 1:
            out.update(_casefix._EXTRA_CASES.get(ord(lowered), ()))
    return out


def fold(ranges: Intervals) -> Intervals:
    """``ranges`` widened by every case variant of its members (IGNORECASE)."""
    if sum(hi - lo + 1 for lo, hi in ranges) > 5000:
        return ALL
    codes = {variant for lo, hi in ranges for code in range(lo, hi + 1) for variant in case_variants(code)}
    return normalize((code, code) for code in codes)


def flag(flags: int, name: str) -> bool:
    return bool(flags & getattr(_constants, name))


def literal(code: int, flags: int) -> Intervals:
    ranges = ((code, code),)
    return fold(ranges) if flag(flags, "SRE_FLAG_IGNORECASE") else ranges


def charset(items: Any, flags: int) -> Intervals:
    """An ``IN`` node: ``[...]``, ``\\d``, ``[^/]``."""
    negate = False
    ranges: list[tuple[int, int]] = []
    ascii_only = flag(flags, "SRE_FLAG_ASCII")
    for op, arg in items:
        name = str(op)
        if name == "NEGATE":
            negate = True
        elif name == "LITERAL":
            ranges.append((arg, arg))
        elif name == "RANGE":
            ranges.append((arg[0], arg[1]))
        elif name == "CATEGORY":
            ranges.extend(category(str(arg), ascii_only))
        else:
            return ALL
    members = normalize(ranges)
    if negate:
        # Under IGNORECASE a negated class matches fewer characters than without: ignoring
        # the flag only widens it.
        return complement(members)
    return fold(members) if flag(flags, "SRE_FLAG_IGNORECASE") else members
