"""Hostile input through the real gateway: deeply nested JSON, invalid UTF-8 and lone
surrogates, raw non-ASCII bytes in credentials. Always a 4xx problem document or a failed
step, never a 500 or a crash."""

from __future__ import annotations

import base64
import json
from typing import Any

import aiohttp
from aiohttp import web

from gateway.process import GatewayProcess
from tests.conftest import StartGateway, StartUpstream, Upstream
from tests.support import RawResponse, metric, plugin_table, proxy_config, raw_exchange, scrape, url
from tests.support.edge import orchestration_config, step_table
from tests.support.tokens import SECRET, bcrypt_hash

PROBLEM = "application/problem+json"


def nested(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


def deep_text(depth: int) -> bytes:
    return b"[" * depth + b"1" + b"]" * depth


class Answers:
    """A JSON service answering what the test sets per path (raw bytes as they are)."""

    def __init__(self) -> None:
        self.bodies: dict[str, bytes] = {}

    def set(self, path: str, body: Any) -> None:
        self.bodies[path] = body if isinstance(body, bytes) else json.dumps(body).encode()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=self.bodies.get(request.path, b"{}"), content_type="application/json")


ECHO_BODY_STEP = step_table("echo", "/echo", method='"POST"', body='{ data = "{body.data}" }', into='"echo"')


async def ask(http: aiohttp.ClientSession, gw: GatewayProcess, path: str, data: bytes | None = None
              ) -> tuple[int, str, Any]:
    """POST ``data`` as JSON, or GET without it; the status, content type and decoded body."""
    method, headers = ("GET", None) if data is None else ("POST", {"Content-Type": "application/json"})
    async with http.request(method, url(gw, path), data=data, headers=headers) as response:
        body = await response.read()
        return response.status, response.content_type, json.loads(body) if body else None


# --- nesting depth ------------------------------------------------------------------------------


async def test_client_json_nested_too_deep_is_a_400(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    answers = Answers()
    up = await upstream(answers.handle)
    gw = await gateway(orchestration_config(up.url, ECHO_BODY_STEP))
    for body in (deep_text(5000), b'{"data": ' + deep_text(64) + b"}", b"[" * 100_000):  # 5000, 65, unclosed
        status, kind, problem = await ask(http, gw, "/combo/1", body)
        assert (status, kind) == (400, PROBLEM)
        assert problem["detail"] == "the request body is nested deeper than 64 levels"
    assert up.hits == 0
    # 64 levels in all (the object around "data" is one of them) is fine, and reaches the upstream.
    status, _, merged = await ask(http, gw, "/combo/1", json.dumps({"data": nested(63)}).encode())
    assert status == 200
    assert up.hits == 1
    assert json.loads(up.bodies[0]) == {"data": nested(63)}
    assert merged == {"echo": {}}
    text = await scrape(gw)
    assert metric(text, "gateway_requests_total", route="combo", method="POST", code="400", source="gateway") == 3
    assert metric(text, "gateway_requests_total", route="combo", code="500") == 0


async def test_the_depth_limit_is_a_setting(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    up = await upstream(Answers().handle)
    gw = await gateway(orchestration_config(up.url, ECHO_BODY_STEP, gateway="max_json_depth = 3"))
    assert (await ask(http, gw, "/combo/1", b'{"data": [[1]]}'))[0] == 200
    status, _, problem = await ask(http, gw, "/combo/1", b'{"data": [[[1]]]}')
    assert (status, problem["detail"]) == (400, "the request body is nested deeper than 3 levels")


async def test_a_deep_upstream_answer_fails_its_step(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    answers = Answers()
    answers.set("/user", {"name": "alice"})
    answers.set("/deep", deep_text(5000))
    answers.set("/edge", nested(64))
    up = await upstream(answers.handle)
    user = step_table("user", "/user", into='"user"')
    gw = await gateway(orchestration_config(up.url, user, step_table("deep", "/deep", into='"deep"')))
    status, kind, problem = await ask(http, gw, "/combo/1")
    assert (status, kind) == (502, PROBLEM)
    assert problem["detail"] == "step 'deep' failed: the upstream's answer is nested deeper than 64 levels"
    assert problem["step"] == "deep"

    optional = step_table("deep", "/deep", into='"deep"', optional="true", fallback="[]")
    gw = await gateway(orchestration_config(up.url, user, optional))
    async with http.get(url(gw, "/combo/1")) as response:
        assert response.status == 200
        assert response.headers["X-Gateway-Complete"] == "false"
        body = await response.json()
    assert body["user"] == {"name": "alice"} and body["deep"] == []
    assert body["errors"] == [{"step": "deep", "status": 502,
                               "error": "the upstream's answer is nested deeper than 64 levels"}]
    text = await scrape(gw)
    assert metric(text, "gateway_steps_total", route="combo", step="deep", outcome="fallback") == 1

    # 64 levels is within the limit; `into` nesting it once more is the gateway's own doing.
    gw = await gateway(orchestration_config(up.url, user, step_table("deep", "/edge", into='"deep"')))
    status, _, body = await ask(http, gw, "/combo/1")
    assert status == 200
    assert body["deep"] == nested(64)


# --- invalid UTF-8 and lone surrogates ------------------------------------------------------------


async def test_a_lone_surrogate_from_the_client_is_a_400_wherever_it_goes(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    up = await upstream(Answers().handle)
    steps = {
        "path": step_table("s", "/items/{body.id}"),
        "query": step_table("s", "/items?id={body.id}"),
        "header": step_table("s", "/items", headers='{ X-Id = "{body.id}" }'),
        "body": step_table("s", "/items", method='"POST"', body='{ id = "{body.id}", raw = "x{body.id}" }'),
    }
    for where, step in steps.items():
        gw = await gateway(orchestration_config(up.url, step))
        for body in (rb'{"id": "\udcff"}', rb'{"id": "a\ud800b"}', rb'{"\udfff": 1, "id": "x"}',
                     b'{"id": "\xff"}', b'{"id": "\xed\xb3\xbf"}'):
            status, kind, problem = await ask(http, gw, "/combo/1", body)
            assert (status, kind) == (400, PROBLEM), (where, body)
            assert problem["detail"].startswith("the request body "), problem
        # A surrogate pair is one valid character, and an escaped backslash is no escape at all.
        for body, sent in ((rb'{"id": "\ud83d\ude00"}', "\U0001f600"), (rb'{"id": "\\udcff"}', "\\udcff")):
            status, _, _ = await ask(http, gw, "/combo/1", body)
            assert status == 200, (where, body)
            last = up.requests[-1]
            if where == "path":
                assert last.path == "/items/" + sent
            elif where == "query":
                assert last.query["id"] == sent
            elif where == "header":
                assert last.headers["X-Id"] == sent
            else:
                assert json.loads(up.bodies[-1]) == {"id": sent, "raw": "x" + sent}
    assert metric(await scrape(gw), "gateway_requests_total", route="combo", code="500") == 0


async def test_a_lone_surrogate_in_an_upstream_answer_fails_that_step(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    answers = Answers()
    answers.set("/user", rb'{"id": "\udcff", "name": "alice"}')
    answers.set("/latin1", b'{"id": "caf\xe9"}')
    up = await upstream(answers.handle)
    for path, error in (("/user", "the upstream's answer contains a lone surrogate"),
                        ("/latin1", "the upstream's answer is not valid UTF-8")):
        steps = step_table("user", path), step_table("orders", "/orders/{user.id}")
        gw = await gateway(orchestration_config(up.url, *steps))
        status, kind, problem = await ask(http, gw, "/combo/1")
        assert (status, kind) == (502, PROBLEM)
        assert problem["step"] == "user"
        assert problem["detail"].startswith(f"step 'user' failed: {error}")
    assert not [r for r in up.requests if r.path.startswith("/orders")]


async def raw_get(gw: GatewayProcess, target: bytes, *headers: bytes) -> RawResponse:
    head = b"GET " + target + b" HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n" + b"".join(
        h + b"\r\n" for h in headers)
    return await raw_exchange(gw.port, head + b"\r\n")


async def test_invalid_utf8_in_a_header_query_or_path_used_by_a_template_is_a_400(
    upstream: StartUpstream, gateway: StartGateway
) -> None:
    up = await upstream(Answers().handle)
    step = step_table("s", "/items/{path.id}?q={query.q}", headers='{ X-Tenant = "{header.X-Tenant}" }')
    gw = await gateway(orchestration_config(up.url, step))
    ok = await raw_get(gw, b"/combo/caf%C3%A9?q=%C3%A9t%C3%A9", "X-Tenant: \u00e9t\u00e9".encode())
    assert ok.status == 200
    assert up.requests[-1].path == "/items/caf\u00e9"
    assert up.requests[-1].query["q"] == "\u00e9t\u00e9"
    assert up.requests[-1].headers["X-Tenant"] == "\u00e9t\u00e9"
    hits = up.hits
    for target, tenant in ((b"/combo/1?q=a", b"X-Tenant: t\xff"),  # obs-text, not UTF-8
                           (b"/combo/1?q=a", b"X-Tenant: \xe9t\xe9"),  # latin-1
                           (b"/combo/1?q=%FF", b"X-Tenant: t"),
                           (b"/combo/%FF?q=a", b"X-Tenant: t"),
                           (b"/combo/%ED%B3%BF?q=a", b"X-Tenant: t")):
        response = await raw_get(gw, target, tenant)
        assert response.status == 400, (target, tenant, response.body)
        assert response.get("Content-Type") == PROBLEM
    assert up.hits == hits
    # `%25FF` is the text "%FF", not a byte: valid.
    assert (await raw_get(gw, b"/combo/%25FF?q=a", b"X-Tenant: t")).status == 200
    assert up.requests[-1].raw_path.startswith("/items/%25FF?")
    assert metric(await scrape(gw), "gateway_requests_total", route="combo", code="500") == 0


async def test_a_header_with_raw_bytes_that_no_template_reads_does_not_matter(
    upstream: StartUpstream, gateway: StartGateway
) -> None:
    up = await upstream(Answers().handle)
    gw = await gateway(orchestration_config(up.url, step_table("s", "/items")))
    assert (await raw_get(gw, b"/combo/%FF?q=%FF", b"X-Other: \xff\xfe")).status == 200


# --- credentials with raw bytes ---------------------------------------------------------------------


def auth_route(up: Upstream, plugin: str) -> str:
    consumer = '[consumers.alice]\napi_keys = ["ak_live_4f9c2e7d1b8a6053"]'
    return proxy_config(up.url, name="users", path="/api/{rest:.*}", upstream="", after=plugin + "\n" + consumer)


async def invalid_count(gw: GatewayProcess, plugin: str) -> float:
    return metric(await scrape(gw), "gateway_auth_failures_total", route="users", plugin=plugin, reason="invalid")


async def test_raw_bytes_in_credentials_are_a_401_counted_as_invalid(
    upstream: StartUpstream, gateway: StartGateway
) -> None:
    up = await upstream()
    plugins = {
        "jwt": (plugin_table("jwt", secret=f'"{SECRET}"', algorithms='["HS256"]'), [
            b"Authorization: Bearer \xff\xfe\xfd",
            b"Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.\xff.x",
            "Authorization: Bearer \u00e9\u00e9.e30.x".encode(),
            b"Authorization: Bearer " + b"W1tb" * 1500 + b".e30.x",  # 4500 "[" once decoded
        ]),
        "api_key": (plugin_table("api_key"), [
            b"X-API-Key: ak_live_\xff\xfe",
            "X-API-Key: ak_live_\u00e9".encode(),
        ]),
        "basic_auth": (plugin_table("basic_auth", users=f'{{ alice = "{bcrypt_hash("wonderland")}" }}'), [
            b"Authorization: Basic \xff\xfe\xfd",
            "Authorization: Basic YWxp\u00e9".encode(),
            b"Authorization: Basic !!!notbase64",
            b"Authorization: Basic " + base64.b64encode(b"\xffalice:wonderland"),  # the user is not UTF-8
            b"Authorization: Basic YWxpY2U6\xff",
        ]),
    }
    for plugin, (config, headers) in plugins.items():
        gw = await gateway(auth_route(up, config))
        for header in headers:
            response = await raw_get(gw, b"/api/a", header)
            assert response.status == 401, (plugin, header, response.body)
            assert response.get("Content-Type") == PROBLEM
            assert json.loads(response.body)["status"] == 401
            assert response.get("WWW-Authenticate")
        assert await invalid_count(gw, plugin) == len(headers), plugin
        assert metric(await scrape(gw), "gateway_requests_total", route="users", code="500") == 0
    assert up.hits == 0
