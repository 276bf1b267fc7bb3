"""The message every layer of an upstream stack passes on: one call to one upstream, and the
handler signature the layers share (``async (UpstreamRequest) -> Response``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.compose import Layer
from gateway.http import Body, Response

# Idempotent methods (RFC 9110 §9.2.2): safe to send again when a connection broke before an answer.
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


@dataclass(slots=True, eq=False)
class UpstreamRequest:
    """One call to an upstream as the upstream stack sees it."""

    method: str
    path_qs: str
    headers: Any
    body: Body | bytes | None
    route: str = field(kw_only=True)
    upstream: str = field(kw_only=True)
    deadline: float = field(kw_only=True)  # loop time by which response headers must have arrived
    target: str = field(default="", init=False)
    attempt: int = field(default=1, init=False)
    tried: set[str] | None = field(default=None, init=False)  # targets earlier attempts went to (retry layer)


UpstreamHandler = Callable[[UpstreamRequest], Awaitable[Response]]
UpstreamLayer = Layer[UpstreamRequest, Response]
