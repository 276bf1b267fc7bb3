"""The admin listener: /metrics, /healthz, /readyz, /status (and /status.json), /config,
POST /reload; / redirects to /status.

It runs on its own port so scraping and rendering metrics stay off the public listener.
Probes and scrapers (/healthz, /readyz, /metrics) are always answered; everything else only
for a Host that DNS rebinding cannot forge, never for a cross-site POST, and only with the
bearer token when ``gateway.admin_token`` is set.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from gateway.config_load import LoadedConfig
from gateway.config_model import GatewaySettings
from gateway.errors import Forbidden, GatewayError, Unauthorized, error_response
from gateway.hygiene import split_host
from gateway.redaction import REDACTED, Loc, hide_url_passwords, secret_field
from gateway.status import TrafficWindow, UpstreamView, sampling, status_document
from gateway.status_page import HEADERS as PAGE_HEADERS
from gateway.status_page import PAGE

if TYPE_CHECKING:  # prometheus_client must not be imported before multiprocess mode is set up
    from prometheus_client.metrics_core import Metric

# Always answered, whatever the Host and without the token: the kubelet and Prometheus ask here.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
REALM = "gateway-admin"


class AdminSource:
    """What a gateway process shows on its admin listener: a single process, or the
    supervisor of workers. ``traffic`` is the status page's window (gateway.status), which
    tests may give their own clock and interval."""

    last_reload: tuple[float, str] | None = None  # (time.time(), "success" | "failure")
    workers = 1

    def __init__(self, traffic: TrafficWindow | None = None) -> None:
        self.started_at = time.monotonic()
        self.traffic = traffic if traffic is not None else TrafficWindow()

    def is_ready(self) -> bool:
        raise NotImplementedError

    def metrics_text(self) -> tuple[bytes, str]:
        raise NotImplementedError

    def current_config(self) -> LoadedConfig:
        raise NotImplementedError

    async def reload(self) -> tuple[bool, str]:
        raise NotImplementedError

    def read_metrics(self) -> list[Metric]:
        """The metric families the status page reads: at least ``gateway_requests_total`` and
        ``gateway_request_duration_seconds`` (blocking: called in a thread)."""
        raise NotImplementedError

    def upstream_views(self, families: list[Metric]) -> list[UpstreamView]:
        """Per upstream of the config in use: its targets' health and breaker states.
        ``families`` is what ``read_metrics`` just returned."""
        raise NotImplementedError


def admin_app(source: AdminSource) -> web.Application:
    """The admin application; its guard reads the settings of the config in use on each request,
    so a reload that changes ``admin_hosts`` or ``admin_token`` applies at once."""

    async def metrics(_: web.Request) -> web.Response:
        body, content_type = await asyncio.to_thread(source.metrics_text)
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        ready = source.is_ready()
        return web.json_response({"ready": ready}, status=200 if ready else 503)

    async def config(_: web.Request) -> web.Response:
        return web.json_response(redacted_config(source.current_config()),
                                 dumps=lambda d: json.dumps(d, indent=2))

    async def reload(_: web.Request) -> web.Response:
        ok, message = await source.reload()
        return web.json_response({"result": "success" if ok else "failure", "detail": message},
                                 status=200 if ok else 422)

    async def status(_: web.Request) -> web.Response:
        return web.Response(body=PAGE, headers=PAGE_HEADERS)

    async def status_json(_: web.Request) -> web.Response:
        return web.json_response(await status_document(source), headers={"Cache-Control": "no-store"},
                                 dumps=lambda d: json.dumps(d, indent=2))

    async def root(_: web.Request) -> web.Response:
        raise web.HTTPFound("/status")

    async def sample_traffic(_: web.Application) -> AsyncIterator[None]:
        async with sampling(source):
            yield

    app = web.Application(middlewares=[admin_guard(lambda: source.current_config().config.gateway)])
    app.on_response_prepare.append(_no_server_header)
    app.cleanup_ctx.append(sample_traffic)
    app.router.add_get("/", root)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/config", config)
    app.router.add_get("/status", status)
    app.router.add_get("/status.json", status_json)
    app.router.add_post("/reload", reload)
    return app


# --- the guard ---------------------------------------------------------------------------


def admin_guard(settings: Callable[[], GatewaySettings]) -> Middleware:
    """Host allow-list, cross-site POST refusal and the bearer token, for every path but
    OPEN_PATHS. ``settings`` is called on each request."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in OPEN_PATHS:
            refusal = refuse(request, settings())
            if refusal is not None:
                return _problem(refusal)
        return await handler(request)

    return guard


def refuse(request: web.Request, settings: GatewaySettings) -> GatewayError | None:
    """Why the admin listener will not answer ``request`` (None: it will)."""
    hosts = request.headers.getall("Host", [])
    if len(hosts) != 1:
        return Forbidden("the request needs one Host header")
    host = split_host(hosts[0].strip())
    if host is None or not admin_host(host[0], settings.admin_hosts):
        return Forbidden(f"Host {hosts[0]!r} is not an IP address, localhost or a name in gateway.admin_hosts")
    if request.method not in _SAFE_METHODS and _cross_site(request, host):
        return Forbidden("a cross-site request may not change the gateway")
    if settings.admin_token and not _bearer_matches(request, settings.admin_token):
        return Unauthorized("the admin listener needs Authorization: Bearer <gateway.admin_token>",
                            headers={"WWW-Authenticate": f'Bearer realm="{REALM}"'})
    return None


def admin_host(name: str, allowed: Iterable[str]) -> bool:
    """Whether a Host name (without its port, lower case) may reach the admin endpoints."""
    if name == "localhost" or _ip_literal(name):
        return True
    for entry in allowed:
        split = split_host(entry.strip())
        if split is not None and split[0] == name:
            return True
    return False


def _ip_literal(name: str) -> bool:
    try:
        if name.startswith("["):
            ipaddress.IPv6Address(name[1:-1])
        else:
            ipaddress.IPv4Address(name)
    except ValueError:
        return False
    return True


def _cross_site(request: web.Request, host: tuple[str, int | None]) -> bool:
    """A browser tells where a request comes from; same-site is exactly http://<Host>."""
    if request.headers.get("Sec-Fetch-Site", "").strip().lower() == "cross-site":
        return True
    origins = request.headers.getall("Origin", [])
    if not origins:
        return False  # not sent by a browser (curl, scripts)
    if len(origins) > 1:
        return True
    scheme, sep, rest = origins[0].strip().partition("://")
    if not sep or scheme.lower() != "http" or any(c in rest for c in "/?#@"):
        return True  # "null", https://, or not an origin at all
    origin = split_host(rest)
    return origin is None or (origin[0], origin[1] or 80) != (host[0], host[1] or 80)


def _bearer_matches(request: web.Request, token: str) -> bool:
    values = request.headers.getall("Authorization", [])
    if len(values) != 1:
        return False
    scheme, _, credentials = values[0].strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    given = credentials.strip().encode("utf-8", "surrogateescape")
    return hmac.compare_digest(given, token.encode("utf-8", "surrogateescape"))


def _problem(error: GatewayError) -> web.Response:
    """The gateway's one problem document (gateway.errors), as an aiohttp response."""
    response = error_response(error, None, None)
    return web.Response(status=response.status, headers=response.headers, body=response.body)


# --- /config ------------------------------------------------------------------------------


async def _no_server_header(_: web.Request, response: web.StreamResponse) -> None:
    """The gateway announces no software version, on the admin port either."""
    response.headers.popall("Server", None)


def redacted_config(loaded: LoadedConfig) -> Any:
    """The effective config as JSON with every secret hidden: values that came from ${ENV},
    consumers' API keys, ``gateway.admin_token``, plugin options named like secrets (secret,
    key, token, users...), credential headers set by plugins or steps, and the password of
    every URL."""
    data = loaded.config.model_dump(mode="json")
    return _redact(data, (), "", loaded.secret_locations, hide=False)


def _redact(value: Any, loc: Loc, path: str, secrets: frozenset[str], *, hide: bool) -> Any:
    hide = hide or path in secrets or secret_field(loc)
    if isinstance(value, dict):
        return {key: _redact(item, (*loc, key), f"{path}.{key}" if path else key, secrets, hide=hide)
                for key, item in value.items()}
    if isinstance(value, list):
        return [_redact(item, (*loc, i), f"{path}[{i}]", secrets, hide=hide) for i, item in enumerate(value)]
    if isinstance(value, str) and value:
        return REDACTED if hide else hide_url_passwords(value)
    return value
