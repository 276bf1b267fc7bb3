"""Config text and a client call for the auth, orchestration and security tests: ``[[routes]]``
and ``[[routes.steps]]`` tables written from Python values, and one request read back whole."""

from __future__ import annotations

import json
from typing import Any, NamedTuple

import aiohttp
from multidict import CIMultiDict

from gateway.process import GatewayProcess
from tests.support.scraping import url


def toml_value(value: object) -> str:
    """A Python value as a TOML literal: strings, numbers, booleans, lists and inline tables."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(value)  # a JSON string or number is a TOML one too


def table(header: str, *more: str, **fields: object) -> str:
    """A ``[[header]]`` table of ``fields`` (None leaves a field out), then ``more`` TOML text
    such as the route's plugin or step tables."""
    lines = [f"{key} = {toml_value(value)}" for key, value in fields.items() if value is not None]
    return "\n".join([f"[[{header}]]", *lines, *more]) + "\n"


def route(name: str, path: str, *more: str, upstream: str | None = "svc", **fields: object) -> str:
    """A ``[[routes]]`` table: a proxy route to ``upstream``, or with ``upstream=None`` and
    ``step`` tables in ``more``, an orchestrated one."""
    return table("routes", *more, name=name, path=path, upstream=upstream, **fields)


def step(name: str, path: str, *, upstream: str = "svc", **fields: object) -> str:
    """A ``[[routes.steps]]`` table calling ``path`` on ``upstream``."""
    return table("routes.steps", name=name, upstream=upstream, path=path, **fields)


class Answer(NamedTuple):
    """A response read whole: a JSON body decoded, any other body as bytes."""

    status: int
    headers: CIMultiDict[str]
    body: Any


async def call(
    http: aiohttp.ClientSession, gw: GatewayProcess, path: str, headers: dict[str, str] | None = None,
    *, method: str = "GET", json_body: Any = None,
) -> Answer:
    """One request to the gateway's ``path``."""
    async with http.request(method, url(gw, path), headers=headers, json=json_body) as response:
        body = await response.read()
        decoded = json.loads(body) if response.content_type.endswith("json") and body else body
        return Answer(response.status, CIMultiDict(response.headers), decoded)
