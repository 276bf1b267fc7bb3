"""The gateway's own errors: raised anywhere, turned into problem+json in one place.

    GatewayError                 status, title, problem type
    ├── InternalError            500 (a bug; logged, never shown)
    ├── Unauthorized             401
    ├── BadRequest               400
    ├── Forbidden                403
    ├── NotFound                 404
    ├── MethodNotAllowed         405 (+ Allow)
    ├── RequestTimeout           408 (the client's body stalled)
    ├── PayloadTooLarge          413
    ├── UriTooLong               414
    ├── HeadersTooLarge          431
    ├── UpstreamError            502 (unusable answer)
    │   ├── UpstreamConnectError     refused, unreachable: nothing was sent
    │   └── UpstreamReset            the connection broke mid-exchange
    ├── ServiceUnavailable       503 (+ Retry-After when known)
    └── GatewayTimeout           504
        └── UpstreamTimeout          no response head in time
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from multidict import CIMultiDict

from gateway.http import BodyError, BodyStalled, Response

PROBLEM_BASE = "https://gateway.dev/problems/"


class GatewayError(Exception):
    """An error the gateway answers itself; carries what the problem document needs."""

    status = 500
    title = "Internal Server Error"
    slug = "internal"

    def __init__(
        self,
        detail: str = "",
        *,
        headers: dict[str, str] | None = None,
        extensions: dict[str, object] | None = None,
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.headers = headers or {}
        self.extensions = {k: v for k, v in (extensions or {}).items() if v is not None}

    @property
    def type(self) -> str:
        return PROBLEM_BASE + self.slug


class InternalError(GatewayError):
    """A bug in the gateway or a plugin; details go to the log, never to the client."""


class BadRequest(GatewayError):
    status, title, slug = 400, "Bad Request", "bad-request"


class Unauthorized(GatewayError):
    status, title, slug = 401, "Unauthorized", "unauthorized"


class Forbidden(GatewayError):
    status, title, slug = 403, "Forbidden", "forbidden"


class NotFound(GatewayError):
    status, title, slug = 404, "Not Found", "not-found"


class MethodNotAllowed(GatewayError):
    status, title, slug = 405, "Method Not Allowed", "method-not-allowed"

    def __init__(self, method: str, allowed: Iterable[str]) -> None:
        allow = ", ".join(sorted(allowed))
        super().__init__(f"method {method} is not allowed here", headers={"Allow": allow})


class RequestTimeout(GatewayError):
    status, title, slug = 408, "Request Timeout", "request-timeout"


class PayloadTooLarge(GatewayError):
    status, title, slug = 413, "Content Too Large", "payload-too-large"


class UriTooLong(GatewayError):
    status, title, slug = 414, "URI Too Long", "uri-too-long"


class HeadersTooLarge(GatewayError):
    status, title, slug = 431, "Request Header Fields Too Large", "headers-too-large"


class UpstreamError(GatewayError):
    status, title, slug = 502, "Bad Gateway", "upstream-error"


class UpstreamConnectError(UpstreamError):
    """The upstream could not be reached (refused, unreachable, timed out); nothing was sent."""

    outcome = "connect_error"


class UpstreamReset(UpstreamError):
    """The connection broke after the request was (maybe partly) sent."""

    outcome = "reset"


class ServiceUnavailable(GatewayError):
    status, title, slug = 503, "Service Unavailable", "unavailable"


class GatewayTimeout(GatewayError):
    status, title, slug = 504, "Gateway Timeout", "upstream-timeout"


class UpstreamTimeout(GatewayTimeout):
    """No response head within the time allowed."""

    outcome = "timeout"


def body_error(exc: BodyError) -> GatewayError:
    """The response for a client body that could not be read."""
    if isinstance(exc, BodyStalled):
        return RequestTimeout(str(exc))
    return PayloadTooLarge(str(exc))


def problem(
    status: int,
    title: str,
    detail: str,
    *,
    type_: str = "about:blank",
    route: str | None = None,
    request_id: str | None = None,
    headers: dict[str, str] | None = None,
    extensions: dict[str, object] | None = None,
) -> Response:
    """Build an RFC 9457 problem+json response made by the gateway itself."""
    document: dict[str, object] = {"type": type_, "title": title, "status": status, "detail": detail}
    if extensions:
        document.update(extensions)
    if route is not None:
        document["route"] = route
    if request_id is not None:
        document["request_id"] = request_id
    out = CIMultiDict({"Content-Type": "application/problem+json"})
    if headers:
        out.update(headers)
    return Response(status, out, json.dumps(document).encode(), source="gateway")


def error_response(error: GatewayError, route: str | None, request_id: str | None) -> Response:
    """The one place a raised GatewayError becomes a response."""
    return problem(
        error.status,
        error.title,
        error.detail,
        type_=error.type,
        route=route,
        request_id=request_id,
        headers=error.headers,
        extensions=error.extensions,
    )
