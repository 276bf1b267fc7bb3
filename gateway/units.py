"""Parsing of the human units used in routes.toml: durations ("250ms") and sizes ("10MiB")."""

from __future__ import annotations

import re

_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h)\s*$")
_DURATION_FACTORS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

_SIZE = re.compile(r"^\s*([0-9]+)\s*(B|KB|MB|GB|KiB|MiB|GiB)?\s*$")
_SIZE_FACTORS = {
    None: 1,
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
}


def parse_duration(value: object) -> float:
    """Return seconds for a duration string such as "250ms", "5s", "1m" or "2h"."""
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(f'must be a duration string such as "250ms" or "5s", got {value!r}')
    match = _DURATION.match(value)
    if match is None:
        raise ValueError(f'must be a duration such as "250ms", "5s", "1m" or "2h", got {value!r}')
    return float(match.group(1)) * _DURATION_FACTORS[match.group(2)]


def parse_size(value: object) -> int:
    """Return bytes for an integer or a size string such as "10MiB" or "512KB"."""
    if isinstance(value, bool):
        raise ValueError(f"must be a size in bytes or a string such as \"10MiB\", got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"must not be negative, got {value}")
        return value
    if isinstance(value, str):
        match = _SIZE.match(value)
        if match is not None:
            return int(match.group(1)) * _SIZE_FACTORS[match.group(2)]
    raise ValueError(f'must be a size in bytes or a string such as "10MiB", got {value!r}')


def format_duration(seconds: float) -> str:
    """Render seconds back in the shortest routes.toml form ("250ms", "5s", "1m")."""
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{int(seconds // 3600)}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    if seconds >= 1 and float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{round(seconds * 1000, 3):g}ms"
