"""The edge: aiohttp's request in, the gateway's own Request through the route's chain,
the gateway's Response written back (streamed). The only module that sees web.Request."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from aiohttp import hdrs, web
from multidict import CIMultiDict

from gateway.compose import Handler
from gateway.errors import GatewayError, InternalError, PayloadTooLarge, body_error, error_response
from gateway.http import Body, BodyError, Request, Response
from gateway.ids import new_request_id, sane_request_id
from gateway.metrics import RequestMetrics
from gateway.runtime import Runtime

log = logging.getLogger("gateway.server")

SMALL_BODY = 64 * 1024
CLIENT_CLOSED = 499  # nginx's code for "client went away before the answer"


class _KeepType:
    """Do not invent a Content-Type the upstream (or plugin) did not send."""

    async def _prepare_headers(self) -> None:
        headers = self._headers  # type: ignore[attr-defined]
        had_type = hdrs.CONTENT_TYPE in headers
        await super()._prepare_headers()  # type: ignore[misc]
        if not had_type:
            headers.popall(hdrs.CONTENT_TYPE, None)


class _Streamed(_KeepType, web.StreamResponse):
    pass


class _Whole(_KeepType, web.Response):
    pass


class Edge:
    """The public listener's request handler. ``runtime`` is swapped on reload."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def __call__(self, raw: web.BaseRequest) -> web.StreamResponse:
        start = time.perf_counter()
        runtime = self.runtime
        request_id = sane_request_id(raw.headers.get("X-Request-ID")) or new_request_id()
        metrics: RequestMetrics = runtime.unmatched
        route_name: str | None = None
        request: Request | None = None
        status = CLIENT_CLOSED
        source = "gateway"
        runtime.enter()
        try:
            try:
                route, params = await runtime.match(raw)
            except GatewayError as exc:
                response = error_response(exc, None, request_id)
            else:
                metrics = route.metrics
                route_name = route.name
                metrics.inflight.inc()
                request = self._request(raw, runtime, route.name, params, route.max_body_bytes, request_id)
                response = await self._call(route.handler, request, route.max_body_bytes)
            if request is not None:
                request_id = request.request_id
            out = await self._send(raw, response, request, request_id, route_name)
            status, source = out.status, response.source
            return out
        finally:
            runtime.leave()
            if route_name is not None:
                metrics.inflight.dec()
            metrics.observe(raw.method, status, source, time.perf_counter() - start)

    def _request(
        self, raw: web.BaseRequest, runtime: Runtime, route: str, params: dict[str, str],
        limit: int, request_id: str,
    ) -> Request:
        peer = raw.remote or ""
        body = Body(raw.content if raw.body_exists else None, raw.content_length, limit, _continue_sender(raw),
                    runtime.settings.client_body_timeout)
        headers = CIMultiDict(raw.headers)
        _drop_consumer_headers(headers)
        return Request(
            raw.method, *_split_target(raw.raw_path), headers, body,
            params=params,
            client_ip=runtime.trusted.client_ip(peer, ", ".join(headers.getall("X-Forwarded-For", ()))),
            peer=peer, scheme=raw.scheme, host=raw.host, version=(raw.version.major, raw.version.minor),
            route=route, request_id=request_id,
        )

    async def _call(self, handler: Handler, request: Request, limit: int) -> Response:
        try:
            length = request.body.length
            if length is not None and length > limit:
                raise PayloadTooLarge(f"request body of {length} bytes exceeds the limit of {limit} bytes")
            return await handler(request)
        except GatewayError as exc:
            return error_response(exc, request.route, request.request_id)
        except BodyError as exc:
            return error_response(body_error(exc), request.route, request.request_id)
        except Exception:
            log.exception("route %s: unexpected error", request.route)
            return error_response(InternalError("the gateway failed to handle this request"),
                                  request.route, request.request_id)

    async def _send(
        self, raw: web.BaseRequest, response: Response, request: Request | None,
        request_id: str, route: str | None,
    ) -> web.StreamResponse:
        if response.upgrade is not None:
            return await response.upgrade.accept(raw)  # type: ignore[no-any-return]
        headers = response.headers
        headers[request.request_id_header if request is not None else "X-Request-ID"] = request_id
        stream = response.stream
        if stream is None:
            headers.popall(hdrs.CONTENT_LENGTH, None)
            return _Whole(status=response.status, headers=headers, body=response.body)
        try:
            length = getattr(stream, "length", None)
            if length is not None and length <= SMALL_BODY and raw.method != "HEAD":
                body = await stream.read()  # type: ignore[attr-defined]
                headers.popall(hdrs.CONTENT_LENGTH, None)
                return _Whole(status=response.status, headers=headers, body=body)
            out = _Streamed(status=response.status, headers=headers)
            await out.prepare(raw)
            try:
                async for chunk in stream:
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
        return _Whole(status=response.status, headers=response.headers, body=response.body)


def _drop_consumer_headers(headers: CIMultiDict[str]) -> None:
    """X-Consumer* is the gateway's word on who the caller is; a client never gets to say it."""
    spoofed = [key for key in headers if key[:10].lower() == "x-consumer"]
    for key in spoofed:
        headers.popall(key, None)


def _split_target(target: str) -> tuple[str, str]:
    """Path and query exactly as the client sent them (still percent-encoded)."""
    path, _, query = target.partition("?")
    return path, query


def _continue_sender(raw: web.BaseRequest) -> Callable[[], None] | None:
    """Answer ``Expect: 100-continue`` only when the body is actually read (like Go's net/http)."""
    if raw.version < (1, 1) or raw.headers.get(hdrs.EXPECT, "").lower() != "100-continue":
        return None

    def send_continue() -> None:
        if raw.transport is not None:
            raw.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    return send_continue


