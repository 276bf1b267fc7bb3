"""The plugin API (docs/plugins.md): a name, a typed config, one async ``handle`` method.

A plugin answers early, changes the request, calls the rest of the chain, or changes the
response. The gateway times and counts every plugin; plugins do not measure themselves.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Generic, TypeVar

import aiohttp
from pydantic import BaseModel, ConfigDict

from gateway.compose import Handler
from gateway.config_model import ConsumerConfig, GatewaySettings
from gateway.http import Request, Response
from gateway.redis_pool import RedisHolder
from gateway.upstream.http1 import Http1Client

if TYPE_CHECKING:
    from gateway.metrics import Metrics


class PluginConfig(BaseModel):
    """Base for a plugin's options: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ClientHolder:
    """Gives plugins the gateway's pooled HTTP client once the gateway has started."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self.http1 = Http1Client()  # the proxy's and steps' lean pools (gateway.upstream.http1)
        self.redis = RedisHolder()  # the process's Redis pool(s), closed when the process drains

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("the HTTP client exists only between startup and shutdown")
        return self._session

    def set(self, session: aiohttp.ClientSession | None) -> None:
        self._session = session


@dataclass(frozen=True)
class PluginContext:
    """What a plugin may know about where it runs."""

    route: str | None  # None for a global plugin
    settings: GatewaySettings
    consumers: Mapping[str, ConsumerConfig]
    metrics: Metrics
    client: ClientHolder = field(default_factory=ClientHolder)
    redis: RedisHolder = field(default_factory=RedisHolder)  # shared Redis client (gateway.redis_pool)


ConfigT = TypeVar("ConfigT", bound=PluginConfig)


class Plugin(Generic[ConfigT]):
    """Subclass, set ``name`` and ``Config``, override ``handle`` (and the hooks if needed).

    ``__init__`` runs when a config is loaded, also by ``gateway check``: validate and
    precompute there, raising ``ValueError`` for a bad combination of options; do I/O in
    ``startup``.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type[PluginConfig]] = PluginConfig

    def __init__(self, config: ConfigT, context: PluginContext) -> None:
        self.config = config
        self.context = context

    async def handle(self, request: Request, call_next: Handler) -> Response:
        """Answer the request, usually by calling ``await call_next(request)``."""
        return await call_next(request)

    async def startup(self) -> None:
        """Called once before traffic reaches this plugin (I/O allowed)."""

    async def shutdown(self) -> None:
        """Called once when the config this plugin belongs to is retired."""
