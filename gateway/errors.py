"""The gateway's own errors: raised anywhere, turned into problem+json in one place.

Each error knows the status it is answered with and, when it ends an upstream call, the
``outcome`` that call is counted under in ``gateway_upstream_requests_total`` (None: the
call is not counted, because the failure was not the upstream's).

    class                        status  outcome
    GatewayError                  500    -              status, title, problem type
    ├── InternalError             500    -              a bug; logged, never shown
    ├── BadRequest                400    -
    ├── Unauthorized              401    -
    ├── Forbidden                 403    -
    ├── NotFound                  404    -
    ├── MethodNotAllowed          405    -              + Allow
    ├── RequestTimeout            408    -
    │   └── BodyStalled           408    -              the client's body stalled (BodyError)
    ├── PayloadTooLarge           413    -
    │   └── BodyTooLarge          413    -              the client's body passed the limit (BodyError)
    ├── UriTooLong                414    -
    ├── HeadersTooLarge           431    -
    ├── UpstreamError             502    reset          unusable answer
    │   ├── UpstreamConnectError  502    connect_error  refused, unreachable: nothing was sent
    │   └── UpstreamReset         502    reset          the connection broke mid-exchange
    ├── ServiceUnavailable        503    -              + Retry-After when known; no usable target
    │   └── CircuitOpen           503    circuit_open   (gateway.upstream.breaker) the breaker is open
    └── GatewayTimeout            504    -
        └── UpstreamTimeout       504    timeout        no response head in time

``BodyError`` marks the two errors of reading the client's body (``Body.failure`` keeps the
one that stopped it); they are re-exported by gateway.http. An upstream call that broke off
because the client's upload did is answered 413/408 and is not counted upstream at all: not
as a request, not in the duration histogram, not by the breaker, never retried.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, ClassVar, Literal

from multidict import CIMultiDict

if TYPE_CHECKING:  # gateway.http re-exports the body errors from here
    from gateway.http import Response

PROBLEM_BASE = "https://gateway.dev/problems/"

# The ``outcome`` label of gateway_upstream_requests_total: "ok" and "http_error" for an
# answer, the others for a call that ended in an error.
UpstreamOutcome = Literal["ok", "http_error", "timeout", "connect_error", "reset", "circuit_open"]


class GatewayError(Exception):
    """An error the gateway answers itself; carries what the problem document needs."""

    status = 500
    title = "Internal Server Error"
    slug = "internal"
    outcome: ClassVar[UpstreamOutcome | None] = None  # how a failed upstream call is counted; None: not at all

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
    """The request is malformed or breaks a rule of the route (hygiene, a bad body)."""

    status, title, slug = 400, "Bad Request", "bad-request"


class Unauthorized(GatewayError):
    """No credentials, or ones that do not check out; auth plugins add ``WWW-Authenticate``."""

    status, title, slug = 401, "Unauthorized", "unauthorized"


class Forbidden(GatewayError):
    """Known caller (or address), not allowed here: ``ip_filter``, the admin guard."""

    status, title, slug = 403, "Forbidden", "forbidden"


class NotFound(GatewayError):
    """No route matches the path (or a plugin hides what exists)."""

    status, title, slug = 404, "Not Found", "not-found"


class MethodNotAllowed(GatewayError):
    status, title, slug = 405, "Method Not Allowed", "method-not-allowed"

    def __init__(self, method: str, allowed: Iterable[str]) -> None:
        allow = ", ".join(sorted(allowed))
        super().__init__(f"method {method} is not allowed here", headers={"Allow": allow})


class RequestTimeout(GatewayError):
    """The client took too long to send its request."""

    status, title, slug = 408, "Request Timeout", "request-timeout"


class PayloadTooLarge(GatewayError):
    """The request body is larger than the route allows."""

    status, title, slug = 413, "Content Too Large", "payload-too-large"


class BodyError(GatewayError):
    """Reading the client's body failed: the client's doing, never an upstream outcome.
    Only its two kinds below are raised; each is answered with its own status."""


class BodyTooLarge(BodyError, PayloadTooLarge):
    """The client sent more bytes than the body limit allows."""


class BodyStalled(BodyError, RequestTimeout):
    """The client stopped sending its body for longer than the body idle timeout."""


class UriTooLong(GatewayError):
    """The request line is longer than the edge accepts."""

    status, title, slug = 414, "URI Too Long", "uri-too-long"


class HeadersTooLarge(GatewayError):
    """A header line, or all of them together, is larger than the edge accepts."""

    status, title, slug = 431, "Request Header Fields Too Large", "headers-too-large"


class UpstreamError(GatewayError):
    """The upstream's answer could not be used (invalid, too large); counted as a reset."""

    status, title, slug = 502, "Bad Gateway", "upstream-error"
    outcome: ClassVar[UpstreamOutcome | None] = "reset"


class UpstreamConnectError(UpstreamError):
    """The upstream could not be reached (refused, unreachable, timed out); nothing was sent."""

    outcome = "connect_error"


class UpstreamReset(UpstreamError):
    """The connection broke after the request was (maybe partly) sent."""

    outcome = "reset"


class ServiceUnavailable(GatewayError):
    """No target can take the call now (all down, breaker open, over a limit)."""

    status, title, slug = 503, "Service Unavailable", "unavailable"


class GatewayTimeout(GatewayError):
    """The route's time ran out before an answer was ready."""

    status, title, slug = 504, "Gateway Timeout", "upstream-timeout"


class UpstreamTimeout(GatewayTimeout):
    """No response head within the time allowed."""

    outcome = "timeout"


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
    from gateway.http import Response  # gateway.http imports this module
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
