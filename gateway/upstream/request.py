"""The message every layer of an upstream stack passes on: one call to one upstream, and the
handler signature the layers share (``async (UpstreamRequest) -> Response``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from gateway.compose import Layer
from gateway.http import Body, Response

# Idempotent methods (RFC 9110 §9.2.2): safe to send again when a connection broke before an answer.
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


class UpstreamRequest:
    """One call to an upstream as the upstream stack sees it."""

    __slots__ = (
        "method", "path_qs", "headers", "body", "route", "upstream", "target", "attempt", "deadline",
        "tried",
    )

    def __init__(
        self,
        method: str,
        path_qs: str,
        headers: Any,
        body: Body | bytes | None,
        *,
        route: str,
        upstream: str,
        deadline: float,
    ) -> None:
        self.method = method
        self.path_qs = path_qs
        self.headers = headers
        self.body = body
        self.route = route
        self.upstream = upstream
        self.target = ""
        self.attempt = 1
        self.deadline = deadline  # loop time by which response headers must have arrived
        self.tried: set[str] | None = None  # targets earlier attempts went to (set by the retry layer)


UpstreamHandler = Callable[[UpstreamRequest], Awaitable[Response]]
UpstreamLayer = Layer[UpstreamRequest, Response]
