"""Building a route's chain: global plugins, route plugins, terminal — each hop timed.

The timing is done here, by construction, so no plugin measures itself. A plugin's
duration is its own time: what it spent in the rest of the chain is subtracted. When the
request's trace is recorded, each plugin also becomes an event on the request's span, with
that self time (docs/operations.md#tracing).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from gateway.compose import Handler, Layer, compose
from gateway.errors import GatewayError, InternalError
from gateway.http import Request, Response
from gateway.plugin import Plugin
from gateway.request_scope import current

log = logging.getLogger("gateway.chain")


class PluginFailed(GatewayError):
    """A plugin raised something that is not a GatewayError: a bug, answered as 500."""

    status, title, slug = 500, "Internal Server Error", "plugin-error"


def timed_plugin(plugin: Plugin[Any], histogram_child: Any, route: str) -> Layer[Request, Response]:
    """Wrap ``plugin.handle`` so its own time is observed and its crashes become a 500."""
    handle = plugin.handle
    observe = histogram_child.observe
    name = plugin.name

    async def hop(request: Request, call_next: Handler) -> Response:
        saved = request._below
        request._below = 0.0
        start = time.perf_counter()
        try:
            return await handle(request, call_next)
        except GatewayError:
            raise
        except Exception:
            log.exception("plugin %s failed on route %s", name, route)
            raise PluginFailed(f"plugin {name} failed") from None
        finally:
            total = time.perf_counter() - start
            own = total - request._below
            observe(own)
            request._below = saved + total
            scope = current()
            if scope is not None and scope.server is not None:  # the trace is recorded
                scope.server.events.append((f"plugin {name}", time.time_ns() - int(total * 1e9), {
                    "gateway.plugin": name, "gateway.plugin.self_ms": round(own * 1000, 3)}))

    return hop


def timed_terminal(terminal: Handler) -> Handler:
    """Record the terminal's time so the plugin above it can subtract it (and keep a
    terminal's crash from being blamed on the last plugin)."""

    async def hop(request: Request) -> Response:
        start = time.perf_counter()
        try:
            return await terminal(request)
        except GatewayError:
            raise
        except Exception:
            log.exception("route %s: the terminal failed", request.route)
            raise InternalError("the gateway failed to handle this request") from None
        finally:
            request._below += time.perf_counter() - start

    return hop


def build_chain(
    route: str, plugins: Sequence[Plugin[Any]], terminal: Handler, plugin_histogram: Any
) -> Handler:
    """Compose the plugins around the terminal, once, with a timed hop for each."""
    if not plugins:
        return terminal
    layers = [timed_plugin(p, plugin_histogram.labels(route, p.name), route) for p in plugins]
    return compose(timed_terminal(terminal), layers)
