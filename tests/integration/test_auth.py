"""Authentication against real upstreams on 127.0.0.1 (docs/auth.md, docs/operations.md): what the client gets,
what the upstream receives, and exactly what gateway_auth_failures_total counts."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
from aiohttp import web

from gateway.process import GatewayProcess
from tests.conftest import StartGateway, StartUpstream, Upstream, metric, scrape, url
from tests.support.tokens import (
    SECRET,
    basic,
    bcrypt_hash,
    bearer,
    forged_token,
    jwk,
    pbkdf2_hash,
    public_pem,
    rsa_key,
    token,
)

ALICE_KEY = "ak_live_4f9c2e7d1b8a6053"
BOB_KEY = "bk_live_0a1b2c3d4e5f6789"
BEARER_INVALID = 'Bearer realm="gateway", error="invalid_token", error_description="{}"'


async def failures(gw: GatewayProcess, route: str, plugin: str) -> dict[str, float]:
    text = await scrape(gw)
    return {reason: metric(text, "gateway_auth_failures_total", route=route, plugin=plugin, reason=reason)
            for reason in ("missing", "invalid", "expired")}


async def get(http: aiohttp.ClientSession, gw: GatewayProcess, path: str,
              headers: dict[str, str] | None = None, method: str = "GET") -> tuple[int, dict[str, Any], Any]:
    async with http.request(method, url(gw, path), headers=headers) as response:
        body = await response.read()
        is_json = response.content_type.endswith("json")
        return response.status, dict(response.headers), json.loads(body) if is_json and body else body


def route_with(up: Upstream, plugins: str, name: str = "users") -> str:
    return f"""
        [upstreams.svc]
        targets = ["{up.url}"]
        [consumers.alice]
        api_keys = ["${{ALICE_KEY}}"]
        jwt_subjects = ["alice@example.com"]
        [consumers.bob]
        api_keys = ["${{BOB_KEY}}"]
        [[routes]]
        name = "{name}"
        path = "/api/{{rest:.*}}"
        upstream = "svc"
        rewrite = "/{{rest}}"
        {plugins}
    """


ENV = {"ALICE_KEY": ALICE_KEY, "BOB_KEY": BOB_KEY, "JWT_SECRET": SECRET}

# --- api_key ------------------------------------------------------------------------------------


async def test_api_key_missing_wrong_and_right(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    up = await upstream()
    gw = await gateway(route_with(up, '[[routes.plugins]]\nuse = "api_key"'), env=ENV)

    status, headers, problem = await get(http, gw, "/api/a", {"X-Consumer": "admin"})
    assert status == 401
    assert headers["WWW-Authenticate"] == 'Key realm="gateway"'
    assert headers["Content-Type"] == "application/problem+json"
    assert problem["detail"] == "an API key is required"
    assert problem["route"] == "users"
    assert problem["request_id"] == headers["X-Request-ID"]
    for wrong in ("nope", ALICE_KEY[:-1]):
        status, headers, problem = await get(http, gw, "/api/a", {"X-API-Key": wrong})
        assert (status, problem["detail"]) == (401, "the API key is not valid")
        assert headers["WWW-Authenticate"] == 'Key realm="gateway"'
    assert up.hits == 0

    spoofed = {"X-API-Key": ALICE_KEY, "X-Consumer": "admin", "X-Consumer-ID": "1", "x-consumer-groups": "root"}
    status, _, body = await get(http, gw, "/api/orders?x=1", spoofed)
    assert status == 200
    assert body == {"path": "/orders?x=1", "method": "GET"}
    got = up.requests[0].headers
    assert got.getall("X-Consumer") == ["alice"]
    assert [k for k in got if k.lower().startswith("x-consumer")] == ["X-Consumer"]
    assert "X-API-Key" not in got
    assert ALICE_KEY not in json.dumps(dict(got))

    assert (await get(http, gw, "/api/b", {"X-API-Key": BOB_KEY}))[0] == 200
    assert up.requests[1].headers["X-Consumer"] == "bob"
    assert await failures(gw, "users", "api_key") == {"missing": 1, "invalid": 2, "expired": 0}


async def test_api_key_in_the_query_is_not_forwarded(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    up = await upstream()
    gw = await gateway(route_with(up, '[[routes.plugins]]\nuse = "api_key"\nquery = "apikey"'), env=ENV)
    status, _, _ = await get(http, gw, f"/api/items?page=2&apikey={BOB_KEY}&q=a%20b")
    assert status == 200
    assert up.requests[0].raw_path == "/items?page=2&q=a%20b"
    assert up.requests[0].headers["X-Consumer"] == "bob"


async def test_cors_answers_the_preflight_before_auth(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    up = await upstream()
    plugins = '[[routes.plugins]]\nuse = "cors"\norigins = ["https://app.example"]\n' \
              '[[routes.plugins]]\nuse = "api_key"'
    gw = await gateway(route_with(up, plugins), env=ENV)
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "GET",
                 "Access-Control-Request-Headers": "X-API-Key"}
    status, headers, _ = await get(http, gw, "/api/a", preflight, method="OPTIONS")
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == "https://app.example"
    status, headers, _ = await get(http, gw, "/api/a", {"Origin": "https://app.example"})
    assert status == 401
    assert headers["Access-Control-Allow-Origin"] == "https://app.example"  # the browser can read the 401
    assert up.hits == 0
    assert await failures(gw, "users", "api_key") == {"missing": 1, "invalid": 0, "expired": 0}


async def test_a_global_auth_plugin_counts_failures_per_route(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    up = await upstream()
    config = route_with(up, "", name="users") + """
        [[plugins]]
        use = "api_key"
        [[routes]]
        name = "orders"
        path = "/orders"
        upstream = "svc"
    """
    gw = await gateway(config, env=ENV)
    await get(http, gw, "/api/a")
    await get(http, gw, "/orders", {"X-API-Key": "wrong"})
    await get(http, gw, "/orders", {"X-API-Key": "wrong"})
    assert (await get(http, gw, "/orders", {"X-API-Key": ALICE_KEY}))[0] == 200
    assert await failures(gw, "users", "api_key") == {"missing": 1, "invalid": 0, "expired": 0}
    assert await failures(gw, "orders", "api_key") == {"missing": 0, "invalid": 2, "expired": 0}


# --- jwt ------------------------------------------------------------------------------------------


async def test_jwt_valid_expired_not_yet_valid_wrong_audience_issuer_signature_and_none(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    up = await upstream()
    plugins = """[[routes.plugins]]
        use = "jwt"
        secret = "${JWT_SECRET}"
        algorithms = ["HS256"]
        audience = "orders-api"
        issuer = "https://idp.example"
        claims_to_headers = { sub = "X-User", scope = "X-Scope" }"""
    gw = await gateway(route_with(up, plugins), env=ENV)
    good = {"aud": "orders-api", "iss": "https://idp.example"}

    status, _, _ = await get(http, gw, "/api/a", {**bearer(token(SECRET, scope="read", **good)),
                                                  "X-User": "root", "X-Consumer": "admin"})
    assert status == 200
    got = up.requests[0].headers
    assert got.getall("X-Consumer") == ["alice"]
    assert got.getall("X-User") == ["alice@example.com"]
    assert got["X-Scope"] == "read"
    assert "Authorization" not in got
    assert (await get(http, gw, "/api/a", bearer(token(SECRET, sub="svc-7", **good))))[0] == 200
    assert up.requests[1].headers["X-Consumer-Subject"] == "svc-7"  # no jwt_subjects entry: not a consumer
    assert "X-Consumer" not in up.requests[1].headers

    now = int(time.time())
    refused = [
        (token(SECRET, exp=now - 120, **good), "the token has expired"),
        (token(SECRET, nbf=now + 600, **good), "the token is not valid yet"),
        (token(SECRET, aud="billing-api", iss="https://idp.example"), "the token is not meant for this audience"),
        (token(SECRET, aud="orders-api", iss="https://evil.example"), "the token's issuer is not accepted"),
        (token("x" * 32, **good), "the token's signature is not valid"),
        (forged_token("none", None, **good), "the token's algorithm is not accepted"),
    ]
    for value, detail in refused:
        status, headers, problem = await get(http, gw, "/api/a", bearer(value))
        assert (status, problem["detail"]) == (401, detail)
        assert headers["WWW-Authenticate"] == BEARER_INVALID.format(detail)
    status, headers, _ = await get(http, gw, "/api/a")
    assert (status, headers["WWW-Authenticate"]) == (401, 'Bearer realm="gateway"')
    assert up.hits == 2
    assert await failures(gw, "users", "jwt") == {"missing": 1, "invalid": 5, "expired": 1}


def consumer_headers(request: web.Request) -> dict[str, list[str]]:
    """Every X-Consumer* header the upstream received, by name."""
    return {name: request.headers.getall(name) for name in request.headers if name.lower().startswith("x-consumer")}


async def test_jwt_subject_is_a_consumer_only_through_jwt_subjects(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    up = await upstream()
    plugins = '[[routes.plugins]]\nuse = "jwt"\nsecret = "${JWT_SECRET}"\nalgorithms = ["HS256"]'
    gw = await gateway(route_with(up, plugins), env=ENV)
    spoofed = {"X-Consumer": "alice", "X-Consumer-Subject": "alice@example.com", "x-consumer-id": "1"}

    assert (await get(http, gw, "/api/a", {**bearer(token(SECRET, sub="svc-7")), **spoofed}))[0] == 200
    assert consumer_headers(up.requests[-1]) == {"X-Consumer-Subject": ["svc-7"]}
    # "bob" is a consumer's name, but not among its jwt_subjects: the token does not become bob.
    assert (await get(http, gw, "/api/a", bearer(token(SECRET, sub="bob"))))[0] == 200
    assert consumer_headers(up.requests[-1]) == {"X-Consumer-Subject": ["bob"]}
    assert (await get(http, gw, "/api/a", {**bearer(token(SECRET)), **spoofed}))[0] == 200
    assert consumer_headers(up.requests[-1]) == {"X-Consumer": ["alice"]}
    assert (await get(http, gw, "/api/a", {**bearer(token(SECRET, sub=None)), **spoofed}))[0] == 200
    assert consumer_headers(up.requests[-1]) == {}
    assert up.hits == 4


async def test_jwt_require_consumer_refuses_unmapped_subjects(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    up = await upstream()
    plugins = """[[routes.plugins]]
        use = "jwt"
        secret = "${JWT_SECRET}"
        algorithms = ["HS256"]
        require_consumer = true"""
    gw = await gateway(route_with(up, plugins), env=ENV)
    detail = "the token's subject is not a known consumer"
    for value in (token(SECRET, sub="svc-7"), token(SECRET, sub="alice"), token(SECRET, sub=None)):
        status, headers, problem = await get(http, gw, "/api/a", {**bearer(value), "X-Consumer": "alice"})
        assert (status, headers["Content-Type"]) == (401, "application/problem+json")
        assert (problem["status"], problem["detail"], problem["route"]) == (401, detail, "users")
        assert headers["WWW-Authenticate"] == BEARER_INVALID.format(detail)
    assert up.hits == 0
    assert (await get(http, gw, "/api/a", bearer(token(SECRET))))[0] == 200
    assert consumer_headers(up.requests[0]) == {"X-Consumer": ["alice"]}
    assert await failures(gw, "users", "jwt") == {"missing": 0, "invalid": 3, "expired": 0}


async def test_hs256_token_made_with_the_rs256_public_key_is_refused(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    up = await upstream()
    pem = public_pem(rsa_key())
    plugins = '[[routes.plugins]]\nuse = "jwt"\npublic_key = "${JWT_PUBLIC_KEY}"\nalgorithms = ["RS256"]'
    gw = await gateway(route_with(up, plugins), env={**ENV, "JWT_PUBLIC_KEY": pem})
    assert (await get(http, gw, "/api/a", bearer(token(rsa_key(), "RS256"))))[0] == 200
    status, _, problem = await get(http, gw, "/api/a", bearer(forged_token("HS256", pem.encode())))
    assert (status, problem["detail"]) == (401, "the token's algorithm is not accepted")
    assert up.hits == 1
    assert await failures(gw, "users", "jwt") == {"missing": 0, "invalid": 1, "expired": 0}


class Jwks:
    """A JWKS endpoint on a real local upstream whose keys (and health) a test changes."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.status = 200
        self.hits = 0

    async def handle(self, _: web.Request) -> web.StreamResponse:
        self.hits += 1
        return web.json_response({"keys": self.keys}, status=self.status)


def jwks_route(up: Upstream, jwks_up: Upstream, ttl: str = "5m") -> str:
    plugins = f"""[[routes.plugins]]
        use = "jwt"
        jwks_url = "{jwks_up.url}/.well-known/jwks.json"
        jwks_ttl = "{ttl}"
        algorithms = ["RS256"]"""
    return route_with(up, plugins)


async def test_jwks_rotation_by_kid(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    jwks = Jwks()
    jwks.keys = [jwk(rsa_key(0), "k1")]
    up, jwks_up = await upstream(), await upstream(jwks.handle)
    gw = await gateway(jwks_route(up, jwks_up), env=ENV)
    assert jwks.hits == 1  # fetched at startup
    for _ in range(3):
        assert (await get(http, gw, "/api/a", bearer(token(rsa_key(0), "RS256", kid="k1"))))[0] == 200
    assert jwks.hits == 1  # never per request

    jwks.keys = [jwk(rsa_key(1), "k2")]  # the identity provider rotates
    assert (await get(http, gw, "/api/a", bearer(token(rsa_key(1), "RS256", kid="k2"))))[0] == 200
    assert jwks.hits == 2  # one refetch for the unknown kid
    assert up.requests[-1].headers["X-Consumer"] == "alice"

    # Within 10 s of that refetch, unknown kids are refused without fetching again.
    for kid, key in (("k1", rsa_key(0)), ("k3", rsa_key(2))):
        status, _, problem = await get(http, gw, "/api/a", bearer(token(key, "RS256", kid=kid)))
        assert (status, problem["detail"]) == (401, "the token's signing key is not known")
    assert jwks.hits == 2
    assert up.hits == 4
    assert await failures(gw, "users", "jwt") == {"missing": 0, "invalid": 2, "expired": 0}


async def wait_for(condition: Any, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_jwks_outage_keeps_the_cached_keys(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    jwks = Jwks()
    jwks.keys = [jwk(rsa_key(0), "k1")]
    up, jwks_up = await upstream(), await upstream(jwks.handle)
    gw = await gateway(jwks_route(up, jwks_up, ttl="100ms"), env=ENV)
    jwks.status = 503
    seen = jwks.hits

    async def refreshes_failed() -> bool:
        return jwks.hits >= seen + 2

    await wait_for(refreshes_failed)
    assert (await get(http, gw, "/api/a", bearer(token(rsa_key(0), "RS256", kid="k1"))))[0] == 200
    status, _, problem = await get(http, gw, "/api/a", bearer(token(rsa_key(1), "RS256", kid="k2")))
    assert (status, problem["detail"]) == (401, "the token's signing key is not known")


async def test_jwks_down_at_startup_gives_401_then_recovers(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    jwks = Jwks()
    jwks.status = 503
    up, jwks_up = await upstream(), await upstream(jwks.handle)
    gw = await gateway(jwks_route(up, jwks_up, ttl="100ms"), env=ENV)
    value = bearer(token(rsa_key(0), "RS256", kid="k1"))
    status, _, problem = await get(http, gw, "/api/a", value)
    assert (status, problem["detail"]) == (401, "the token's signing key is not known")
    jwks.status, jwks.keys = 200, [jwk(rsa_key(0), "k1")]

    async def accepted() -> bool:
        return (await get(http, gw, "/api/a", value))[0] == 200

    await wait_for(accepted)


# --- basic_auth ------------------------------------------------------------------------------------


async def test_basic_auth_right_and_wrong(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    up = await upstream()
    plugins = """[[routes.plugins]]
        use = "basic_auth"
        realm = "ops"
        users = { alice = "${ALICE_HASH}", bob = "${BOB_HASH}" }"""
    env = {**ENV, "ALICE_HASH": bcrypt_hash("wonderland"), "BOB_HASH": pbkdf2_hash("builder")}
    gw = await gateway(route_with(up, plugins), env=env)

    for user, password in (("alice", "wonderland"), ("bob", "builder")):
        assert (await get(http, gw, "/api/a", {**basic(user, password), "X-Consumer": "admin"}))[0] == 200
        got = up.requests[-1].headers
        assert got.getall("X-Consumer") == [user]
        assert "Authorization" not in got
    for headers in (basic("alice", "builder"), basic("mallory", "wonderland"), {}):
        status, response_headers, problem = await get(http, gw, "/api/a", headers)
        assert status == 401
        assert response_headers["WWW-Authenticate"] == 'Basic realm="ops", charset="UTF-8"'
        assert problem["type"].endswith("/unauthorized")
    assert up.hits == 2
    assert await failures(gw, "users", "basic_auth") == {"missing": 1, "invalid": 2, "expired": 0}


# --- secrets ---------------------------------------------------------------------------------------


async def test_config_endpoint_never_shows_secrets(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    up = await upstream()
    hashed = bcrypt_hash("wonderland")
    plugins = """[[routes.plugins]]
        use = "jwt"
        secret = "${JWT_SECRET}"
        algorithms = ["HS256"]
        [[routes.plugins]]
        use = "basic_auth"
        users = { alice = "${ALICE_HASH}" }
        [[routes.plugins]]
        use = "api_key" """
    gw = await gateway(route_with(up, plugins), env={**ENV, "ALICE_HASH": hashed})
    async with http.get(f"http://127.0.0.1:{gw.admin_port}/config") as response:
        assert response.status == 200
        text = await response.text()
    for secret in (ALICE_KEY, BOB_KEY, SECRET, hashed):
        assert secret not in text
    assert "<redacted>" in text
