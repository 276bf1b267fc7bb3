"""Load routes.toml: parse, expand ``${ENV}``, validate everything, report every problem at
once with its location (``routes[2].plugins[1] (rate_limit).limit: ...``)."""

from __future__ import annotations

import ipaddress
import logging
import os
import tomllib
import types
import typing
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ValidationError

from gateway import path_regex
from gateway.config_model import PATH_PARAM, BadValue, Config, PluginSpec, RouteConfig
from gateway.envsubst import expand
from gateway.hints import closest, unknown
from gateway.orchestration.plan import Plan, PlanError, build_plan
from gateway.plugin import PluginConfig
from gateway.redaction import REDACTED, Loc, hide_url_passwords, secret_field
from gateway.registry import PluginClass, Registry

Problem = tuple[str, str]  # (location, message)
MAX_NESTING = 64  # tables and arrays inside one another (the file is level 1, routes[0].steps[0].body level 6)
log = logging.getLogger("gateway.config")


class ConfigError(Exception):
    """A config that cannot be used, with every problem found and where it is."""

    def __init__(self, source: str, problems: Sequence[Problem]) -> None:
        self.source = source
        self.problems = list(problems)
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        return [f"{self.source}: {loc}: {msg}" if loc else f"{self.source}: {msg}"
                for loc, msg in self.problems]


@dataclass(frozen=True)
class PluginUse:
    """A plugin named in the config, with its options validated."""

    use: str
    cls: PluginClass
    config: PluginConfig
    location: str


@dataclass(frozen=True)
class LoadedConfig:
    """A valid config: the typed model plus each plugin's typed options."""

    source: str
    config: Config
    global_plugins: tuple[PluginUse, ...]
    route_plugins: tuple[tuple[PluginUse, ...], ...]  # one tuple per route, in order
    secret_locations: frozenset[str]  # values that came from the environment
    plans: tuple[Plan | None, ...] = ()  # one per route: the compiled steps of orchestrated routes
    warnings: tuple[Problem, ...] = ()  # accepted, but most likely not what was meant

    def warning_lines(self) -> list[str]:
        return [f"{self.source}: {loc}: {msg}" for loc, msg in self.warnings]

    def summary(self) -> str:
        count = len(self.global_plugins) + sum(len(p) for p in self.route_plugins)
        c = self.config
        return f"ok: {len(c.routes)} routes, {len(c.upstreams)} upstreams, {count} plugins"


def load_config(
    path: str | Path, env: Mapping[str, str] | None = None, registry: Registry | None = None
) -> LoadedConfig:
    """Read and validate a routes.toml file; raise ConfigError listing every problem."""
    source = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(source, [("", f"cannot read: {exc.strerror or exc}")]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(source, [("", f"not UTF-8 text (line {line})")]) from None
    text = text.replace("\r\n", "\n").replace("\r", "\n")  # universal newlines, as text mode reads
    return load_text(text, source, env, registry)


def load_text(
    text: str,
    source: str = "routes.toml",
    env: Mapping[str, str] | None = None,
    registry: Registry | None = None,
) -> LoadedConfig:
    """Validate routes.toml content (see load_config)."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, [("", f"not valid TOML: {exc}")]) from None
    except RecursionError:  # the parser recurses into nested arrays and inline tables
        raise ConfigError(source, [("", _TOO_DEEP)]) from None
    too_deep = _nested_too_deep(raw)
    if too_deep is not None:  # everything below walks the tree recursively
        raise ConfigError(source, [(too_deep, _TOO_DEEP)])
    problems: list[Problem] = []
    secrets: set[str] = set()
    _find_env_refs(raw, "", secrets)
    expanded = expand(raw, os.environ if env is None else env, "", problems)
    env_problems = list(problems)  # an unset variable is reported once, not again as a bad value
    registry = registry if registry is not None else Registry.discover()
    try:
        config = Config.model_validate(expanded)
    except ValidationError as exc:
        problems.extend(_pydantic_problems(exc, Config, "", secrets))
        # Report plugin option problems in the same run, not after the next fix.
        for at, specs in _raw_plugin_lists(expanded):
            _plugins(specs, at, registry, problems, secrets)
        raise ConfigError(source, _once_per_unset_variable(env_problems, problems)) from None
    global_plugins = tuple(_plugins(config.plugins, ("plugins",), registry, problems, secrets))
    route_plugins = tuple(
        tuple(_plugins(route.plugins, ("routes", i, "plugins"), registry, problems, secrets))
        for i, route in enumerate(config.routes)
    )
    problems.extend(_cross_checks(config))
    plans = tuple(_plan(route, i, config, problems) for i, route in enumerate(config.routes))
    if problems:
        raise ConfigError(source, _once_per_unset_variable(env_problems, problems))
    warnings = tuple(_warnings(config))
    for loc, message in warnings:
        log.warning("%s: %s: %s", source, loc, message)
    return LoadedConfig(source, config, global_plugins, route_plugins, frozenset(secrets), plans, warnings)


_TOO_DEEP = f"nested deeper than {MAX_NESTING} levels (tables and arrays inside one another)"


def _nested_too_deep(raw: dict[str, Any]) -> str | None:
    """Where the parsed file nests tables and arrays deeper than MAX_NESTING (its first
    few steps), or None; walked without recursion."""
    pending: list[tuple[Any, tuple[int | str, ...]]] = [(raw, ())]
    while pending:
        value, at = pending.pop()
        if isinstance(value, (dict, list)) and len(at) >= MAX_NESTING:
            return _location("", at[:3]) + "..."
        if isinstance(value, dict):
            pending.extend((item, (*at, key)) for key, item in value.items())
        elif isinstance(value, list):
            pending.extend((item, (*at, index)) for index, item in enumerate(value))
    return None


def _warnings(config: Config) -> list[Problem]:
    found = []
    for index, cidr in enumerate(config.gateway.trusted_proxies):
        if ipaddress.ip_network(cidr, strict=False).prefixlen == 0:
            found.append((f"gateway.trusted_proxies[{index}]",
                          f"{cidr!r} trusts every peer: any client can set X-Forwarded-For and choose the "
                          "client IP that rate limits, ip_filter and logs see"))
    return found


def _once_per_unset_variable(env_problems: list[Problem], problems: list[Problem]) -> list[Problem]:
    unset = {loc for loc, _ in env_problems}
    return env_problems + [p for p in problems[len(env_problems):] if p[0] not in unset]


def _find_env_refs(value: Any, path: str, found: set[str]) -> None:
    if isinstance(value, str) and "${" in value:
        found.add(path)
    elif isinstance(value, dict):
        for key, item in value.items():
            _find_env_refs(item, f"{path}.{key}" if path else key, found)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _find_env_refs(item, f"{path}[{index}]", found)


def _raw_plugin_lists(raw: Any) -> list[tuple[Loc, list[PluginSpec]]]:
    """The plugin lists of an invalid config that are themselves well-formed."""
    if not isinstance(raw, dict):
        return []
    found: list[tuple[Loc, Any]] = [(("plugins",), raw.get("plugins"))]
    routes = raw.get("routes")
    if isinstance(routes, list):
        found += [(("routes", i, "plugins"), r.get("plugins")) for i, r in enumerate(routes) if isinstance(r, dict)]
    out = []
    for at, specs in found:
        if isinstance(specs, list) and all(isinstance(s, dict) and isinstance(s.get("use"), str) for s in specs):
            out.append((at, [PluginSpec.model_validate(s) for s in specs]))
    return out


def _plugins(
    specs: Sequence[PluginSpec], at: Loc, registry: Registry, problems: list[Problem], secrets: Collection[str]
) -> list[PluginUse]:
    """Validate each plugin's options; ``at`` is where the list is (``("routes", 2, "plugins")``)."""
    prefix = _location("", at)
    uses = []
    for index, spec in enumerate(specs):
        location = f"{prefix}[{index}] ({spec.use})"
        try:
            cls = registry.resolve(spec.use)
        except LookupError as exc:
            problems.append((f"{prefix}[{index}].use", str(exc)))
            continue
        try:
            options = cls.Config.model_validate(spec.options)
        except ValidationError as exc:
            problems.extend(_pydantic_problems(exc, cls.Config, location, secrets, (*at, index)))
            continue
        uses.append(PluginUse(spec.use, cls, options, location))
    return uses


def _cross_checks(config: Config) -> list[Problem]:
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    claimed: dict[tuple[str, str], int] = {}  # (path, method) -> route index
    router = web.UrlDispatcher()
    for i, route in enumerate(config.routes):
        where = f"routes[{i}]"
        if route.name in seen:
            problems.append((f"{where}.name", f"{route.name!r} is already the name of routes[{seen[route.name]}]"))
        seen.setdefault(route.name, i)
        problems.extend(_terminal_problems(route, where, config))
        shadow = _shadowed_by(claimed, route)
        if shadow is not None:
            problems.append((f"{where}.path", f"{route.path!r} is already served by routes[{shadow}] "
                             "for the same methods, so this route would never be used"))
        else:
            problems.extend(_path_problems(router, route, where))
            problems.extend(_unreachable_path(route.path, config.gateway.merge_slashes, where))
            claimed.update(((route.path, m), i) for m in route.method_list())
    for name, upstream in config.upstreams.items():
        if upstream.breaker is not None and upstream.breaker.shared and not config.gateway.redis_url:
            problems.append((f"upstreams.{name}.breaker.shared",
                             "needs gateway.redis_url (the replicas share trips there)"))
        if upstream.weights is not None and len(upstream.weights) != len(upstream.targets):
            problems.append((f"upstreams.{name}.weights",
                             f"needs one weight per target ({len(upstream.targets)}), got {len(upstream.weights)}"))
    owners: dict[str, str] = {}
    for name, consumer in config.consumers.items():
        for j, key in enumerate(consumer.api_keys):
            if not key:
                problems.append((f"consumers.{name}.api_keys[{j}]", "must not be empty"))
            elif key in owners:
                problems.append(
                    (f"consumers.{name}.api_keys[{j}]", f"the same key is given to consumer {owners[key]!r}")
                )
            owners.setdefault(key, name)
    return problems


_PROXY_ONLY = ("rewrite", "preserve_host", "websocket")
_STEPS_ONLY = ("merge", "arrays", "errors_key", "status")


def _terminal_problems(route: RouteConfig, where: str, config: Config) -> list[Problem]:
    """Exactly one terminal: ``upstream`` (proxy) or ``steps`` (orchestration)."""
    given = route.model_fields_set
    if route.upstream is not None and route.steps:
        return [(where, "has two terminals: set either `upstream` (proxy) or `[[routes.steps]]`, not both")]
    if route.upstream is None and not route.steps:
        return [(where, 'has no terminal: set `upstream = "NAME"` or add `[[routes.steps]]`')]
    if route.upstream is not None:
        problems = [(f"{where}.{key}", "only applies to a route with `[[routes.steps]]`")
                    for key in _STEPS_ONLY if key in given]
        if route.upstream not in config.upstreams:
            problems.append((f"{where}.upstream", unknown("upstream", route.upstream, config.upstreams)))
        return problems
    return [(f"{where}.{key}", "only applies to a proxy route (`upstream = ...`)")
            for key in _PROXY_ONLY if key in given]


def _plan(route: RouteConfig, index: int, config: Config, problems: list[Problem]) -> Plan | None:
    if not route.steps or route.upstream is not None:
        return None
    try:
        return build_plan(
            route.steps, merge=route.merge, arrays=route.arrays, errors_key=route.errors_key, status=route.status,
            path_params=PATH_PARAM.findall(route.path), upstreams=config.upstreams, where=f"routes[{index}].steps",
        )
    except PlanError as exc:
        problems.extend(exc.problems)
        return None


def _shadowed_by(claimed: Mapping[tuple[str, str], int], route: RouteConfig) -> int | None:
    """The earlier route that takes every request this one would get (same path, a shared method)."""
    for method in route.method_list():
        for (path, other), index in claimed.items():
            if path == route.path and (other == method or "*" in (other, method)):
                return index
    return None


def _path_problems(router: web.UrlDispatcher, route: RouteConfig, where: str) -> list[Problem]:
    async def never(_: web.Request) -> web.StreamResponse:  # pragma: no cover - never called
        raise RuntimeError

    problems: list[Problem] = []
    try:
        added = [router.add_route(method, route.path, never) for method in route.method_list()]
    except (ValueError, RuntimeError) as exc:
        problems.append((f"{where}.path", str(exc)))
    else:
        resource = added[0].resource if added else None
        pattern = resource.get_info().get("pattern") if resource is not None else None
        slow = path_regex.route_path_problem(route.path, pattern.pattern) if pattern is not None else None
        if slow is not None:
            problems.append((f"{where}.path", slow))
    if route.rewrite is not None:
        params = set(PATH_PARAM.findall(route.path))
        if not route.rewrite.startswith("/"):
            problems.append((f"{where}.rewrite", f"must start with '/', got {route.rewrite!r}"))
        for name in PATH_PARAM.findall(route.rewrite):
            if name not in params:
                problems.append((f"{where}.rewrite", f"{{{name}}} is not a parameter of path {route.path!r}"))
    return problems


def _unreachable_path(path: str, merge_slashes: bool, where: str) -> list[Problem]:
    """A route path that no normalized request path can match (docs/security.md)."""
    segments = PATH_PARAM.sub("p", path).split("/")[1:]
    if any(segment in (".", "..") for segment in segments):
        return [(f"{where}.path", f"{path!r} has a '.' or '..' segment; requests are normalized before "
                 "routing, so it would never match")]
    if merge_slashes and "" in segments[:-1]:
        return [(f"{where}.path", f"{path!r} has an empty segment ('//'); requests have their slashes merged "
                 "before routing (gateway.merge_slashes), so it would never match")]
    return []


# --- secrets in error messages -------------------------------------------------------


def _secret_in_errors(loc: Loc, secrets: Collection[str]) -> bool:
    """Secret fields, plus ``gateway.redis_url`` (a malformed URL cannot be partly hidden) and
    anything whose raw value came from ``${ENV}``."""
    if secret_field(loc) or loc[:2] == ("gateway", "redis_url"):
        return True
    return bool(secrets) and any(_location("", loc[:n]) in secrets for n in range(1, len(loc) + 1))


class _Hidden:
    """Stands for a secret in a message: its repr is ``'<redacted>'``."""

    def __repr__(self) -> str:
        return repr(REDACTED)


def _shown(value: Any, loc: Loc, secrets: Collection[str]) -> Any:
    """``value`` (found at ``loc``) as an error message may show it: secrets in it hidden."""
    if _secret_in_errors(loc, secrets):
        return _Hidden()
    if isinstance(value, dict):
        return {key: _shown(item, (*loc, key), secrets) for key, item in value.items()}
    if isinstance(value, list):
        return [_shown(item, (*loc, index), secrets) for index, item in enumerate(value)]
    return value


# --- turning pydantic's errors into located, readable messages -------------------------


def _pydantic_problems(
    exc: ValidationError, model: type[BaseModel], prefix: str, secrets: Collection[str] = frozenset(),
    at: Loc = (),
) -> list[Problem]:
    """One problem per location. ``at`` is where ``model`` sits in the config and ``secrets``
    the locations whose values came from ``${ENV}``: values found there are never shown."""
    problems: list[Problem] = []
    seen: set[str] = set()
    for error in exc.errors():
        loc = tuple(error["loc"])
        location = _location(prefix, loc)
        if location in seen:
            continue
        seen.add(location)
        shown = _shown(error.get("input"), (*at, *loc), secrets)
        problems.append((location, hide_url_passwords(_message(error, model, loc, shown))))
    return problems


def _location(prefix: str, loc: tuple[int | str, ...]) -> str:
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _message(error: Any, model: type[BaseModel], loc: tuple[int | str, ...], shown: Any) -> str:
    """What is wrong; ``shown`` is the value as the message may show it (secrets hidden)."""
    kind = error["type"]
    ctx = error.get("ctx") or {}
    value = error.get("input")
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        known = _fields_at(model, loc[:-1])
        close = closest(str(loc[-1]), known)
        hint = f" (did you mean {close!r}?)" if close else ""
        allowed = f"; allowed: {', '.join(known)}" if known and not close else ""
        return f"unknown key{hint}{allowed}"
    if kind == "greater_than" and ctx.get("gt") == 0 and isinstance(value, int):
        return f"must be a positive integer, got {shown!r}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"must be an integer, got {shown!r}"
    if kind == "bool_type" or kind == "bool_parsing":
        return f"must be true or false, got {shown!r}"
    if kind == "string_type":
        return f"must be a string, got {shown!r}"
    if kind == "list_type":
        return f"must be an array, got {shown!r}"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"must be a table, got {shown!r}"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}, got {shown!r}"
    if kind == "too_short":
        return "must not be empty"
    if kind == "string_pattern_mismatch":
        return f"must match {ctx.get('pattern')!r}, got {shown!r}"
    if kind == "value_error" and isinstance(ctx.get("error"), BadValue):
        bad: BadValue = ctx["error"]
        return f"{bad.problem}, got {shown!r}" if isinstance(shown, _Hidden) else str(bad)
    if kind in ("value_error", "assertion_error"):
        message = str(ctx.get("error", error["msg"]))
        if isinstance(shown, _Hidden) and value is not None:  # a validator may quote what it got
            message = message.replace(repr(value), repr(shown))
            if len(str(value)) >= 4:
                message = message.replace(str(value), REDACTED)
        return message
    message = str(error["msg"])
    return f"{message[:1].lower()}{message[1:]}, got {shown!r}"


def _fields_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """The field names of the table at ``loc`` (for "did you mean" hints)."""
    current: Any = model
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel) and isinstance(part, str):
            field = current.model_fields.get(part)
            if field is None:
                return []
            current = field.annotation
        elif typing.get_origin(current) in (list, dict):
            current = typing.get_args(current)[-1]
        else:
            return []
    current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _unwrap(annotation: Any) -> Any:
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            annotation = args[0] if len(args) == 1 else annotation
            if len(args) != 1:
                return annotation
        else:
            return annotation
