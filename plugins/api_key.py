"""``api_key``: a key in a header and/or a query parameter identifies a consumer
(``[consumers.NAME] api_keys = [...]``).

Keys are looked up by their SHA-256 digest in a dict rather than compared one by one with
``hmac.compare_digest``: the lookup's timing depends only on the digest of the key the
client sent, which tells an attacker nothing about the stored keys (steering a digest
towards a stored one would take a SHA-256 preimage), it costs the same for 1 key or
100 000, and the plugin holds digests instead of the keys themselves.
"""

from __future__ import annotations

import hashlib
from urllib.parse import unquote_plus

from pydantic import Field

from gateway import Handler, PluginContext, Request, Response
from plugins.auth_common import AuthConfig, AuthPlugin

HEADER_OR_EMPTY = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]*$"


def key_digest(key: str) -> bytes:
    """The SHA-256 digest keys are looked up by."""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


def without_query_param(query_string: str, name: str) -> str:
    """``query_string`` with every ``name=...`` removed, the other parameters as they were."""
    kept = [part for part in query_string.split("&") if unquote_plus(part.partition("=")[0]) != name]
    return "&".join(kept)


class ApiKeyConfig(AuthConfig):
    """Where clients send their key."""

    header: str = Field(default="X-API-Key", pattern=HEADER_OR_EMPTY)  # "": not in a header
    query: str = Field(default="", pattern=r"^[^&=#\s]*$")  # a query parameter name; "": not in the query


class ApiKey(AuthPlugin[ApiKeyConfig]):
    """401 + ``WWW-Authenticate: Key`` on a missing or unknown key; sets the consumer."""

    name = "api_key"
    Config = ApiKeyConfig
    scheme = "Key"

    def __init__(self, config: ApiKeyConfig, context: PluginContext) -> None:
        super().__init__(config, context)
        self._header = config.header
        if not self._header and not config.query:
            raise ValueError("needs `header` or `query`: where clients send their key")
        self._owners = {
            key_digest(key): name
            for name, consumer in context.consumers.items()
            for key in consumer.api_keys
            if key
        }
        if not self._owners:
            raise ValueError("no consumer has `api_keys`, so every request would be refused: "
                             'add [consumers.NAME] api_keys = ["${NAME_KEY}"]')

    def _find(self, request: Request) -> str:
        if self._header:
            key = request.headers.get(self._header, "")
            if key:
                return key
        if self.config.query:
            return request.query.get(self.config.query, "")
        return ""

    async def handle(self, request: Request, call_next: Handler) -> Response:
        key = self._find(request)
        if not key:
            self.reject(request, "missing", "an API key is required")
        consumer = self._owners.get(key_digest(key))
        if consumer is None:
            self.reject(request, "invalid", "the API key is not valid")
        if self.config.hide_credentials:
            if self._header:
                request.headers.popall(self._header, None)
            if self.config.query and request.query_string:
                request.query_string = without_query_param(request.query_string, self.config.query)
        request.consumer = consumer
        request.subject = None
        return await call_next(request)
