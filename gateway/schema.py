"""The JSON Schema of routes.toml (``gateway schema``), for editors such as Taplo.

Each installed plugin contributes the schema of its own options, selected by ``use``.
"""

from __future__ import annotations

from typing import Any

from gateway.config_model import Config
from gateway.registry import Registry


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
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "gateway routes.toml"
    return schema
