""""Did you mean ...?" for names a config refers to (upstreams, steps, plugins, keys)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def closest(name: str, known: Iterable[str]) -> str | None:
    """The known name most like ``name``, if one is close enough to be a typo."""
    matches = difflib.get_close_matches(name, list(known), n=1)
    return matches[0] if matches else None


def unknown(kind: str, name: str, known: Iterable[str]) -> str:
    """``unknown step 'usr' (did you mean 'user'?)``."""
    close = closest(name, known)
    return f"unknown {kind} {name!r}" + (f" (did you mean {close!r}?)" if close else "")
