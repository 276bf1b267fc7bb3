"""Authentication against real upstreams on 127.0.0.1 (docs/auth.md, docs/operations.md): what the client gets,
what the upstream receives, and exactly what gateway_auth_failures_total counts."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.process import GatewayProcess
from tests.conftest import StartGateway, StartUpstream, Upstream
from tests.support import metric, plugin_table, proxy_config, scrape, wait_for
from tests.support.auth import Answer, call, route
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
UNKNOWN_KEY = "the token's signing key is not known"
ENV = {"ALICE_KEY": ALICE_KEY, "BOB_KEY": BOB_KEY, "JWT_SECRET": SECRET}
CONSUMERS = ('[consumers.alice]\napi_keys = ["${ALICE_KEY}"]\njwt_subjects = ["alice@example.com"]\n'
             '[consumers.bob]\napi_keys = ["${BOB_KEY}"]\n')


def users_route(target: str, *plugins: str, after: str = "") -> str:
    """The ``users`` route: ``/api/...`` to ``/...`` on ``target``, behind ``plugins``; alice and bob."""
    return proxy_config(target, name="users", path="/api/{rest:.*}", rewrite="/{rest}", upstream="",
                        after="\n".join([*plugins, CONSUMERS, after]))


def hs256(**options: str) -> str:
    """The jwt plugin checking HS256 tokens signed with ``${JWT_SECRET}``."""
    return plugin_table("jwt", secret='"${JWT_SECRET}"', algorithms='["HS256"]', **options)


def jwks_plugin(jwks_up: Upstream, ttl: str = "5m") -> str:
    return plugin_table("jwt", jwks_url=f'"{jwks_up.url}/.well-known/jwks.json"', jwks_ttl=f'"{ttl}"',
                        algorithms='["RS256"]')


@dataclass
class Users:
    """A gateway with the ``users`` route in front of a recording upstream, and a client."""

    up: Upstream
    gw: GatewayProcess
    http: aiohttp.ClientSession

    async def get(self, path: str = "/api/a", headers: dict[str, str] | None = None, method: str = "GET") -> Answer:
        return await call(self.http, self.gw, path, headers, method=method)

    async def status(self, headers: dict[str, str], path: str = "/api/a") -> int:
        return (await self.get(path, headers)).status

    async def failures(self, plugin: str, route: str = "users") -> dict[str, float]:
        text = await scrape(self.gw)
        return {reason: metric(text, "gateway_auth_failures_total", route=route, plugin=plugin, reason=reason)
                for reason in ("missing", "invalid", "expired")}


StartUsers = Callable[..., Awaitable[Users]]


@pytest.fixture
def users(upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession) -> StartUsers:
    """``await users(*plugin_tables, env=..., after=...)``: a fresh upstream and gateway."""

    async def start(*plugins: str, env: dict[str, str] | None = None, after: str = "") -> Users:
        up = await upstream()
        gw = await gateway(users_route(up.url, *plugins, after=after), env={**ENV, **(env or {})})
        return Users(up, gw, http)

    return start


# --- api_key ------------------------------------------------------------------------------------


async def test_api_key_missing_wrong_and_right(users: StartUsers) -> None:
    site = await users(plugin_table("api_key"))

    status, headers, problem = await site.get("/api/a", {"X-Consumer": "admin"})
    assert status == 401
    assert headers["WWW-Authenticate"] == 'Key realm="gateway"'
    assert headers["Content-Type"] == "application/problem+json"
    assert problem["detail"] == "an API key is required"
    assert problem["route"] == "users"
    assert problem["request_id"] == headers["X-Request-ID"]
    for wrong in ("nope", ALICE_KEY[:-1]):
        status, headers, problem = await site.get("/api/a", {"X-API-Key": wrong})
        assert (status, problem["detail"]) == (401, "the API key is not valid")
        assert headers["WWW-Authenticate"] == 'Key realm="gateway"'
    assert site.up.hits == 0

    spoofed = {"X-API-Key": ALICE_KEY, "X-Consumer": "admin", "X-Consumer-ID": "1", "x-consumer-groups": "root"}
    status, _, body = await site.get("/api/orders?x=1", spoofed)
    assert status == 200
    assert body == {"path": "/orders?x=1", "method": "GET"}
    got = site.up.requests[0].headers
    assert got.getall("X-Consumer") == ["alice"]
    assert [k for k in got if k.lower().startswith("x-consumer")] == ["X-Consumer"]
    assert "X-API-Key" not in got
    assert ALICE_KEY not in json.dumps(dict(got))

    assert await site.status({"X-API-Key": BOB_KEY}, "/api/b") == 200
    assert site.up.requests[1].headers["X-Consumer"] == "bob"
    assert await site.failures("api_key") == {"missing": 1, "invalid": 2, "expired": 0}


async def test_api_key_in_the_query_is_not_forwarded(users: StartUsers) -> None:
    site = await users(plugin_table("api_key", query='"apikey"'))
    assert (await site.get(f"/api/items?page=2&apikey={BOB_KEY}&q=a%20b")).status == 200
    assert site.up.requests[0].raw_path == "/items?page=2&q=a%20b"
    assert site.up.requests[0].headers["X-Consumer"] == "bob"


async def test_cors_answers_the_preflight_before_auth(users: StartUsers) -> None:
    site = await users(plugin_table("cors", origins='["https://app.example"]'), plugin_table("api_key"))
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "GET",
                 "Access-Control-Request-Headers": "X-API-Key"}
    status, headers, _ = await site.get("/api/a", preflight, method="OPTIONS")
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == "https://app.example"
    status, headers, _ = await site.get("/api/a", {"Origin": "https://app.example"})
    assert status == 401
    assert headers["Access-Control-Allow-Origin"] == "https://app.example"  # the browser can read the 401
    assert site.up.hits == 0
    assert await site.failures("api_key") == {"missing": 1, "invalid": 0, "expired": 0}


async def test_a_global_auth_plugin_counts_failures_per_route(users: StartUsers) -> None:
    site = await users(after='[[plugins]]\nuse = "api_key"\n' + route("orders", "/orders"))
    await site.get("/api/a")
    await site.get("/orders", {"X-API-Key": "wrong"})
    await site.get("/orders", {"X-API-Key": "wrong"})
    assert await site.status({"X-API-Key": ALICE_KEY}, "/orders") == 200
    assert await site.failures("api_key") == {"missing": 1, "invalid": 0, "expired": 0}
    assert await site.failures("api_key", route="orders") == {"missing": 0, "invalid": 2, "expired": 0}


# --- jwt ------------------------------------------------------------------------------------------


async def test_jwt_valid_expired_not_yet_valid_wrong_audience_issuer_signature_and_none(users: StartUsers) -> None:
    site = await users(hs256(audience='"orders-api"', issuer='"https://idp.example"',
                             claims_to_headers='{ sub = "X-User", scope = "X-Scope" }'))
    good = {"aud": "orders-api", "iss": "https://idp.example"}

    assert await site.status({**bearer(token(SECRET, scope="read", **good)), "X-User": "root",
                              "X-Consumer": "admin"}) == 200
    got = site.up.requests[0].headers
    assert got.getall("X-Consumer") == ["alice"]
    assert got.getall("X-User") == ["alice@example.com"]
    assert got["X-Scope"] == "read"
    assert "Authorization" not in got
    assert await site.status(bearer(token(SECRET, sub="svc-7", **good))) == 200
    assert site.up.requests[1].headers["X-Consumer-Subject"] == "svc-7"  # no jwt_subjects entry: not a consumer
    assert "X-Consumer" not in site.up.requests[1].headers

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
        status, headers, problem = await site.get("/api/a", bearer(value))
        assert (status, problem["detail"]) == (401, detail)
        assert headers["WWW-Authenticate"] == BEARER_INVALID.format(detail)
    status, headers, _ = await site.get()
    assert (status, headers["WWW-Authenticate"]) == (401, 'Bearer realm="gateway"')
    assert site.up.hits == 2
    assert await site.failures("jwt") == {"missing": 1, "invalid": 5, "expired": 1}


def consumer_headers(request: web.Request) -> dict[str, list[str]]:
    """Every X-Consumer* header the upstream received, by name."""
    return {name: request.headers.getall(name) for name in request.headers if name.lower().startswith("x-consumer")}


async def test_jwt_subject_is_a_consumer_only_through_jwt_subjects(users: StartUsers) -> None:
    site = await users(hs256())
    spoofed = {"X-Consumer": "alice", "X-Consumer-Subject": "alice@example.com", "x-consumer-id": "1"}
    # "bob" is a consumer's name, but not among its jwt_subjects: the token does not become bob.
    sent_and_seen: list[tuple[dict[str, str], dict[str, list[str]]]] = [
        ({**bearer(token(SECRET, sub="svc-7")), **spoofed}, {"X-Consumer-Subject": ["svc-7"]}),
        (bearer(token(SECRET, sub="bob")), {"X-Consumer-Subject": ["bob"]}),
        ({**bearer(token(SECRET)), **spoofed}, {"X-Consumer": ["alice"]}),
        ({**bearer(token(SECRET, sub=None)), **spoofed}, {}),
    ]
    for headers, seen in sent_and_seen:
        assert await site.status(headers) == 200
        assert consumer_headers(site.up.requests[-1]) == seen
    assert site.up.hits == 4


async def test_jwt_require_consumer_refuses_unmapped_subjects(users: StartUsers) -> None:
    site = await users(hs256(require_consumer="true"))
    detail = "the token's subject is not a known consumer"
    for value in (token(SECRET, sub="svc-7"), token(SECRET, sub="alice"), token(SECRET, sub=None)):
        status, headers, problem = await site.get("/api/a", {**bearer(value), "X-Consumer": "alice"})
        assert (status, headers["Content-Type"]) == (401, "application/problem+json")
        assert (problem["status"], problem["detail"], problem["route"]) == (401, detail, "users")
        assert headers["WWW-Authenticate"] == BEARER_INVALID.format(detail)
    assert site.up.hits == 0
    assert await site.status(bearer(token(SECRET))) == 200
    assert consumer_headers(site.up.requests[0]) == {"X-Consumer": ["alice"]}
    assert await site.failures("jwt") == {"missing": 0, "invalid": 3, "expired": 0}


async def test_hs256_token_made_with_the_rs256_public_key_is_refused(users: StartUsers) -> None:
    pem = public_pem(rsa_key())
    site = await users(plugin_table("jwt", public_key='"${JWT_PUBLIC_KEY}"', algorithms='["RS256"]'),
                       env={"JWT_PUBLIC_KEY": pem})
    assert await site.status(bearer(token(rsa_key(), "RS256"))) == 200
    status, _, problem = await site.get("/api/a", bearer(forged_token("HS256", pem.encode())))
    assert (status, problem["detail"]) == (401, "the token's algorithm is not accepted")
    assert site.up.hits == 1
    assert await site.failures("jwt") == {"missing": 0, "invalid": 1, "expired": 0}


class Jwks:
    """A JWKS endpoint on a real local upstream whose keys (and health) a test changes."""

    def __init__(self, *keys: dict[str, Any], status: int = 200) -> None:
        self.keys = list(keys)
        self.status = status
        self.hits = 0

    async def handle(self, _: web.Request) -> web.StreamResponse:
        self.hits += 1
        return web.json_response({"keys": self.keys}, status=self.status)


def rs256(n: int, kid: str) -> dict[str, str]:
    """A bearer header with an RS256 token signed by ``rsa_key(n)`` under ``kid``."""
    return bearer(token(rsa_key(n), "RS256", kid=kid))


async def test_jwks_rotation_by_kid(upstream: StartUpstream, users: StartUsers) -> None:
    jwks = Jwks(jwk(rsa_key(0), "k1"))
    site = await users(jwks_plugin(await upstream(jwks.handle)))
    assert jwks.hits == 1  # fetched at startup
    for _ in range(3):
        assert await site.status(rs256(0, "k1")) == 200
    assert jwks.hits == 1  # never per request

    jwks.keys = [jwk(rsa_key(1), "k2")]  # the identity provider rotates
    assert await site.status(rs256(1, "k2")) == 200
    assert jwks.hits == 2  # one refetch for the unknown kid
    assert site.up.requests[-1].headers["X-Consumer"] == "alice"

    # Within 10 s of that refetch, unknown kids are refused without fetching again.
    for n, kid in ((0, "k1"), (2, "k3")):
        status, _, problem = await site.get("/api/a", rs256(n, kid))
        assert (status, problem["detail"]) == (401, UNKNOWN_KEY)
    assert jwks.hits == 2
    assert site.up.hits == 4
    assert await site.failures("jwt") == {"missing": 0, "invalid": 2, "expired": 0}


async def test_jwks_outage_keeps_the_cached_keys(upstream: StartUpstream, users: StartUsers) -> None:
    jwks = Jwks(jwk(rsa_key(0), "k1"))
    site = await users(jwks_plugin(await upstream(jwks.handle), ttl="100ms"))
    jwks.status = 503
    seen = jwks.hits

    async def refreshes_failed() -> bool:
        return jwks.hits >= seen + 2

    await wait_for(refreshes_failed)
    assert await site.status(rs256(0, "k1")) == 200
    status, _, problem = await site.get("/api/a", rs256(1, "k2"))
    assert (status, problem["detail"]) == (401, UNKNOWN_KEY)


async def test_jwks_down_at_startup_gives_401_then_recovers(upstream: StartUpstream, users: StartUsers) -> None:
    jwks = Jwks(status=503)
    site = await users(jwks_plugin(await upstream(jwks.handle), ttl="100ms"))
    status, _, problem = await site.get("/api/a", rs256(0, "k1"))
    assert (status, problem["detail"]) == (401, UNKNOWN_KEY)
    jwks.status, jwks.keys = 200, [jwk(rsa_key(0), "k1")]

    async def accepted() -> bool:
        return await site.status(rs256(0, "k1")) == 200

    await wait_for(accepted)


# --- basic_auth ------------------------------------------------------------------------------------


async def test_basic_auth_right_and_wrong(users: StartUsers) -> None:
    hashes = '{ alice = "${ALICE_HASH}", bob = "${BOB_HASH}" }'
    site = await users(plugin_table("basic_auth", realm='"ops"', users=hashes),
                       env={"ALICE_HASH": bcrypt_hash("wonderland"), "BOB_HASH": pbkdf2_hash("builder")})

    for user, password in (("alice", "wonderland"), ("bob", "builder")):
        assert await site.status({**basic(user, password), "X-Consumer": "admin"}) == 200
        got = site.up.requests[-1].headers
        assert got.getall("X-Consumer") == [user]
        assert "Authorization" not in got
    for headers in (basic("alice", "builder"), basic("mallory", "wonderland"), {}):
        status, response_headers, problem = await site.get("/api/a", headers)
        assert status == 401
        assert response_headers["WWW-Authenticate"] == 'Basic realm="ops", charset="UTF-8"'
        assert problem["type"].endswith("/unauthorized")
    assert site.up.hits == 2
    assert await site.failures("basic_auth") == {"missing": 1, "invalid": 2, "expired": 0}


# --- secrets ---------------------------------------------------------------------------------------


async def test_config_endpoint_never_shows_secrets(users: StartUsers, http: aiohttp.ClientSession) -> None:
    hashed = bcrypt_hash("wonderland")
    site = await users(hs256(), plugin_table("basic_auth", users='{ alice = "${ALICE_HASH}" }'),
                       plugin_table("api_key"), env={"ALICE_HASH": hashed})
    async with http.get(f"http://127.0.0.1:{site.gw.admin_port}/config") as response:
        assert response.status == 200
        text = await response.text()
    for secret in (ALICE_KEY, BOB_KEY, SECRET, hashed):
        assert secret not in text
    assert "<redacted>" in text
