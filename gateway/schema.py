"""The JSON Schema of routes.toml (``gateway schema``), for editors such as Taplo.

Each installed plugin contributes the schema of its own options, selected by ``use``.
"""

from __future__ import annotations

from typing import Any

from gateway.config_model import DURATION_SCHEMA, Config
from gateway.registry import Registry
from gateway.units import format_duration


def _duration_defaults_as_strings(node: Any) -> None:
    """Durations are validated to seconds; show their defaults as routes.toml spells them."""
    if isinstance(node, dict):
        default = node.get("default")
        if node.get("pattern") == DURATION_SCHEMA["pattern"] and isinstance(default, (int, float)):
            node["default"] = format_duration(default)
        for value in node.values():
            _duration_defaults_as_strings(value)
    elif isinstance(node, list):
        for value in node:
            _duration_defaults_as_strings(value)


def json_schema(registry: Registry | None = None) -> dict[str, Any]:
    registry = registry if registry is not None else Registry.discover()
    schema = Config.model_json_schema()
    defs: dict[str, Any] = schema.setdefault("$defs", {})
    variants: list[dict[str, Any]] = []
    for name, cls in registry.items():
        options = cls.Config.model_json_schema(ref_template=f"#/$defs/{name}.{{model}}")
        for def_name, definition in options.pop("$defs", {}).items():
            defs[f"{name}.{def_name}"] = definition
        properties = {"use": {"const": name}, **options.get("properties", {})}
        variants.append({
            "type": "object",
            "title": f"plugin {name}",
            "description": (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else "",
            "properties": properties,
            "required": ["use", *options.get("required", [])],
            "additionalProperties": False,
        })
    variants.append({
        "type": "object",
        "title": "plugin from a module",
        "properties": {"use": {"type": "string", "pattern": r"^[\w.]+:\w+$"}},
        "required": ["use"],
    })
    defs["PluginSpec"] = {"anyOf": variants}
    _duration_defaults_as_strings(schema)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "gateway routes.toml"
    return schema
