"""Parsing JSON the gateway does not trust (a client's body, an upstream's answer) within
bounds: nesting no deeper than a limit, text that is valid UTF-8 without lone surrogates.

The depth is measured before decoding and without recursion, so a 5000-deep document is
refused cheaply instead of reaching the recursive decoder (a RecursionError).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from itertools import accumulate
from typing import Any

DEFAULT_MAX_DEPTH = 64

_NOT_MARKS = bytes(b for b in range(256) if b not in b'"[]{}')  # all but quotes and brackets
_BRACKETS = bytes.maketrans(b"{}", b"[]")  # one kind is enough to measure nesting
_CHUNK = 4096  # brackets summed at a time, so a too-deep document is refused early
_SIGNS = bytes.maketrans(b"[]", b"\x01\xff")  # as signed bytes: +1 and -1
# Only an escape can make a lone surrogate (strict UTF-8 refuses encoded ones).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


class BadJson(ValueError):
    """JSON the gateway refuses; the message completes "the request body ..."."""


class TooDeep(BadJson):
    """Arrays and objects nested deeper than the limit."""


class BadText(BadJson):
    """Not valid UTF-8, or a string with a lone surrogate."""


def exceeds_depth(data: bytes, max_depth: int) -> bool:
    """Whether arrays and objects in the JSON text ``data`` nest deeper than ``max_depth``
    (``1`` and ``"a"`` have depth 0, ``[]`` and ``{"a": 1}`` depth 1).

    Exact for valid JSON. For invalid JSON it never reports less than a decoder reaches
    before it finds the error, so after a ``False`` decoding cannot recurse deeper.
    Linear in ``len(data)``, without recursion.
    """
    if data.count(b"[") + data.count(b"{") <= max_depth:  # brackets in strings only add
        return False
    if b'\\"' in data:  # an escaped quote, or an escaped backslash before a string's end
        # Escaped backslashes pair up from the left of each run; a backslash left before a
        # quote escapes it. Neither may be taken for a string's end.
        data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    marks = data.translate(_BRACKETS, _NOT_MARKS)  # quotes and brackets only, all brackets "[" or "]"
    # Two quotes in a row enclose no bracket, whichever string they open or close, so they
    # go; between strings is then every other piece.
    brackets = marks.replace(b'""', b"")
    if b'"' in brackets:
        brackets = b"".join(brackets.split(b'"')[::2])
    # Each round removes every innermost pair "[]", which lowers the nesting of a balanced
    # sequence by exactly one and of any other by at most one; the rounds plus the nesting
    # of what is left are then exact for valid JSON and never less for invalid JSON.
    rounds = 0
    while rounds + brackets.count(b"[") > max_depth:
        if rounds > max_depth:
            return True
        inner = brackets.replace(b"[]", b"")
        if len(inner) == len(brackets):
            break
        rounds += 1
        slow = len(inner) * 4 > len(brackets) * 3  # under a quarter removed: count instead
        brackets = inner
        if slow:
            break
    else:
        return False
    return _nesting_exceeds(brackets, max_depth - rounds)


def _nesting_exceeds(brackets: bytes, limit: int) -> bool:
    """Whether running through ``[`` (+1) and ``]`` (-1) ever goes above ``limit``."""
    signs = memoryview(brackets.translate(_SIGNS)).cast("b")
    depth = 0
    for start in range(0, len(signs), _CHUNK):
        chunk = signs[start:start + _CHUNK]
        if max(accumulate(chunk, initial=depth)) > limit:
            return True
        depth += sum(chunk)
    return False


def loads_bounded(data: bytes, max_depth: int = DEFAULT_MAX_DEPTH) -> Any:
    """Decode the JSON text ``data`` (UTF-8; a leading byte order mark is ignored).

    Raises TooDeep beyond ``max_depth``, BadText for invalid UTF-8 or a lone surrogate
    (``"\\udcff"``) in any string or key, BadJson for anything else that is not JSON.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise BadText("is not valid UTF-8") from None
    if exceeds_depth(data, max_depth):
        raise TooDeep(f"is nested deeper than {max_depth} levels")
    try:
        value = json.loads(text[1:] if text.startswith("\ufeff") else text)
    except RecursionError:  # only when max_depth is above what the interpreter allows
        raise TooDeep(f"is nested deeper than {max_depth} levels") from None
    except ValueError:
        raise BadJson("is not valid JSON") from None
    if b"\\u" in data and _SURROGATE_ESCAPE.search(data) is not None and has_lone_surrogate(value):
        raise BadText("contains a lone surrogate (a \\uD800-\\uDFFF escape that is not part of a pair)")
    return value


def is_text(value: str) -> bool:
    """Whether ``value`` can be encoded as UTF-8 (it has no lone surrogate)."""
    return value.isascii() or _SURROGATE.search(value) is None


def json_strings(value: Any) -> Iterator[str]:
    """Every string in a decoded JSON value, keys included; no recursion."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)


def has_lone_surrogate(value: Any) -> bool:
    """Whether any string (or key) in a decoded JSON value has a lone surrogate."""
    return not all(is_text(item) for item in json_strings(value))
