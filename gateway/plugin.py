"""The plugin API (docs/plugins.md): a name, a typed config, one async ``handle`` method.

A plugin answers early, changes the request, calls the rest of the chain, or changes the
response. The gateway times and counts every plugin; plugins do not measure themselves.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Generic, TypeVar

import aiohttp
from pydantic import BaseModel, ConfigDict

from gateway.compose import Handler
from gateway.config_model import ConsumerConfig, GatewaySettings
from gateway.http import Request, Response
from gateway.redis_pool import RedisHolder

if TYPE_CHECKING:
    from gateway.metrics import Metrics


class PluginConfig(BaseModel):
    """Base for a plugin's options: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def _no_session() -> aiohttp.ClientSession:
    raise RuntimeError("the HTTP client exists only between startup and shutdown")


@dataclass(frozen=True)
class PluginContext:
    """What a plugin may know about where it runs."""

    route: str | None  # None for a global plugin
    settings: GatewaySettings
    consumers: Mapping[str, ConsumerConfig]
    metrics: Metrics
    redis: RedisHolder = field(default_factory=RedisHolder)  # the process's Redis pools (gateway.redis_pool)
    sessions: Callable[[], aiohttp.ClientSession] = field(default=_no_session, repr=False)

    @property
    def http(self) -> aiohttp.ClientSession:
        """The gateway's pooled aiohttp session, for a plugin's own calls (JWKS, token
        introspection): it exists between startup and shutdown, so use it from ``startup``
        on, never in ``__init__``."""
        return self.sessions()

    @property
    def client(self) -> _OldClient:
        """``context.client.session``: the name before ``context.http``, kept for one release."""
        return _OldClient(self)


class _OldClient:
    __slots__ = ("_context",)

    def __init__(self, context: PluginContext) -> None:
        self._context = context

    @property
    def session(self) -> aiohttp.ClientSession:
        warnings.warn("context.client.session is deprecated: use context.http", DeprecationWarning, stacklevel=2)
        return self._context.http


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
