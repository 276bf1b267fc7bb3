"""The admin listener (SPEC §9): /metrics, /healthz, /readyz, /status, /config, POST /reload.

It runs on its own port so scraping and rendering metrics stay off the public listener.
"""

from __future__ import annotations

import asyncio
import html
import json
import re
import time
from typing import Any

from aiohttp import web

from gateway.config_load import LoadedConfig
from gateway.config_model import RouteConfig

REDACTED = "<redacted>"
# Plugin options whose values are secrets (jwt secret, basic_auth users' hashes, keys, tokens).
_SECRET_OPTION = re.compile(r"(secret|password|passwd|token|key|private|credential|users)", re.I)


class AdminSource:
    """What a gateway process shows on its admin listener."""

    last_reload: tuple[float, str] | None = None

    def is_ready(self) -> bool:
        raise NotImplementedError

    def metrics_text(self) -> tuple[bytes, str]:
        raise NotImplementedError

    def current_config(self) -> LoadedConfig:
        raise NotImplementedError

    async def reload(self) -> tuple[bool, str]:
        raise NotImplementedError

    def upstream_status(self) -> dict[str, tuple[str, dict[str, bool]]]:
        """Per upstream: its breaker state ("" without a breaker) and whether each target is up.
        Empty where this process does not call upstreams itself (the supervisor's workers do)."""
        return {}


def admin_app(source: AdminSource) -> web.Application:
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
        return web.Response(text=status_page(source), content_type="text/html")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/config", config)
    app.router.add_get("/status", status)
    app.router.add_post("/reload", reload)
    return app


def redacted_config(loaded: LoadedConfig) -> Any:
    """The effective config as JSON with secrets hidden: every value that came from ${ENV},
    consumers' API keys, and plugin options named like secrets (secret, key, token, users...)."""
    data = loaded.config.model_dump(mode="json")
    return _redact(data, "", loaded.secret_locations, hide=False, in_plugin=False)


def _redact(value: Any, path: str, secrets: frozenset[str], *, hide: bool, in_plugin: bool) -> Any:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            where = f"{path}.{key}" if path else key
            secret = hide or key == "api_keys" or (in_plugin and bool(_SECRET_OPTION.search(key)))
            out[key] = _redact(item, where, secrets, hide=secret, in_plugin=in_plugin)
        return out
    if isinstance(value, list):
        plugins = path.endswith("plugins")
        return [_redact(v, f"{path}[{i}]", secrets, hide=hide, in_plugin=in_plugin or plugins)
                for i, v in enumerate(value)]
    if (hide or path in secrets) and isinstance(value, str) and value:
        return REDACTED
    return value


def _terminal(route: RouteConfig) -> str:
    if route.upstream:
        return f"upstream {route.upstream}"
    return "steps " + ", ".join(step.name for step in route.steps)


def status_page(source: AdminSource) -> str:
    """A plain HTML page for people: routes, upstreams, readiness, last reload."""
    loaded = source.current_config()
    config = loaded.config
    e = html.escape
    rows = []
    for route in config.routes:
        plugins = [p.use for p in config.plugins] + [p.use for p in route.plugins]
        rows.append(
            f"<tr><td>{e(route.name)}</td><td>{e(','.join(route.method_list()))}</td>"
            f"<td><code>{e(route.path)}</code></td><td>{e(_terminal(route))}</td>"
            f"<td>{e(' → '.join(plugins) or '—')}</td></tr>"
        )
    live = source.upstream_status()

    def targets(name: str, listed: list[str]) -> str:
        up = live.get(name, ("", {}))[1]
        return ", ".join(f"{t} ({'up' if up.get(t, True) else 'DOWN'})" if name in live else t for t in listed)

    ups = "".join(
        f"<tr><td>{e(name)}</td><td>{e(up.balance)}</td><td>{e(targets(name, up.targets))}</td>"
        f"<td>{e(live.get(name, ('', {}))[0] or ('-' if name in live else 'see workers'))}</td></tr>"
        for name, up in config.upstreams.items()
    )
    reload = "never"
    if source.last_reload is not None:
        when, result = source.last_reload
        reload = f"{result} at {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(when))} UTC"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>gateway status</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:.2em .8em;text-align:left}}</style></head>
<body><h1>gateway</h1><p>config <code>{e(loaded.source)}</code> — {e(loaded.summary())};
ready: {source.is_ready()}; last reload: {e(reload)}</p>
<h2>Routes</h2><table><tr><th>name</th><th>methods</th><th>path</th><th>terminal</th><th>plugins</th></tr>
{''.join(rows)}</table>
<h2>Upstreams</h2><table><tr><th>name</th><th>balance</th><th>targets</th><th>breaker</th></tr>{ups}</table>
<p><a href="/metrics">/metrics</a> · <a href="/config">/config</a></p></body></html>"""
