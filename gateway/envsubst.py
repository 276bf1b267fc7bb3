"""Expansion of ``${VAR}`` and ``${VAR:-default}`` in every string of a parsed config."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")


def expand(
    value: Any, env: Mapping[str, str], path: str, errors: list[tuple[str, str]]
) -> Any:
    """Return ``value`` with every environment reference expanded.

    ``${VAR:-default}`` takes the default when VAR is unset or empty, as in the shell.
    Walks tables and arrays; a reference to an unset variable without a default is recorded in
    ``errors`` as ``(location, message)`` and left as an empty string.
    """
    if isinstance(value, str):
        if "${" not in value:
            return value

        def replace(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            found = env.get(name)
            if found:
                return found
            if default is not None:  # like the shell: ":-" covers unset and empty
                return default
            if found is not None:
                return found
            errors.append((path, f"environment variable {name} is not set (use ${{{name}:-default}} for a default)"))
            return ""

        return _REF.sub(replace, value)
    if isinstance(value, dict):
        return {
            key: expand(item, env, f"{path}.{key}" if path else str(key), errors)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [expand(item, env, f"{path}[{index}]", errors) for index, item in enumerate(value)]
    return value


def references(value: Any) -> bool:
    """Tell whether a raw config string refers to the environment (and so may hold a secret)."""
    return isinstance(value, str) and _REF.search(value) is not None
