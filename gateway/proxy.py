"""The proxy terminal: turn the client's request into the upstream call (SPEC §3) and
hand back the upstream's answer as a stream."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from urllib.parse import quote

from gateway.client import UpstreamRequest
from gateway.config_model import PATH_PARAM
from gateway.errors import BadRequest
from gateway.forwarding import TrustedProxies, strip_hop_by_hop
from gateway.http import Request, Response
from gateway.upstream import UpstreamHandler
from gateway.websocket import wants_websocket

_PATH_SAFE = "/:@!$&'()*+,;=-._~"


def compile_rewrite(template: str) -> Callable[[Mapping[str, str]], str]:
    """Compile ``/users/{rest}`` once into a function of the route's path parameters."""
    parts: list[tuple[bool, str]] = []
    position = 0
    for match in PATH_PARAM.finditer(template):
        parts.append((False, template[position:match.start()]))
        parts.append((True, match.group(1)))
        position = match.end()
    parts.append((False, template[position:]))

    def render(params: Mapping[str, str]) -> str:
        out = []
        for is_param, value in parts:
            if not is_param:
                out.append(value)
                continue
            decoded = params[value]
            # aiohttp decodes parameters: "..%2F" arrives as "../". Re-encoding keeps "/", so a
            # "." or ".." segment would climb out of the rewritten prefix upstream.
            if any(segment in (".", "..") for segment in decoded.split("/")):
                raise BadRequest(f"path parameter {value!r} may not contain '.' or '..' segments")
            out.append(quote(decoded, safe=_PATH_SAFE))
        return "".join(out)

    return render


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
        websocket: bool = False,
    ) -> None:
        self.route = route
        self.upstream = upstream
        self.stack = stack
        self.trusted = trusted
        self.timeout = timeout
        self.rewrite = compile_rewrite(rewrite) if rewrite is not None else None
        self.preserve_host = preserve_host
        self.websocket = websocket
        self._loop: asyncio.AbstractEventLoop | None = None

    async def __call__(self, request: Request) -> Response:
        incoming = request.headers
        upgrade = self.websocket and wants_websocket(incoming)
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
        path = self.rewrite(request.params) if self.rewrite is not None else request.path
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
        call.websocket = upgrade
        response = await self.stack(call)
        if response.upgrade is None:
            response.headers = strip_hop_by_hop(response.headers, request=False)
        return response
