"""The typed shape of routes.toml (docs/configuration.md). Validation that needs more than one field
at a time (references between sections, plugin options) lives in gateway.config_load."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    PositiveInt,
    WithJsonSchema,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, core_schema

from gateway.units import format_duration, parse_duration, parse_size

# A parameter of an aiohttp path template: {name} or {name:regex}.
PATH_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::[^}]*)?\}")

DURATION_SCHEMA = {"type": "string", "pattern": r"^\s*[0-9]+(\.[0-9]+)?\s*(ms|s|m|h)\s*$",
                   "description": 'A duration such as "250ms", "5s", "1m".'}
SIZE_SCHEMA = {"anyOf": [{"type": "integer", "minimum": 0},
                         {"type": "string", "pattern": r"^\s*[0-9]+\s*(B|KB|MB|GB|KiB|MiB|GiB)?\s*$"}],
               "description": 'Bytes, or a size such as "10MiB".'}


MAX_WORKERS = 1024  # processes; far beyond any machine's cores
MAX_TIMEOUT = 86_400.0  # one day: no wait the gateway does is meant to be longer
MIN_HEALTH_INTERVAL = 0.1  # active checks more often than this flood the upstream they watch
MAX_CONNECTIONS = 1_000_000  # per process; far beyond the file descriptors one process gets
MAX_JSON_DEPTH = 512  # merge, shaping and the JSON encoder recurse: stay well inside Python's recursion limit
MAX_WEIGHT = 1000  # a weighted round robin cycles through sum(weights) slots
MAX_ATTEMPTS = 100  # tries per call; each one may reach the upstream


class BadValue(ValueError):
    """A value that breaks a rule; ``shown`` is the value as a message may quote it (never
    a secret: the loader replaces it when the value is one)."""

    def __init__(self, problem: str, shown: object) -> None:
        super().__init__(f"{problem}, got {shown!r}")
        self.problem = problem
        self.shown = shown


def _positive(value: float) -> float:
    if value <= 0:
        raise ValueError("must be longer than 0")
    return value


Duration = Annotated[float, BeforeValidator(parse_duration), AfterValidator(_positive),
                     WithJsonSchema(DURATION_SCHEMA)]
Size = Annotated[int, BeforeValidator(parse_size), WithJsonSchema(SIZE_SCHEMA)]


def _duration_within(low: float, high: float) -> Any:
    """A validator of durations from ``low`` (exclusive when 0) to ``high`` seconds that
    quotes the value as written ("0.001ms", not 1e-06)."""

    def parse(value: object) -> float:
        seconds = parse_duration(value)
        if seconds <= 0:
            raise ValueError("must be longer than 0")
        if seconds < low:
            raise BadValue(f"must be at least {format_duration(low)}", value)
        if seconds > high:
            raise BadValue(f"must be at most {format_duration(high)}", value)
        return seconds

    return BeforeValidator(parse)


# Every wait of the gateway itself (timeouts, intervals, back-offs): positive, at most a day.
Timeout = Annotated[float, _duration_within(0.0, MAX_TIMEOUT), WithJsonSchema(DURATION_SCHEMA)]
HealthInterval = Annotated[float, _duration_within(MIN_HEALTH_INTERVAL, MAX_TIMEOUT),
                           WithJsonSchema(DURATION_SCHEMA)]


class _AtMost:
    """Annotation: an integer no larger than ``limit`` (and ``maximum`` in the JSON Schema);
    the message says ``why``."""

    def __init__(self, limit: int, why: str) -> None:
        self.limit = limit
        self.why = why

    def check(self, value: int) -> int:
        if value > self.limit:
            shown = f"{self.limit:_}" if self.limit >= 10_000 else str(self.limit)  # as TOML spells it
            raise BadValue(f"must be at most {shown} ({self.why})", value)
        return value

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_after_validator_function(self.check, handler(source))

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        out = handler(schema)
        out["maximum"] = self.limit
        return out


def _check_cidr(value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"must be an IP address or CIDR such as 10.0.0.0/8, got {value!r}") from None
    return value


Cidr = Annotated[str, AfterValidator(_check_cidr)]


_HOST_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOST_NAME = re.compile(rf"{_HOST_LABEL}(?:\.{_HOST_LABEL})*\.?")
_PORT = re.compile(r"[0-9]{1,5}")


def host_problem(host: str) -> str | None:
    """Why ``host`` (a name, an IPv4 address or a bracketed IPv6 address) is not one."""
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return f"{host} is not an IPv6 address"
        return None
    if ":" in host:
        return "an IPv6 address must be in brackets, such as [::1]"
    if host.replace(".", "").isdigit():
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return f"{host} is not an IPv4 address"
        return None
    if len(host) > 253 or not _HOST_NAME.fullmatch(host):
        return f"{host!r} is not a valid host name (letters, digits, '-', '_' and '.')"
    return None


def port_problem(port: str, allow_zero: bool) -> str | None:
    low = 0 if allow_zero else 1
    if not _PORT.fullmatch(port) or not low <= int(port) <= 65535:
        return f"the port must be a number from {low} to 65535" + (" (0: any free port)" if allow_zero else "")
    return None


def listen_problem(value: str) -> str | None:
    """Why ``value`` is not a listen address "HOST:PORT" (an empty HOST: every interface)."""
    if any(c.isspace() or not c.isprintable() for c in value):
        return 'must be "HOST:PORT" without spaces'
    host, sep, port = value.rpartition(":")
    if not sep:
        return 'must be "HOST:PORT", such as "0.0.0.0:8080"'
    problem = port_problem(port, allow_zero=True)
    if problem is None and host:
        problem = host_problem(host)
    return f'must be "HOST:PORT": {problem}' if problem else None


def _check_listen(value: str) -> str:
    problem = listen_problem(value)
    if problem is not None:
        raise BadValue(problem, value)
    return value


Listen = Annotated[str, AfterValidator(_check_listen)]


def without_userinfo(url: str) -> str:
    """``url`` with any ``user:password@`` removed."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    cut = len(rest)
    for mark in "/?#":
        found = rest.find(mark)
        if found != -1:
            cut = min(cut, found)
    authority, tail = rest[:cut], rest[cut:]
    return f"{scheme}://{authority.rpartition('@')[2]}{tail}"


def _check_target(value: str) -> str:
    scheme, sep, rest = value.partition("://")
    if not sep or scheme not in ("http", "https"):
        raise BadValue('must be an http:// or https:// URL such as "http://10.0.0.1:8080"', value)
    if any(c.isspace() or not c.isprintable() for c in value):
        raise BadValue("must not contain spaces or control characters", value)
    authority = rest.rstrip("/")
    if any(mark in authority for mark in "/?#"):
        raise BadValue("must be scheme://host[:port] without a path, query or fragment", value)
    if "@" in authority:
        raise BadValue("must not contain user information (user:password@); send credentials with a "
                       "plugin such as `headers`", without_userinfo(value))
    if authority.startswith("["):
        close = authority.find("]")
        if close == -1:
            raise BadValue("an IPv6 address needs its closing ']'", value)
        host, after = authority[:close + 1], authority[close + 1:]
        if after and not after.startswith(":"):
            raise BadValue("must be scheme://host[:port]", value)
        port, has_port = after[1:], bool(after)
    else:
        host, colon, port = authority.partition(":")
        has_port = bool(colon)
        if ":" in port:
            raise BadValue("an IPv6 address must be in brackets, such as http://[::1]:8080", value)
    if not host:
        raise BadValue("has no host", value)
    problem = host_problem(host) or (port_problem(port, allow_zero=False) if has_port else None)
    if problem is not None:
        raise BadValue(problem, value)
    return value.rstrip("/")


Target = Annotated[str, AfterValidator(_check_target)]


def _check_health_path(value: str) -> str:
    if not value.startswith("/") or any(c.isspace() or not c.isprintable() for c in value):
        raise BadValue('must be a path starting with "/", without spaces', value)
    return value


def _check_status(value: int) -> int:
    if not 100 <= value <= 599:
        raise BadValue("must be an HTTP status (100-599)", value)
    return value


def _check_method(value: str) -> str:
    if value.upper() not in HTTP_METHODS:
        raise BadValue(f"must be an HTTP method ({', '.join(HTTP_METHODS)})", value)
    return value


class Strict(BaseModel):
    """Base for every config table: unknown keys are errors, values are immutable."""

    # strict: "yes" is not a boolean and "2" is not a number — typos must not pass silently
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def _check_log_path(value: str) -> str:
    if not value or "\0" in value:
        raise ValueError('must be "-" (standard output) or a file path')
    return value


def _check_endpoint(value: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ValueError(f"must be an OTLP/HTTP base URL such as http://collector:4318, got {value!r}")
    return value


class AccessLogConfig(Strict):
    """``[gateway.access_log]`` (docs/operations.md#access-log)."""

    enabled: bool = True
    path: Annotated[str, AfterValidator(_check_log_path)] = "-"  # "-": standard output
    format: Literal["json", "text"] = "json"
    query: bool = False  # the query string in `path` (credential-like parameters redacted)


class TracingConfig(Strict):
    """``[gateway.tracing]`` (docs/operations.md#tracing): where spans are exported by OTLP/HTTP."""

    endpoint: Annotated[str, AfterValidator(_check_endpoint)]  # spans go to <endpoint>/v1/traces
    service_name: Annotated[str, Field(min_length=1, max_length=200)] = "gateway"
    sample_ratio: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0


class GatewaySettings(Strict):
    listen: Listen = "0.0.0.0:8080"
    admin_listen: Listen = "127.0.0.1:9901"
    workers: Annotated[PositiveInt, _AtMost(MAX_WORKERS, "processes sharing the port; one per CPU core is usual")] = 1
    timeout: Timeout = 30.0
    max_body_bytes: Size = 10 * 1024 * 1024
    drain_timeout: Timeout = 20.0
    client_body_timeout: Timeout = 60.0  # longest silence while a client sends its body: 408
    header_timeout: Timeout = 10.0  # request line + headers must arrive within it (slowloris)
    keepalive_timeout: Timeout = 75.0  # idle keep-alive client connections are closed after it
    # open client connections per process; beyond it new ones are refused
    max_connections: Annotated[PositiveInt, _AtMost(MAX_CONNECTIONS, "open connections per process")] = 10_000
    # nesting of JSON the gateway parses (orchestration bodies, answers)
    max_json_depth: Annotated[
        PositiveInt, _AtMost(MAX_JSON_DEPTH, "merging and encoding deeper JSON would exhaust the recursion limit")
    ] = 64
    trusted_proxies: list[Cidr] = Field(default_factory=list)
    redis_url: str = ""
    # Request hygiene (docs/security.md): what the router sees is what the upstream gets.
    merge_slashes: bool = True  # "//a///b" is "/a/b"
    encoded_slashes: Literal["reject", "keep"] = "reject"  # %2F / %5C in a path: 400, or kept encoded
    underscores_in_headers: Literal["drop", "reject", "allow"] = "drop"  # "X_Consumer" never passes as "X-Consumer"
    # Admin listener hardening (docs/operations.md#admin-listener)
    admin_hosts: list[str] = Field(default_factory=list)  # Host names accepted besides IP literals and localhost
    admin_token: str = ""  # when set, admin endpoints but /healthz /readyz /metrics need "Bearer <token>"
    access_log: AccessLogConfig | None = None  # one line per request (docs/operations.md#access-log)
    tracing: TracingConfig | None = None  # span export; without it trace context is only propagated


class UpstreamTimeouts(Strict):
    connect: Timeout = 1.0
    response: Timeout = 30.0
    idle: Timeout = 60.0


class HealthConfig(Strict):
    path: Annotated[str, AfterValidator(_check_health_path)] = "/healthz"
    interval: HealthInterval = 5.0
    timeout: Timeout = 1.0
    unhealthy_after: PositiveInt = 2
    healthy_after: PositiveInt = 2


def _check_status_or_kind(value: object) -> int | str:
    if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599:
        return value
    if value in ("connect", "timeout", "reset"):
        return str(value)
    raise ValueError(f'must be an HTTP status (100-599) or "connect", "timeout", "reset", got {value!r}')


StatusOrKind = Annotated[
    Any,
    AfterValidator(_check_status_or_kind),
    WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 100, "maximum": 599},
                              {"enum": ["connect", "timeout", "reset"]}]}),
]


class BreakerConfig(Strict):
    failures: PositiveInt = 5
    reset_timeout: Timeout = 30.0
    on: list[Annotated[int, AfterValidator(_check_status)]] = Field(default_factory=lambda: [502, 503, 504])
    scope: Literal["upstream", "target"] = "upstream"
    shared: bool = False
    half_open_probes: PositiveInt = 1


class RetryConfig(Strict):
    attempts: Annotated[PositiveInt, _AtMost(MAX_ATTEMPTS, "each attempt may call the upstream again")] = 3
    on: list[StatusOrKind] = Field(default_factory=lambda: [502, 503, 504, "connect", "timeout"])
    backoff: Timeout = 0.025
    max_backoff: Timeout = 0.25
    methods: list[Annotated[str, AfterValidator(_check_method)]] | None = None


Weight = Annotated[PositiveInt, _AtMost(MAX_WEIGHT, "weights are relative: 1000 to 1 already sends 99.9%")]


class UpstreamConfig(Strict):
    targets: Annotated[list[Target], Field(min_length=1)]
    balance: Literal["round_robin", "least_requests", "random"] = "round_robin"
    weights: list[Weight] | None = None
    timeout: UpstreamTimeouts = Field(default_factory=UpstreamTimeouts)
    health: HealthConfig | None = None
    breaker: BreakerConfig | None = None
    retry: RetryConfig | None = None


class ConsumerConfig(Strict):
    api_keys: list[str] = Field(default_factory=list)
    jwt_subjects: list[str] = Field(default_factory=list)


class PluginSpec(BaseModel):
    """``use`` names the plugin; every other key is that plugin's option, checked against
    the plugin's own Config when the config is loaded."""

    model_config = ConfigDict(extra="allow", frozen=True)
    use: str

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT")
Method = Literal["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"]


class StepConfig(Strict):
    """One call of an orchestrated route (docs/orchestration.md)."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_-]*$")]
    upstream: str
    method: Method = "GET"
    path: Annotated[str, Field(pattern=r"^/")]
    headers: dict[str, str] = Field(default_factory=dict)
    body: dict[str, Any] | None = None
    timeout: Timeout | None = None
    optional: bool = False
    fallback: Any = None
    when: str | None = None
    for_each: str | None = None
    max_fanout: PositiveInt = 50
    after: list[str] = Field(default_factory=list)
    pick: str | None = None
    select: list[str] | None = None
    drop: list[str] | None = None
    rename: dict[str, str] | None = None
    into: Annotated[str, Field(pattern=r"^[^.]+(\.[^.]+)*$")] | None = None


class RouteConfig(Strict):
    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")]
    path: Annotated[str, Field(pattern=r"^/")]
    methods: Annotated[list[Method], Field(min_length=1)] | None = None
    upstream: str | None = None
    rewrite: str | None = None
    timeout: Timeout | None = None
    preserve_host: bool = False
    websocket: bool = False
    max_body_bytes: Size | None = None
    plugins: list[PluginSpec] = Field(default_factory=list)
    # orchestration (terminal `steps`)
    steps: list[StepConfig] = Field(default_factory=list)
    merge: Literal["shallow", "deep"] = "shallow"
    arrays: Literal["replace", "concat"] = "replace"
    errors_key: str | None = None
    status: Annotated[int, Field(ge=200, le=299)] = 200

    def method_list(self) -> list[str]:
        """The methods this route answers; ``["*"]`` for every method."""
        return list(self.methods) if self.methods else ["*"]


class Config(Strict):
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    upstreams: dict[str, UpstreamConfig] = Field(default_factory=dict)
    consumers: dict[str, ConsumerConfig] = Field(default_factory=dict)
    plugins: list[PluginSpec] = Field(default_factory=list)
    routes: list[RouteConfig] = Field(default_factory=list)
