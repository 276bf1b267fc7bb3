"""The edge: aiohttp's request in, the gateway's own Request through the route's chain,
the gateway's Response written back (streamed). The only module that sees web.Request."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from aiohttp import hdrs, web

from gateway.compose import Handler
from gateway.errors import BadRequest, GatewayError, InternalError, PayloadTooLarge, error_response
from gateway.http import Body, Request, Response
from gateway.hygiene import check_host, clean_headers
from gateway.ids import new_request_id, sane_request_id
from gateway.metrics import UNMATCHED, RequestMetrics
from gateway.normalize import PathRefused, normalize_path, routing_form, split_target
from gateway.observe import access_entry, finish_server_span, server_span
from gateway.request_scope import RequestScope, Upstreams, enter, leave
from gateway.runtime import CompiledRoute, Runtime
from gateway.trace_context import incoming_fields

log = logging.getLogger("gateway.edge")

CLIENT_CLOSED = 499  # nginx's code for "client went away before the answer"


class _AsGiven:
    """Send the headers given: no Content-Type the upstream (or plugin) did not send, and no
    ``Server`` header of the gateway's own (an upstream's passes through)."""

    async def _prepare_headers(self) -> None:
        headers = self._headers  # type: ignore[attr-defined]
        had_type = hdrs.CONTENT_TYPE in headers
        had_server = hdrs.SERVER in headers
        await super()._prepare_headers()  # type: ignore[misc]
        if not had_type:
            headers.popall(hdrs.CONTENT_TYPE, None)
        if not had_server:
            headers.popall(hdrs.SERVER, None)


class Streamed(_AsGiven, web.StreamResponse):
    """A streamed response sent with exactly the headers given."""


class Whole(_AsGiven, web.Response):
    """A whole response sent with exactly the headers given."""


class Edge:
    """The public listener's request handler. ``runtime`` is swapped on reload."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def __call__(self, raw: web.BaseRequest) -> web.StreamResponse:
        start = time.perf_counter()
        runtime = self.runtime
        headers = raw.headers
        request_id = sane_request_id(headers.get("X-Request-ID")) or new_request_id()
        trace = incoming_fields(headers.get("traceparent"), headers.get("tracestate"), runtime.sample_ratio)
        exporter = runtime.exporter
        access_log = runtime.access_log
        scope = RequestScope(request_id, trace, [] if exporter is not None and trace[2] else None,
                             Upstreams() if access_log is not None else None)
        if scope.spans is not None:
            scope.server = server_span(scope, raw)
        token = enter(scope)
        metrics: RequestMetrics = runtime.unmatched
        route_name: str | None = None
        request: Request | None = None
        status = CLIENT_CLOSED
        source = "gateway"
        runtime.enter()
        try:
            try:
                request, route = await self._admit(raw, runtime, scope)
            except GatewayError as exc:
                response = error_response(exc, None, request_id)
            else:
                metrics = route.metrics
                route_name = scope.route = route.name
                metrics.inflight.inc()
                response = await self._call(route.handler, request, route.max_body_bytes)
            if request is not None:
                request_id = request.request_id
            out = await self._send(raw, response, request, request_id, route_name, scope)
            status, source = out.status, response.source
            return out
        finally:
            runtime.leave()
            if route_name is not None:
                metrics.inflight.dec()
            seconds = time.perf_counter() - start
            metrics.observe(raw.method, status, source, seconds,
                            request.body.received if request is not None else 0, scope.bytes_out)
            if exporter is not None and scope.server is not None:
                finish_server_span(scope, route_name, status)
                exporter.export(scope)
            if access_log is not None:
                access_log.write(access_entry(access_log, scope, raw, request, route_name or UNMATCHED,
                                              status, source, seconds))
            leave(token)

    async def _admit(self, raw: web.BaseRequest, runtime: Runtime, scope: RequestScope
                     ) -> tuple[Request, CompiledRoute]:
        """Everything before the chain (docs/security.md): the method, the request-target
        normalized, the Host checked, the headers cleaned, then the route looked up by the
        normalized path. Raises GatewayError (400/404/405) for what cannot go on."""
        settings = runtime.settings
        method = raw.method
        runtime.check_method(method)
        try:
            target, query, authority = split_target(raw.raw_path)
            path = normalize_path(target, merge_slashes=settings.merge_slashes,
                                  keep_encoded_slashes=settings.encoded_slashes == "keep")
        except PathRefused as exc:
            raise BadRequest(str(exc)) from None
        scope.path, scope.query = path, query
        host = authority if authority is not None else raw.headers.get(hdrs.HOST)
        check_host(host)
        peer = raw.remote or ""
        headers = clean_headers(raw.headers, underscores=settings.underscores_in_headers,
                                peer_trusted=runtime.trusted.trusts(peer))
        route, params = await runtime.match(method, routing_form(path))
        body = Body(raw.content if raw.body_exists else None, raw.content_length, route.max_body_bytes,
                    _continue_sender(raw), settings.client_body_timeout)
        request = Request(
            method, path, query, headers, body,
            params=params,
            client_ip=runtime.trusted.client_ip(peer, ", ".join(raw.headers.getall("X-Forwarded-For", ()))),
            peer=peer, scheme=raw.scheme, host=host or raw.host, version=(raw.version.major, raw.version.minor),
            route=route.name, request_id=scope.request_id,
        )
        scope.request = request
        return request, route

    async def _call(self, handler: Handler, request: Request, limit: int) -> Response:
        try:
            length = request.body.length
            if length is not None and length > limit:
                raise PayloadTooLarge(f"request body of {length} bytes exceeds the limit of {limit} bytes")
            return await handler(request)
        except GatewayError as exc:  # the client's body too: 413 or 408
            return error_response(exc, request.route, request.request_id)
        except Exception:
            log.exception("route %s: unexpected error", request.route)
            return error_response(InternalError("the gateway failed to handle this request"),
                                  request.route, request.request_id)

    async def _send(
        self, raw: web.BaseRequest, response: Response, request: Request | None,
        request_id: str, route: str | None, scope: RequestScope,
    ) -> web.StreamResponse:
        if response.upgrade is not None:
            return await response.upgrade.accept(raw)  # type: ignore[no-any-return]
        headers = response.headers
        headers[request.request_id_header if request is not None else "X-Request-ID"] = request_id
        stream = response.stream
        head_only = raw.method == "HEAD"
        if stream is None:
            headers.popall(hdrs.CONTENT_LENGTH, None)
            scope.bytes_out = 0 if head_only else len(response.body)
            return Whole(status=response.status, headers=headers, body=response.body)
        try:
            # A body that has already arrived whole goes out in one write; anything else is
            # streamed as it comes, so a slow upstream never holds the headers back.
            whole = getattr(stream, "whole", None)
            body = whole() if whole is not None and not head_only else None
            if body is not None:
                headers.popall(hdrs.CONTENT_LENGTH, None)
                scope.bytes_out = len(body)
                return Whole(status=response.status, headers=headers, body=body)
            out = Streamed(status=response.status, headers=headers)
            await out.prepare(raw)
            try:
                async for chunk in stream:
                    scope.bytes_out += len(chunk)
                    await out.write(chunk)
            except GatewayError as exc:
                # Headers are gone already: the only honest signal left is to cut the connection.
                log.warning("route %s: %s; closing the client connection", route, exc.detail)
                if raw.transport is not None:
                    raw.transport.close()
                return out
            await out.write_eof()
            return out
        except GatewayError as exc:
            return self._problem_after_error(exc, route, request_id)
        finally:
            stream.release()

    def _problem_after_error(self, exc: GatewayError, route: str | None, request_id: str) -> web.StreamResponse:
        response = error_response(exc, route, request_id)
        response.headers["X-Request-ID"] = request_id
        return Whole(status=response.status, headers=response.headers, body=response.body)


def _continue_sender(raw: web.BaseRequest) -> Callable[[], None] | None:
    """Answer ``Expect: 100-continue`` only when the body is actually read (like Go's net/http)."""
    if raw.version < (1, 1) or raw.headers.get(hdrs.EXPECT, "").lower() != "100-continue":
        return None

    def send_continue() -> None:
        if raw.transport is not None:
            raw.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    return send_continue


