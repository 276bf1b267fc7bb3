"""``headers``: set or remove request headers (before the rest of the chain) and response
headers (after it)."""

from __future__ import annotations

from multidict import CIMultiDict
from pydantic import Field

from gateway import Handler, Plugin, PluginConfig, PluginContext, Request, Response


class HeaderChanges(PluginConfig):
    set: dict[str, str] = Field(default_factory=dict)
    remove: list[str] = Field(default_factory=list)


class HeadersConfig(PluginConfig):
    request: HeaderChanges = Field(default_factory=HeaderChanges)
    response: HeaderChanges = Field(default_factory=HeaderChanges)


def _apply(changes: tuple[tuple[str, ...], tuple[tuple[str, str], ...]], headers: CIMultiDict[str]) -> None:
    remove, assign = changes
    for name in remove:
        headers.popall(name, None)
    for name, value in assign:
        headers[name] = value


class Headers(Plugin[HeadersConfig]):
    """Header transforms on the way in and on the way out."""

    name = "headers"
    Config = HeadersConfig

    def __init__(self, config: HeadersConfig, context: PluginContext) -> None:
        super().__init__(config, context)
        self._request = (tuple(config.request.remove), tuple(config.request.set.items()))
        self._response = (tuple(config.response.remove), tuple(config.response.set.items()))
        self._touch_response = bool(config.response.remove or config.response.set)

    async def handle(self, request: Request, call_next: Handler) -> Response:
        _apply(self._request, request.headers)
        response = await call_next(request)
        if self._touch_response:
            _apply(self._response, response.headers)
        return response
