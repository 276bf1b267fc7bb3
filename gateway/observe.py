"""What the edge records of a finished request besides metrics: the server span (with the
HTTP semantic-convention attributes) and the access-log entry (docs/operations.md)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway.access_log import AccessLog, clip
from gateway.metrics import MALFORMED
from gateway.request_scope import SERVER, RequestScope, Span, Upstreams

if TYPE_CHECKING:
    from gateway.http import Request


def server_span(scope: RequestScope, raw: web.BaseRequest) -> Span:
    """The request's own span, started now; named after its route once it is matched."""
    trace = scope.trace
    attributes: dict[str, Any] = {
        "http.request.method": raw.method,
        "url.scheme": raw.scheme,
        "network.protocol.version": f"{raw.version.major}.{raw.version.minor}",
    }
    span = Span(trace.span_id, trace.parent_id, raw.method, SERVER, time.time_ns(), attributes)
    assert scope.spans is not None
    scope.spans.insert(0, span)
    return span


def finish_server_span(scope: RequestScope, route: str | None, status: int) -> None:
    span = scope.server
    if span is None:
        return
    span.end_ns = time.time_ns()
    span.name = route or span.name
    attributes = span.attributes
    attributes["http.response.status_code"] = status
    attributes["gateway.route"] = route or "_unmatched"
    attributes["gateway.request_id"] = scope.request_id
    if scope.path is not None:
        attributes["url.path"] = scope.path
    if status >= 500:
        span.error = f"answered {status}"


def access_entry(log: AccessLog, scope: RequestScope, raw: web.BaseRequest, request: Request | None,
                 route: str, status: int, source: str, seconds: float) -> dict[str, Any]:
    """One access-log entry, field by field (docs/operations.md#access-log)."""
    upstreams = scope.upstreams or Upstreams()
    upstream_ms = upstreams.milliseconds
    path = scope.path
    return {
        "ts": log.timestamp(),
        "request_id": scope.request_id,
        "trace_id": scope.trace.trace_id,
        "route": route,
        "method": raw.method,
        "path": log.path_for(path, scope.query) if path is not None else None,
        "status": status,
        "source": source,
        "duration_ms": round(seconds * 1000, 3),
        "upstream": upstreams.name,
        "upstream_status": upstreams.status,
        "upstream_ms": round(upstream_ms, 3) if upstream_ms is not None else None,
        "attempts": upstreams.attempts,
        "bytes_in": request.body.received if request is not None else 0,
        "bytes_out": scope.bytes_out,
        "client_ip": request.client_ip if request is not None else (raw.remote or None),
        "consumer": request.consumer if request is not None else None,
        "user_agent": clip(raw.headers.get("User-Agent")),
        **({"cache": scope.cache} if scope.cache is not None else {}),
    }


def malformed_entry(log: AccessLog, request_id: str, client_ip: str | None, status: int,
                    bytes_out: int) -> dict[str, Any]:
    """The access-log entry of a request the HTTP parser rejected: nothing of it is trusted
    enough to write but where it came from."""
    return {
        "ts": log.timestamp(), "request_id": request_id, "trace_id": None, "route": MALFORMED, "method": None,
        "path": None, "status": status, "source": "gateway", "duration_ms": 0.0, "upstream": None,
        "upstream_status": None, "upstream_ms": None, "attempts": 0, "bytes_in": 0, "bytes_out": bytes_out,
        "client_ip": client_ip, "consumer": None, "user_agent": None,
    }
