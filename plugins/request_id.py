"""``request_id``: choose the header that carries the request id, and whether to trust ids
that clients send. Without this plugin the gateway uses X-Request-ID and trusts sane ids."""

from __future__ import annotations

from gateway import Handler, Plugin, PluginConfig, Request, Response, new_request_id, sane_request_id


class RequestIdConfig(PluginConfig):
    header: str = "X-Request-ID"
    trust_incoming: bool = True


class RequestId(Plugin[RequestIdConfig]):
    """Keep a sane incoming request id or make one; send it upstream and back."""

    name = "request_id"
    Config = RequestIdConfig

    async def handle(self, request: Request, call_next: Handler) -> Response:
        header = self.config.header
        incoming = sane_request_id(request.headers.get(header)) if self.config.trust_incoming else None
        request.request_id = incoming or new_request_id()
        request.request_id_header = header
        return await call_next(request)
