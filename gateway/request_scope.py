"""The request being handled, for everything that runs on its behalf (docs/operations.md):
log lines carry its id and route, upstream calls send its trace onward and record their
attempts for the access log, spans are collected when the trace is sampled.

The edge opens a scope per request in a context variable; tasks started for the request
(orchestration steps, fan-out calls) inherit it, and a step opens a child scope so the calls
it makes are children of its span. Nothing here does I/O or imports the tracing SDK.
"""

from __future__ import annotations

import time
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.trace_context import TraceContext, TraceFields, new_span_id

if TYPE_CHECKING:
    from gateway.http import Request

SERVER, CLIENT, INTERNAL = "server", "client", "internal"


@dataclass(slots=True, eq=False)
class Span:
    """One finished span, as recorded on the request path (exported later, off it)."""

    span_id: str
    parent_id: str | None
    name: str
    kind: str
    start_ns: int
    attributes: dict[str, Any]
    end_ns: int = 0
    error: str | None = None  # why the span failed (its status description)
    events: list[tuple[str, int, dict[str, Any]]] = field(default_factory=list)


class Upstreams:
    """What the request's upstream calls did, for the access log: the last call's upstream
    and status, how many attempts were made, from the first call's start to the last's end."""

    __slots__ = ("name", "status", "attempts", "first_ns", "last_ns")

    def __init__(self) -> None:
        self.name: str | None = None
        self.status: int | None = None
        self.attempts = 0
        self.first_ns = 0
        self.last_ns = 0

    def started(self, name: str) -> None:
        if not self.attempts:
            self.first_ns = time.perf_counter_ns()
        self.attempts += 1
        self.name = name

    def ended(self, status: int | None) -> None:
        self.status = status
        self.last_ns = time.perf_counter_ns()

    @property
    def milliseconds(self) -> float | None:
        return (self.last_ns - self.first_ns) / 1e6 if self.attempts and self.last_ns else None


class RequestScope(TraceContext):
    """One request: its id, route (None until matched), its trace (this is its TraceContext),
    the span calls made now are children of, the spans recorded (None: not recording), and
    for the access log its path, upstream calls and bytes sent."""

    __slots__ = ("_request_id", "request", "route", "parent", "spans", "server", "upstreams", "cache",
                 "path", "query", "bytes_out")

    def __init__(self, request_id: str, trace: TraceFields, spans: list[Span] | None,
                 upstreams: Upstreams | None = None) -> None:
        self.trace_id, self.parent_id, self.flags, self.tracestate = trace
        self._span_id = self._prefix = None
        self._suffix = "-01" if self.flags else "-00"
        self._request_id = request_id
        self.request: Request | None = None  # once the edge has made it (a plugin may change its id)
        self.route: str | None = None
        self.parent: str | None = None  # None: the request's own span
        self.spans = spans
        self.server: Span | None = None  # the request's own span, while recording
        self.upstreams = upstreams  # kept only for the access log
        self.cache: str | None = None  # HIT, MISS, ... when the route caches
        self.path: str | None = None  # the normalized path, once the edge has made it
        self.query = ""
        self.bytes_out = 0  # body bytes sent to the client

    @property
    def trace(self) -> TraceContext:
        return self

    @property
    def request_id(self) -> str:
        """The request's id: the one the request carries now (the request_id plugin may set it)."""
        request = self.request
        return request.request_id if request is not None else self._request_id

    def child(self, parent: str) -> RequestScope:
        """The same request, with calls made under the span ``parent`` (what the access log
        counts stays shared)."""
        scope = RequestScope(self._request_id, (self.trace_id, self.parent_id, self.flags, self.tracestate),
                             self.spans, self.upstreams)
        scope._span_id, scope.request, scope.route, scope.parent = self.span_id, self.request, self.route, parent
        scope.server, scope.path, scope.query = self.server, self.path, self.query
        return scope

    def start_span(self, name: str, kind: str, attributes: dict[str, Any]) -> Span | None:
        """A span under ``parent``, recorded when the trace is; None when it is not."""
        if self.spans is None:
            return None
        span = Span(new_span_id(), self.parent or self.span_id, name, kind, time.time_ns(), attributes)
        self.spans.append(span)
        return span


_current: ContextVar[RequestScope | None] = ContextVar("gateway_request", default=None)


def enter(scope: RequestScope) -> Token[RequestScope | None]:
    return _current.set(scope)


def leave(token: Token[RequestScope | None]) -> None:
    _current.reset(token)


def current() -> RequestScope | None:
    return _current.get()


def end_span(span: Span, error: str | None = None) -> None:
    span.end_ns = time.time_ns()
    span.error = error
