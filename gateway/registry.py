"""Where plugin classes come from: the ``gateway.plugins`` entry-point group, or a
``use = "package.module:Class"`` reference. One mapping, no if-ladder."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from gateway.hints import closest
from gateway.plugin import Plugin

ENTRY_POINT_GROUP = "gateway.plugins"
log = logging.getLogger("gateway.registry")

PluginClass = type[Plugin[Any]]


class Registry:
    """Plugin classes by name. Entry points are imported only when a config names them, so
    one broken plugin package does not stop a gateway that does not use it."""

    def __init__(self, plugins: Mapping[str, PluginClass], entries: Mapping[str, EntryPoint] | None = None) -> None:
        self._plugins = dict(plugins)
        self._entries = dict(entries or {})

    @classmethod
    def discover(cls, group: str = ENTRY_POINT_GROUP) -> Registry:
        """Every plugin registered under the entry-point group (imported on first use)."""
        return cls({}, {entry.name: entry for entry in entry_points(group=group)})

    def names(self) -> list[str]:
        return sorted({*self._plugins, *self._entries})

    def items(self) -> list[tuple[str, PluginClass]]:
        """Every plugin that can be imported (broken ones are logged and left out)."""
        out = []
        for name in self.names():
            try:
                out.append((name, self.resolve(name)))
            except LookupError as exc:
                log.warning("plugin %s cannot be loaded: %s", name, exc)
        return out

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
        if use in self._plugins:
            return self._plugins[use]
        entry = self._entries.get(use)
        if entry is None:
            close = closest(use, self.names())
            hint = f"did you mean {close!r}? " if close else ""
            known = ", ".join(self.names()) or "none installed"
            raise LookupError(f"unknown plugin {use!r} ({hint}known: {known})")
        try:
            loaded = entry.load()
        except Exception as exc:
            raise LookupError(f"plugin {use!r} ({entry.value}) cannot be imported: {exc}") from None
        self._plugins[use] = _check(loaded, entry.value)
        return self._plugins[use]


def _check(obj: object, where: str) -> PluginClass:
    if not (isinstance(obj, type) and issubclass(obj, Plugin)):
        raise LookupError(f"{where} is not a gateway.Plugin subclass")
    return obj
