"""``rate_limit``: ``limit`` requests per ``window`` per key (GCRA, see ratelimit_algo), in
this process or shared through Redis, with the RateLimit headers and 429 (docs/rate-limiting.md).

    [[routes.plugins]]
    use = "rate_limit"
    limit = 100                 # one limit ...
    window = "1m"
    # limits = [{ limit = 10, window = "1s" }, { limit = 1000, window = "1h" }]   # ... or several
    key = "consumer"            # consumer (else JWT subject, else client IP) | ip | route | "header:X-Tenant"
    store = "auto"              # auto (redis when gateway.redis_url is set) | local | redis
    on_store_error = "allow"    # allow | deny (503) | local (this process's own limiter)
    headers = "draft"           # draft | legacy | none

Keys carry their kind as a prefix, so kinds never share a quota: a consumer is ``c:<name>``,
an authenticated subject that names no consumer (``request.subject``) ``s:<sub>``, so a
token whose ``sub`` is ``alice`` never spends consumer alice's quota.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Literal

from prometheus_client import Counter
from pydantic import AfterValidator, PositiveInt

from gateway import (
    Duration,
    GatewayError,
    Handler,
    Plugin,
    PluginConfig,
    PluginContext,
    Request,
    Response,
    ServiceUnavailable,
    check_url,
)
from plugins.ratelimit_algo import Decision, Limit, Quota, verdict
from plugins.ratelimit_store import LocalStore, RedisStore, RedisUnavailable

DECISIONS = ("allowed", "limited", "store_error_allowed", "store_error_denied", "local_fallback")
LONG_KEY = 64  # longer key values (client-chosen headers) are hashed


class TooManyRequests(GatewayError):
    """429: the client used its quota; carries Retry-After and the RateLimit headers."""

    status, title, slug = 429, "Too Many Requests", "rate-limited"


def _whole_seconds(value: float) -> float:
    if not float(value).is_integer():
        raise ValueError(f"must be a whole number of seconds (the RateLimit headers count seconds), got {value:g}s")
    return value


def _key_kind(value: str) -> str:
    if value in ("consumer", "ip", "route") or (value.startswith("header:") and value[7:].strip()):
        return value
    raise ValueError(f'must be "consumer", "ip", "route" or "header:NAME", got {value!r}')


Window = Annotated[Duration, AfterValidator(_whole_seconds)]


class LimitConfig(PluginConfig):
    limit: PositiveInt
    window: Window


class RateLimitConfig(PluginConfig):
    limit: PositiveInt | None = None
    window: Window | None = None
    limits: list[LimitConfig] | None = None
    key: Annotated[str, AfterValidator(_key_kind)] = "consumer"
    store: Literal["auto", "local", "redis"] = "auto"
    on_store_error: Literal["allow", "deny", "local"] = "allow"
    headers: Literal["draft", "legacy", "none"] = "draft"
    max_keys: PositiveInt = 100_000  # per store in this process: memory stays bounded


def _limits(config: RateLimitConfig) -> list[Limit]:
    one = config.limit is not None or config.window is not None
    if one and config.limits is not None:
        raise ValueError("give either `limit` and `window` or `limits = [...]`, not both")
    if config.limits is not None:
        if not config.limits:
            raise ValueError("`limits` must not be empty")
        return [Limit.of(item.limit, item.window) for item in config.limits]
    if config.limit is None or config.window is None:
        raise ValueError('needs `limit` and `window` (e.g. limit = 100, window = "1m") or `limits = [...]`')
    return [Limit.of(config.limit, config.window)]


class RateLimit(Plugin[RateLimitConfig]):
    """Counts requests per key and answers 429 past the limit."""

    name = "rate_limit"
    Config = RateLimitConfig

    def __init__(self, config: RateLimitConfig, context: PluginContext) -> None:
        super().__init__(config, context)
        self.limits = _limits(config)
        url = context.settings.redis_url
        if config.store == "redis" and not url:
            raise ValueError('store = "redis" needs gateway.redis_url')
        self.uses_redis = config.store == "redis" or (config.store == "auto" and bool(url))
        if self.uses_redis:
            check_url(url)
        self.local = LocalStore(self.limits, config.max_keys)
        self.redis: RedisStore | None = None
        self._header = config.key[7:].strip() if config.key.startswith("header:") else ""
        self._scope = f"{context.route or '_global'}|{config.key}|"
        self._counters: dict[str, dict[str, Counter]] = {}
        self._policies: dict[tuple[str, int], str] = {}
        if context.route is not None:
            self._counters_for(context.route)

    def _counters_for(self, route: str) -> dict[str, Counter]:
        counters = self._counters.get(route)
        if counters is None:
            family = self.context.metrics.ratelimit_decisions
            counters = self._counters[route] = {d: family.labels(route, d) for d in DECISIONS}
        return counters

    async def startup(self) -> None:
        if self.uses_redis:
            pool = self.context.redis.get(self.context.settings.redis_url, self.context.metrics)
            pool.acquire()
            self.redis = RedisStore(pool, self.limits, "gw:rl:")
            if await self.redis.load_script():
                await pool.warm()

    async def shutdown(self) -> None:
        if self.redis is not None:
            self.redis.pool.release()
            self.redis = None

    def key(self, request: Request) -> str:
        """Whose quota this request uses (a prefix keeps the kinds apart)."""
        kind = self.config.key
        if kind == "consumer" and request.consumer:
            value = "c:" + request.consumer
        elif kind == "consumer" and request.subject:
            value = "s:" + request.subject
        elif kind == "route":
            value = "r:" + request.route
        elif self._header and (header := request.headers.get(self._header)):
            value = "h:" + header
        else:  # ip, and the fallback of consumer (no consumer, no subject) / header (not sent)
            value = "ip:" + request.client_ip
        if len(value) > LONG_KEY:
            value = "#" + hashlib.blake2b(value.encode(), digest_size=16).hexdigest()
        return value

    async def handle(self, request: Request, call_next: Handler) -> Response:
        counters = self._counters.get(request.route) or self._counters_for(request.route)
        key = self.key(request)
        decision: Decision | None
        if self.redis is None:
            decision = self.local.decide(key)
            counted = "allowed"
        else:
            try:
                decision = await self.redis.decide(self._scope + key)
                counted = "allowed"
            except RedisUnavailable:
                decision, counted = self._store_failed(key, counters)
        if decision is None:
            counters["store_error_allowed"].inc()
            return await call_next(request)
        quota = verdict(self.limits, decision)
        headers = self._headers(request.route, quota)
        if not decision.allowed:
            counters["limited"].inc()
            headers["Retry-After"] = str(quota.reset)
            raise TooManyRequests(
                f"rate limit of {quota.limit} requests per {quota.window}s exceeded; retry in {quota.reset}s",
                headers=headers,
            )
        counters[counted].inc()
        try:
            response = await call_next(request)
        except GatewayError as exc:
            for name, value in headers.items():
                exc.headers.setdefault(name, value)
            raise
        response.headers.update(headers)
        return response

    def _store_failed(self, key: str, counters: dict[str, Counter]) -> tuple[Decision | None, str]:
        """``on_store_error``: no decision (allow), a 503 (deny) or this process's own (local)."""
        policy = self.config.on_store_error
        if policy == "local":
            return self.local.decide(key), "local_fallback"
        if policy == "deny":
            counters["store_error_denied"].inc()
            raise ServiceUnavailable("the rate-limit store is unavailable", headers={"Retry-After": "1"})
        return None, "store_error_allowed"

    def _headers(self, route: str, quota: Quota) -> dict[str, str]:
        style = self.config.headers
        if style == "none":
            return {}
        if style == "legacy":
            return {"X-RateLimit-Limit": str(quota.limit), "X-RateLimit-Remaining": str(quota.remaining),
                    "X-RateLimit-Reset": str(quota.reset)}
        policy = self._policies.get((route, quota.index))
        if policy is None:
            policy = self._policies[(route, quota.index)] = f'"{route}";q={quota.limit};w={quota.window}'
        return {"RateLimit-Policy": policy, "RateLimit": f'"{route}";r={quota.remaining};t={quota.reset}'}
