"""Request ids: keep a sane incoming one, else make one."""

from __future__ import annotations

import random
import re

_SANE_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,200}$")


def new_request_id() -> str:
    """128 random bits as 32 hex digits. Request ids are for correlation, not secrets, so
    the PRNG (no system call per request) is enough."""
    return f"{random.getrandbits(128):032x}"


def sane_request_id(value: str | None) -> str | None:
    """An incoming request id worth keeping (1-200 printable, header-safe characters), else None."""
    return value if value is not None and _SANE_ID.match(value) else None
