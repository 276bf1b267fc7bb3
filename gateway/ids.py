"""Request ids: keep a sane incoming one, else make one."""

from __future__ import annotations

import os
import re

_SANE_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,200}$")


def new_request_id() -> str:
    return os.urandom(16).hex()


def sane_request_id(value: str | None) -> str | None:
    """An incoming request id worth keeping (1-200 printable, header-safe characters), else None."""
    return value if value is not None and _SANE_ID.match(value) else None
