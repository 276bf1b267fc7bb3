"""What the auth plugins (``api_key``, ``jwt``, ``basic_auth``) share: the common options,
the 401 with its ``WWW-Authenticate`` challenge, and ``gateway_auth_failures_total`` with
its children bound once per route.

The consumer an auth plugin finds goes on ``request.consumer``; the proxy sends it upstream
as ``X-Consumer``. Client-sent ``X-Consumer*`` headers are removed by the edge before any
plugin runs, so they can never be spoofed.
"""

from __future__ import annotations

import re
from typing import Annotated, ClassVar, Literal, NoReturn, TypeVar

from prometheus_client import Counter
from pydantic import Field

from gateway import Metrics, Plugin, PluginConfig, PluginContext, Request, Unauthorized

Reason = Literal["missing", "invalid", "expired"]
REASONS: tuple[Reason, ...] = ("missing", "invalid", "expired")

# A realm goes inside a quoted-string: no quotes, backslashes or control characters.
Realm = Annotated[str, Field(min_length=1, pattern=r'^[^"\\\x00-\x1f\x7f]+$')]
# An HTTP header name (RFC 9110 token).
HeaderName = Annotated[str, Field(min_length=1, pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")]

_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")


def safe_header_value(value: str) -> bool:
    """Tell whether ``value`` can be sent as a header value (no control characters)."""
    return _UNSAFE.search(value) is None


class AuthConfig(PluginConfig):
    """Options every auth plugin has."""

    hide_credentials: bool = True  # do not forward the key / token / Authorization header
    realm: Realm = "gateway"  # the realm of the WWW-Authenticate challenge


class FailureCounter:
    """``gateway_auth_failures_total{route,plugin,reason}`` children for one plugin.

    A route plugin binds its three children when it is built; a global plugin (shared by
    every route) binds them the first time it refuses a request on a route, then reuses them.
    """

    def __init__(self, metrics: Metrics, plugin: str, route: str | None) -> None:
        self._counter = metrics.auth_failures
        self._plugin = plugin
        self._fixed = self._bind(route) if route is not None else None
        self._by_route: dict[str, dict[Reason, Counter]] = {}

    def _bind(self, route: str) -> dict[Reason, Counter]:
        return {reason: self._counter.labels(route, self._plugin, reason) for reason in REASONS}

    def count(self, route: str, reason: Reason) -> None:
        """Count one refused request on ``route`` (used only by a global plugin)."""
        children = self._fixed
        if children is None:
            children = self._by_route.get(route)
            if children is None:
                children = self._by_route[route] = self._bind(route)
        children[reason].inc()


AuthConfigT = TypeVar("AuthConfigT", bound=AuthConfig)


class AuthPlugin(Plugin[AuthConfigT]):
    """Base of the auth plugins: ``reject`` counts the failure and raises the 401."""

    scheme: ClassVar[str] = ""  # the auth-scheme of the challenge: Key, Bearer, Basic

    def __init__(self, config: AuthConfigT, context: PluginContext) -> None:
        super().__init__(config, context)
        self.failures = FailureCounter(context.metrics, self.name, context.route)
        self.challenge = f'{self.scheme} realm="{config.realm}"'

    def reject(self, request: Request, reason: Reason, detail: str, challenge: str | None = None) -> NoReturn:
        """Count a refused request and answer 401 with a ``WWW-Authenticate`` challenge."""
        self.failures.count(request.route, reason)
        raise Unauthorized(detail, headers={"WWW-Authenticate": challenge or self.challenge})
