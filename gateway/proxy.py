"""The proxy terminal: turn the client's request into the upstream call (docs/configuration.md) and
hand back the upstream's answer as a stream."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Mapping
from urllib.parse import quote

from aiohttp import web

from gateway.config_model import PATH_PARAM
from gateway.errors import BadRequest
from gateway.forwarding import TrustedProxies, strip_hop_by_hop
from gateway.http import Request, Response
from gateway.normalize import has_dot_segment, routing_form
from gateway.upstream.request import UpstreamHandler, UpstreamRequest
from gateway.upstream.websocket import wants_websocket

_PATH_SAFE = "/:@!$&'()*+,;=-._~"


def compile_rewrite(template: str) -> Callable[[Mapping[str, str], bool], str]:
    """Compile ``/users/{rest}`` once into a function of the route's path parameters.

    Parameters are decoded, or — ``encoded=True``, for ``encoded_slashes = "keep"`` — in
    routing form, where ``%2F`` and ``%25`` are still encoded and stay so upstream.
    """
    parts: list[tuple[bool, str]] = []
    position = 0
    for match in PATH_PARAM.finditer(template):
        parts.append((False, template[position:match.start()]))
        parts.append((True, match.group(1)))
        position = match.end()
    parts.append((False, template[position:]))

    def render(params: Mapping[str, str], encoded: bool = False) -> str:
        out = []
        for is_param, value in parts:
            if not is_param:
                out.append(value)
                continue
            param = params[value]
            # A "." or ".." segment, however spelled, would climb out of the rewritten prefix
            # upstream (the same guard as orchestration templates).
            if has_dot_segment(param):
                raise BadRequest(f"path parameter {value!r} may not contain '.' or '..' segments")
            out.append(quote(param, safe=_PATH_SAFE + "%" if encoded else _PATH_SAFE))
        return "".join(out)

    return render


def _params_pattern(route_path: str) -> re.Pattern[str] | None:
    """The route table's own pattern for a templated path (to read parameters undecoded)."""
    if PATH_PARAM.search(route_path) is None:
        return None
    pattern: re.Pattern[str] = web.DynamicResource(route_path).get_info()["pattern"]
    return pattern


class ProxyTerminal:
    """Forward a request to one upstream through its stack."""

    def __init__(
        self,
        *,
        route: str,
        upstream: str,
        stack: UpstreamHandler,
        trusted: TrustedProxies,
        timeout: float,
        rewrite: str | None,
        preserve_host: bool,
        upgrade_stack: UpstreamHandler | None = None,
        route_path: str = "/",
        keep_encoded_slashes: bool = False,
    ) -> None:
        self.route = route
        self.upstream = upstream
        self.stack = stack
        self.trusted = trusted
        self.timeout = timeout
        self.rewrite = compile_rewrite(rewrite) if rewrite is not None else None
        # With encoded slashes kept, a parameter's "%2F" must stay encoded through the rewrite.
        self._encoded_params = _params_pattern(route_path) if rewrite is not None and keep_encoded_slashes else None
        self.preserve_host = preserve_host
        self.upgrade_stack = upgrade_stack  # websocket = true: where an upgrade request goes
        self._loop: asyncio.AbstractEventLoop | None = None

    async def __call__(self, request: Request) -> Response:
        incoming = request.headers
        upgrade = self.upgrade_stack is not None and wants_websocket(incoming)
        headers = strip_hop_by_hop(incoming, request=True)
        headers.popall("X-Gateway-Attempt", None)  # the gateway's own word on retries
        peer_trusted = self.trusted.trusts(request.peer)
        forwarded = ", ".join(incoming.getall("X-Forwarded-For", ()))  # every line, in order
        headers["X-Forwarded-For"] = f"{forwarded}, {request.peer}" if forwarded else request.peer
        if not (peer_trusted and "X-Forwarded-Proto" in incoming):
            headers["X-Forwarded-Proto"] = request.scheme
        if not (peer_trusted and "X-Forwarded-Host" in incoming):
            headers["X-Forwarded-Host"] = request.host
        if self.preserve_host:
            headers["Host"] = request.host
        headers[request.request_id_header] = request.request_id
        if request.consumer is not None:
            headers["X-Consumer"] = request.consumer
        if request.subject is not None:
            headers["X-Consumer-Subject"] = request.subject
        path = self._rewritten(request) if self.rewrite is not None else request.path
        if request.query_string:
            path = f"{path}?{request.query_string}"
        body = None if request.body.empty else request.body
        loop = self._loop
        if loop is None:  # asyncio.get_running_loop() costs a getpid() syscall: look it up once
            loop = self._loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        call = UpstreamRequest(
            request.method, path, headers, body, route=self.route, upstream=self.upstream, deadline=deadline
        )
        stack = self.upgrade_stack if upgrade and self.upgrade_stack is not None else self.stack
        response = await stack(call)
        if response.upgrade is None:
            response.headers = strip_hop_by_hop(response.headers, request=False)
        return response

    def _rewritten(self, request: Request) -> str:
        rewrite = self.rewrite
        if rewrite is None:
            return request.path
        pattern = self._encoded_params
        if pattern is not None and "%2F" in request.path:
            match = pattern.fullmatch(routing_form(request.path))
            if match is not None:
                return rewrite(match.groupdict(), True)
        return rewrite(request.params, False)
