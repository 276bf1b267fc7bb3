"""The typed shape of routes.toml (SPEC §2). Validation that needs more than one field
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
    PositiveInt,
    WithJsonSchema,
)

from gateway.units import parse_duration, parse_size

# A parameter of an aiohttp path template: {name} or {name:regex}.
PATH_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::[^}]*)?\}")

DURATION_SCHEMA = {"type": "string", "pattern": r"^\s*[0-9]+(\.[0-9]+)?\s*(ms|s|m|h)\s*$",
                   "description": 'A duration such as "250ms", "5s", "1m".'}
SIZE_SCHEMA = {"anyOf": [{"type": "integer", "minimum": 0},
                         {"type": "string", "pattern": r"^\s*[0-9]+\s*(B|KB|MB|GB|KiB|MiB|GiB)?\s*$"}],
               "description": 'Bytes, or a size such as "10MiB".'}


def _positive(value: float) -> float:
    if value <= 0:
        raise ValueError("must be longer than 0")
    return value


Duration = Annotated[float, BeforeValidator(parse_duration), AfterValidator(_positive),
                     WithJsonSchema(DURATION_SCHEMA)]
Size = Annotated[int, BeforeValidator(parse_size), WithJsonSchema(SIZE_SCHEMA)]


def _check_cidr(value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"must be an IP address or CIDR such as 10.0.0.0/8, got {value!r}") from None
    return value


Cidr = Annotated[str, AfterValidator(_check_cidr)]


def _check_listen(value: str) -> str:
    _, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f'must be "HOST:PORT", got {value!r}')
    return value


Listen = Annotated[str, AfterValidator(_check_listen)]


def _check_target(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError(f'must be an http:// or https:// URL such as "http://10.0.0.1:8080", got {value!r}')
    rest = value.split("://", 1)[1]
    if not rest or "/" in rest.rstrip("/") or "?" in rest:
        raise ValueError(f"must be scheme://host[:port] without a path, got {value!r}")
    return value.rstrip("/")


Target = Annotated[str, AfterValidator(_check_target)]


class Strict(BaseModel):
    """Base for every config table: unknown keys are errors, values are immutable."""

    # strict: "yes" is not a boolean and "2" is not a number — typos must not pass silently
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class GatewaySettings(Strict):
    listen: Listen = "0.0.0.0:8080"
    admin_listen: Listen = "127.0.0.1:9901"
    workers: PositiveInt = 1
    timeout: Duration = 30.0
    max_body_bytes: Size = 10 * 1024 * 1024
    drain_timeout: Duration = 20.0
    client_body_timeout: Duration = 60.0  # longest silence while a client sends its body: 408
    header_timeout: Duration = 10.0  # request line + headers must arrive within it (slowloris)
    keepalive_timeout: Duration = 75.0  # idle keep-alive client connections are closed after it
    max_connections: PositiveInt = 10_000  # open client connections per process; beyond it new ones are refused
    max_json_depth: PositiveInt = 64  # nesting of JSON the gateway parses (orchestration bodies, answers)
    trusted_proxies: list[Cidr] = Field(default_factory=list)
    redis_url: str = ""
    # Request hygiene (docs/security.md): what the router sees is what the upstream gets.
    merge_slashes: bool = True  # "//a///b" is "/a/b"
    encoded_slashes: Literal["reject", "keep"] = "reject"  # %2F / %5C in a path: 400, or kept encoded
    underscores_in_headers: Literal["drop", "reject", "allow"] = "drop"  # "X_Consumer" never passes as "X-Consumer"
    # Admin listener hardening (docs/operations.md#admin-listener)
    admin_hosts: list[str] = Field(default_factory=list)  # Host names accepted besides IP literals and localhost
    admin_token: str = ""  # when set, admin endpoints but /healthz /readyz /metrics need "Bearer <token>"


class UpstreamTimeouts(Strict):
    connect: Duration = 1.0
    response: Duration = 30.0
    idle: Duration = 60.0


class HealthConfig(Strict):
    path: str = "/healthz"
    interval: Duration = 5.0
    timeout: Duration = 1.0
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
    reset_timeout: Duration = 30.0
    on: list[int] = Field(default_factory=lambda: [502, 503, 504])
    scope: Literal["upstream", "target"] = "upstream"
    shared: bool = False
    half_open_probes: PositiveInt = 1


class RetryConfig(Strict):
    attempts: PositiveInt = 3
    on: list[StatusOrKind] = Field(default_factory=lambda: [502, 503, 504, "connect", "timeout"])
    backoff: Duration = 0.025
    max_backoff: Duration = 0.25
    methods: list[str] | None = None


class UpstreamConfig(Strict):
    targets: Annotated[list[Target], Field(min_length=1)]
    balance: Literal["round_robin", "least_requests", "random"] = "round_robin"
    weights: list[PositiveInt] | None = None
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
    """One call of an orchestrated route (SPEC §6)."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_-]*$")]
    upstream: str
    method: Method = "GET"
    path: Annotated[str, Field(pattern=r"^/")]
    headers: dict[str, str] = Field(default_factory=dict)
    body: dict[str, Any] | None = None
    timeout: Duration | None = None
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
    timeout: Duration | None = None
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
