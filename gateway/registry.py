"""Where plugin classes come from: the ``gateway.plugins`` entry-point group, or a
``use = "package.module:Class"`` reference. One mapping, no if-ladder."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any

from gateway.plugin import Plugin

ENTRY_POINT_GROUP = "gateway.plugins"

PluginClass = type[Plugin[Any]]


class Registry:
    """Plugin classes by name."""

    def __init__(self, plugins: Mapping[str, PluginClass]) -> None:
        self._plugins = dict(plugins)

    @classmethod
    def discover(cls, group: str = ENTRY_POINT_GROUP) -> Registry:
        """Load every plugin registered under the entry-point group."""
        found: dict[str, PluginClass] = {}
        for entry in entry_points(group=group):
            found[entry.name] = _check(entry.load(), entry.value)
        return cls(found)

    def names(self) -> list[str]:
        return sorted(self._plugins)

    def items(self) -> list[tuple[str, PluginClass]]:
        return sorted(self._plugins.items())

    def resolve(self, use: str) -> PluginClass:
        """The class for ``use``: a registered name or ``package.module:Class``."""
        if ":" in use:
            module_name, _, attr = use.partition(":")
            try:
                module = importlib.import_module(module_name)
            except ImportError as exc:
                raise LookupError(f"cannot import {module_name!r}: {exc}") from None
            try:
                return _check(getattr(module, attr), use)
            except AttributeError:
                raise LookupError(f"module {module_name!r} has no {attr!r}") from None
        try:
            return self._plugins[use]
        except KeyError:
            known = ", ".join(self.names()) or "none installed"
            raise LookupError(f"unknown plugin {use!r} (known: {known})") from None


def _check(obj: object, where: str) -> PluginClass:
    if not (isinstance(obj, type) and issubclass(obj, Plugin)):
        raise LookupError(f"{where} is not a gateway.Plugin subclass")
    return obj
