"""gateway: an API gateway and orchestration layer on aiohttp.

The plugin API is importable from here: ``from gateway import Plugin, PluginConfig,
Request, Response``.
"""

from __future__ import annotations

__version__ = "0.1.0"

from gateway.compose import Handler, compose
from gateway.http import Body, Request, Response
from gateway.plugin import Plugin, PluginConfig, PluginContext

__all__ = [
    "Body", "Handler", "Plugin", "PluginConfig", "PluginContext", "Request", "Response",
    "__version__", "compose",
]
