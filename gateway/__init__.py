"""gateway: an API gateway and orchestration layer on aiohttp.

The plugin API is importable from here: ``from gateway import Plugin, PluginConfig,
Request, Response``. Test helpers for plugins live in ``gateway.testing``.

Every process imports this package first, so it must stay light: names whose module pulls
in ``prometheus_client`` (which has to see ``PROMETHEUS_MULTIPROC_DIR`` before its first
import) are resolved on first access by ``__getattr__`` below.
"""

from __future__ import annotations

__version__ = "0.1.0"

import importlib
from typing import TYPE_CHECKING, Any

from gateway.compose import Handler, compose
from gateway.config_model import DURATION_SCHEMA, Cidr, Duration, Size
from gateway.errors import (
    BadRequest,
    Forbidden,
    GatewayError,
    GatewayTimeout,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    Unauthorized,
    UpstreamError,
)
from gateway.http import Body, Request, Response
from gateway.ids import new_request_id, sane_request_id
from gateway.plugin import Plugin, PluginConfig, PluginContext
from gateway.redis_pool import RedisHolder, RedisPool, RedisUnavailable, check_url
from gateway.units import parse_duration

if TYPE_CHECKING:
    from gateway.metrics import Metrics

# name -> module that defines it, imported on first access
_LAZY = {
    "Metrics": "gateway.metrics",
}

__all__ = [
    "DURATION_SCHEMA",
    "BadRequest",
    "Body",
    "Cidr",
    "Duration",
    "Forbidden",
    "GatewayError",
    "GatewayTimeout",
    "Handler",
    "Metrics",
    "NotFound",
    "PayloadTooLarge",
    "Plugin",
    "PluginConfig",
    "PluginContext",
    "RedisHolder",
    "RedisPool",
    "RedisUnavailable",
    "Request",
    "Response",
    "ServiceUnavailable",
    "Size",
    "Unauthorized",
    "UpstreamError",
    "__version__",
    "check_url",
    "compose",
    "new_request_id",
    "parse_duration",
    "sane_request_id",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
