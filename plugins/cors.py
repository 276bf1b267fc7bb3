"""``cors``: answer CORS preflight requests itself (so they never reach auth or the
upstream) and add the CORS headers to actual responses."""

from __future__ import annotations

import re
from collections.abc import MutableMapping

from multidict import CIMultiDict
from pydantic import Field

from gateway import Duration, Forbidden, GatewayError, Handler, Plugin, PluginConfig, PluginContext, Request, Response


class CorsConfig(PluginConfig):
    origins: list[str] = Field(default_factory=lambda: ["*"])
    methods: list[str] = Field(default_factory=lambda: ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"])
    headers: list[str] = Field(default_factory=list)  # empty: allow what the preflight asks for
    expose_headers: list[str] = Field(default_factory=list)
    credentials: bool = False
    max_age: Duration | None = None


def _origin_pattern(origins: list[str]) -> re.Pattern[str] | None:
    if "*" in origins:
        return None
    parts = [re.escape(o).replace(r"\*", r"[^./]+") for o in origins]
    return re.compile("^(?:" + "|".join(parts) + ")$")


class Cors(Plugin[CorsConfig]):
    """Cross-origin resource sharing for browsers."""

    name = "cors"
    Config = CorsConfig

    def __init__(self, config: CorsConfig, context: PluginContext) -> None:
        super().__init__(config, context)
        self._any = "*" in config.origins
        self._pattern = _origin_pattern(config.origins)
        self._methods = ", ".join(m.upper() for m in config.methods)
        self._allowed_methods = {m.upper() for m in config.methods}
        self._headers = ", ".join(config.headers)
        self._expose = ", ".join(config.expose_headers)
        self._max_age = str(int(config.max_age)) if config.max_age is not None else None

    def _allows(self, origin: str) -> bool:
        return self._pattern is None or self._pattern.match(origin) is not None

    def _allow_origin(self, origin: str) -> str:
        # With credentials a browser refuses "*": echo the origin instead.
        return "*" if self._any and not self.config.credentials else origin

    async def handle(self, request: Request, call_next: Handler) -> Response:
        origin = request.headers.get("Origin")
        if origin is None:
            return await call_next(request)
        wanted = request.headers.get("Access-Control-Request-Method")
        if request.method == "OPTIONS" and wanted is not None:
            return self._preflight(origin, wanted, request.headers.get("Access-Control-Request-Headers"))
        try:
            response = await call_next(request)
        except GatewayError as exc:
            # A browser can read an error (a 401 from auth, a 429) only with these headers too.
            if self._allows(origin):
                self._decorate(origin, exc.headers)
            raise
        if self._allows(origin):
            self._decorate(origin, response.headers)
        return response

    def _decorate(self, origin: str, headers: MutableMapping[str, str]) -> None:
        headers["Access-Control-Allow-Origin"] = self._allow_origin(origin)
        if self.config.credentials:
            headers["Access-Control-Allow-Credentials"] = "true"
        if self._expose:
            headers["Access-Control-Expose-Headers"] = self._expose
        if not self._any or self.config.credentials:
            if isinstance(headers, CIMultiDict):
                headers.add("Vary", "Origin")  # keep the upstream's own Vary values
            else:
                headers["Vary"] = "Origin"

    def _preflight(self, origin: str, method: str, requested_headers: str | None) -> Response:
        if not self._allows(origin):
            raise Forbidden(f"origin {origin} is not allowed")
        if method.upper() not in self._allowed_methods:
            raise Forbidden(f"method {method} is not allowed for cross-origin requests")
        headers: CIMultiDict[str] = CIMultiDict()
        headers["Access-Control-Allow-Origin"] = self._allow_origin(origin)
        headers["Access-Control-Allow-Methods"] = self._methods
        allow_headers = self._headers or requested_headers
        if allow_headers:
            headers["Access-Control-Allow-Headers"] = allow_headers
        if self.config.credentials:
            headers["Access-Control-Allow-Credentials"] = "true"
        if self._max_age is not None:
            headers["Access-Control-Max-Age"] = self._max_age
        headers["Vary"] = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
        return Response(204, headers)
