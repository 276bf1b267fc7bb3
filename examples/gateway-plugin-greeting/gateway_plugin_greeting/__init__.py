"""``greeting``: an example third-party gateway plugin.

It adds a configurable header to the request sent upstream (``X-Greeting: hello`` by
default) and, when ``response_header`` is set, the same greeting to the response::

    [[routes.plugins]]
    use = "greeting"
    greeting = "hello from the gateway"
    response_header = "X-Greeted"

The plugin is registered under the ``gateway.plugins`` entry-point group in this package's
pyproject.toml, which is how ``use = "greeting"`` finds it.
"""

from __future__ import annotations

import re

from pydantic import Field, field_validator, model_validator

from gateway import Handler, Plugin, PluginConfig, PluginContext, Request, Response

__all__ = ["Greeting", "GreetingConfig"]
__version__ = "0.1.0"

# RFC 9110 field names are "tokens"; values must not contain control characters (CR/LF
# would let a config value smuggle in extra headers).
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_VALUE = re.compile(r"^[\x20-\x7e]+$")
# Headers whose meaning belongs to HTTP or to the gateway itself.
_RESERVED = frozenset({
    "host", "content-length", "content-type", "transfer-encoding", "connection", "te", "upgrade",
    "x-request-id", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-consumer",
})


class GreetingConfig(PluginConfig):
    """Options of ``use = "greeting"`` (unknown keys are errors, like everywhere in routes.toml)."""

    greeting: str = Field(default="hello", min_length=1, max_length=200)
    header: str = "X-Greeting"  # request header sent upstream
    response_header: str | None = None  # also greet the client in this response header
    overwrite: bool = True  # replace a greeting the client sent; false keeps the client's

    @field_validator("greeting")
    @classmethod
    def _printable(cls, value: str) -> str:
        if not _VALUE.match(value):
            raise ValueError("must be printable ASCII without control characters")
        return value

    @field_validator("header", "response_header")
    @classmethod
    def _header_name(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not _TOKEN.match(value):
            raise ValueError(f"must be an HTTP header name such as X-Greeting, got {value!r}")
        if value.lower() in _RESERVED:
            raise ValueError(f"{value} is managed by HTTP or the gateway and cannot be set here")
        return value

    @model_validator(mode="after")
    def _distinct(self) -> GreetingConfig:
        if self.response_header is not None and self.response_header.lower() == self.header.lower():
            # Not wrong for HTTP, but almost always a copy-paste slip in a config.
            raise ValueError("response_header must differ from header")
        return self


class Greeting(Plugin[GreetingConfig]):
    """Add a greeting header to the upstream request (and optionally to the response)."""

    name = "greeting"
    Config = GreetingConfig

    def __init__(self, config: GreetingConfig, context: PluginContext) -> None:
        # Runs when a config is loaded (also by `gateway check`): precompute, no I/O.
        super().__init__(config, context)
        self._header = config.header
        self._value = config.greeting
        self._overwrite = config.overwrite
        self._response_header = config.response_header

    async def handle(self, request: Request, call_next: Handler) -> Response:
        if self._overwrite or self._header not in request.headers:
            request.headers[self._header] = self._value
        response = await call_next(request)
        if self._response_header is not None:
            response.headers[self._response_header] = self._value
        return response
