"""The ``jwt`` plugin without a server: which tokens pass, what a refused client sees,
which option combinations are refused at load, and the JWKS key holder's rules."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from gateway.clients import Clients
from gateway.config_load import ConfigError, load_text
from gateway.config_model import ConsumerConfig
from gateway.metrics import Metrics
from gateway.runtime import Runtime
from gateway.testing import FakeUpstream, ValidationError, build_plugin, make_request, run_plugin
from plugins.jwks import JwksKeys, parse_jwks
from plugins.jwt_auth import JwtAuth
from tests.support.tokens import SECRET, b64url, bearer, forged_token, jwk, public_pem, rsa_key, token
from tests.support.units import Clock, plugin_route

CONSUMERS = {"alice": ConsumerConfig(jwt_subjects=["alice@example.com", "alice-svc"])}


def plugin(metrics: Metrics | None = None, **options: Any) -> JwtAuth:
    options.setdefault("algorithms", ["HS256"])
    if not {"public_key", "jwks_url"} & options.keys():
        options.setdefault("secret", SECRET)
    return build_plugin(JwtAuth, consumers=CONSUMERS, metrics=metrics, **options)


def failures(metrics: Metrics, reason: str) -> float | None:
    return metrics.registry.get_sample_value(
        "gateway_auth_failures_total", {"route": "test", "plugin": "jwt", "reason": reason})


BEARER_INVALID = 'Bearer realm="gateway", error="invalid_token", error_description="{}"'


async def refused(auth: JwtAuth, headers: dict[str, str]) -> tuple[str, str]:
    """Send a request that must be refused; return (WWW-Authenticate, problem detail)."""
    upstream = FakeUpstream()
    response = await run_plugin(auth, make_request(headers=headers), upstream)
    assert response.status == 401, response.body
    assert response.headers["Content-Type"] == "application/problem+json"
    assert upstream.requests == []
    return response.headers["WWW-Authenticate"], json.loads(response.body)["detail"]


async def accepted(auth: JwtAuth, headers: dict[str, str]) -> FakeUpstream:
    upstream = FakeUpstream()
    response = await run_plugin(auth, make_request(headers=headers), upstream)
    assert response.status == 200, response.body
    return upstream


# --- accepting and refusing tokens -----------------------------------------------------------


async def test_valid_token_maps_its_subject_to_the_consumer_and_is_not_forwarded() -> None:
    upstream = await accepted(plugin(), bearer(token(SECRET)))
    seen = upstream.requests[0]
    assert (seen.consumer, seen.subject) == ("alice", None)
    assert "Authorization" not in seen.headers
    assert seen.state["jwt_claims"]["sub"] == "alice@example.com"


@pytest.mark.parametrize("sub", ["dave", "alice", "alice-svc-2"])
async def test_an_unmapped_subject_is_only_the_subject_never_the_consumer(sub: str) -> None:
    # "alice" is a consumer's name but not one of its jwt_subjects: it claims nothing.
    seen = (await accepted(plugin(), bearer(token(SECRET, sub=sub)))).requests[0]
    assert (seen.consumer, seen.subject) == (None, sub)


async def test_a_token_without_subject_names_neither_consumer_nor_subject() -> None:
    for claims in ({"sub": None}, {"sub": ""}):
        seen = (await accepted(plugin(), bearer(token(SECRET, **claims)))).requests[0]
        assert (seen.consumer, seen.subject) == (None, None)


async def test_the_token_replaces_what_an_earlier_auth_plugin_set() -> None:
    upstream = FakeUpstream()
    request = make_request(headers=bearer(token(SECRET, sub="dave")))
    request.consumer = "bob"
    assert (await run_plugin(plugin(), request, upstream)).status == 200
    assert (upstream.requests[0].consumer, upstream.requests[0].subject) == (None, "dave")
    request = make_request(headers=bearer(token(SECRET, sub="alice-svc")))
    request.subject = "dave"
    assert (await run_plugin(plugin(), request, upstream)).status == 200
    assert (upstream.requests[1].consumer, upstream.requests[1].subject) == ("alice", None)


async def test_require_consumer_refuses_unmapped_and_missing_subjects() -> None:
    metrics = Metrics()
    auth = plugin(metrics, require_consumer=True)
    seen = (await accepted(auth, bearer(token(SECRET, sub="alice-svc")))).requests[0]
    assert (seen.consumer, seen.subject) == ("alice", None)
    for sub in ("dave", "alice", None, "x\r\nX-Admin: 1"):
        challenge, detail = await refused(auth, bearer(token(SECRET, sub=sub)))
        assert detail == "the token's subject is not a known consumer"
        assert challenge == BEARER_INVALID.format(detail)
    assert failures(metrics, "invalid") == 4
    assert failures(metrics, "missing") == 0


async def test_hide_credentials_false_forwards_the_token() -> None:
    value = token(SECRET)
    upstream = await accepted(plugin(hide_credentials=False), bearer(value))
    assert upstream.requests[0].headers["Authorization"] == f"Bearer {value}"


async def test_missing_token_gets_a_bare_bearer_challenge() -> None:
    metrics = Metrics()
    auth = plugin(metrics)
    for headers in ({}, {"Authorization": "Basic YTpi"}, {"Authorization": "Bearer "}):
        challenge, detail = await refused(auth, headers)
        assert challenge == 'Bearer realm="gateway"'
        assert detail == "a Bearer token is required"
    assert failures(metrics, "missing") == 3
    assert failures(metrics, "invalid") == 0


async def test_expired_token_is_counted_as_expired() -> None:
    metrics = Metrics()
    challenge, detail = await refused(plugin(metrics), bearer(token(SECRET, exp=int(time.time()) - 60)))
    assert challenge == ('Bearer realm="gateway", error="invalid_token", '
                         'error_description="the token has expired"')
    assert detail == "the token has expired"
    assert failures(metrics, "expired") == 1
    assert failures(metrics, "invalid") == 0


async def test_leeway_accepts_slightly_expired_tokens() -> None:
    just_expired = bearer(token(SECRET, exp=int(time.time()) - 10))
    await accepted(plugin(), just_expired)  # default leeway 30s
    await refused(plugin(leeway="0s"), just_expired)
    await refused(plugin(leeway="5s"), just_expired)


@pytest.mark.parametrize(
    ("claims", "options", "detail"),
    [
        ({"nbf": int(time.time()) + 600}, {}, "the token is not valid yet"),
        ({"iat": int(time.time()) + 600}, {}, "the token is not valid yet"),
        ({"aud": "other"}, {"audience": "orders"}, "the token is not meant for this audience"),
        ({}, {"audience": "orders"}, "the token lacks the required claim aud"),
        ({"iss": "https://evil.example"}, {"issuer": "https://idp.example"}, "the token's issuer is not accepted"),
        ({}, {"issuer": "https://idp.example"}, "the token lacks the required claim iss"),
        ({"exp": None}, {"required_claims": ["exp"]}, "the token lacks the required claim exp"),
        ({"exp": "tomorrow"}, {}, "the token is malformed"),
    ],
)
async def test_claims_are_checked(claims: dict[str, Any], options: dict[str, Any], detail: str) -> None:
    metrics = Metrics()
    challenge, got = await refused(plugin(metrics, **options), bearer(token(SECRET, **claims)))
    assert got == detail
    assert 'error="invalid_token"' in challenge
    assert failures(metrics, "invalid") == 1
    assert failures(metrics, "expired") == 0


async def test_right_audience_and_issuer_pass() -> None:
    auth = plugin(audience=["orders", "users"], issuer="https://idp.example")
    await accepted(auth, bearer(token(SECRET, aud="users", iss="https://idp.example")))
    await accepted(auth, bearer(token(SECRET, aud=["x", "orders"], iss="https://idp.example")))


async def test_audience_is_not_checked_when_not_configured() -> None:
    await accepted(plugin(), bearer(token(SECRET, aud="anything")))


@pytest.mark.parametrize(
    ("value", "detail"),
    [
        (token("another-secret-that-is-long-enough-to-be-valid"), "the token's signature is not valid"),
        (token(SECRET)[:-3] + "AAA", "the token's signature is not valid"),
        ("not-a-jwt", "the token is malformed"),
        ("a.b.c", "the token is malformed"),
        (forged_token("none", None), "the token's algorithm is not accepted"),
        (forged_token("None", None), "the token's algorithm is not accepted"),
        (token(SECRET + SECRET, alg="HS512"), "the token's algorithm is not accepted"),
    ],
)
async def test_bad_tokens_are_invalid(value: str, detail: str) -> None:
    metrics = Metrics()
    assert (await refused(plugin(metrics), bearer(value)))[1] == detail
    assert failures(metrics, "invalid") == 1


async def test_a_subject_with_control_characters_is_refused() -> None:
    for sub in ("x\r\nX-Admin: 1", "a\x00b", "tab\there"):
        assert (await refused(plugin(), bearer(token(SECRET, sub=sub))))[1] == \
            "the token's subject contains control characters"


async def test_claims_are_forwarded_as_headers_and_client_values_are_dropped() -> None:
    auth = plugin(claims_to_headers={"sub": "X-User", "roles": "X-Roles", "tenant": "X-Tenant"})
    headers = {**bearer(token(SECRET, roles=["admin", "ops"])), "X-Tenant": "spoofed", "X-User": "root"}
    seen = (await accepted(auth, headers)).requests[0]
    assert seen.headers.getall("X-User") == ["alice@example.com"]
    assert seen.headers["X-Roles"] == '["admin","ops"]'
    assert "X-Tenant" not in seen.headers  # absent claim: the client's value is not kept either


@pytest.mark.parametrize("header", ["X-Consumer", "x-consumer", "X-Consumer-Subject", "X-CONSUMER-ID",
                                    "X-ConsumerName", "X_Consumer", "x_consumer_subject"])
def test_claims_cannot_be_sent_as_x_consumer_headers(header: str) -> None:
    with pytest.raises(ValidationError, match=f"claim 'sub': the header '{header}' is not allowed"):
        plugin(claims_to_headers={"scope": "X-Scope", "sub": header})


def test_claims_to_headers_may_use_names_that_only_resemble_x_consumer() -> None:
    plugin(claims_to_headers={"a": "X-Consume", "b": "Consumer", "c": "X-Customer", "d": "X-Upstream-Consumer"})


# --- the asymmetric families and algorithm confusion -------------------------------------------


@pytest.mark.parametrize("alg", ["RS256", "PS384"])
async def test_rsa_public_key(alg: str) -> None:
    auth = plugin(algorithms=[alg], public_key=public_pem(rsa_key()))
    await accepted(auth, bearer(token(rsa_key(), alg)))
    await refused(auth, bearer(token(rsa_key(1), alg)))  # another key's signature


async def test_ec_and_eddsa_public_keys() -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    await accepted(plugin(algorithms=["ES256"], public_key=public_pem(ec_key)), bearer(token(ec_key, "ES256")))
    ed_key = ed25519.Ed25519PrivateKey.generate()
    await accepted(plugin(algorithms=["EdDSA"], public_key=public_pem(ed_key)), bearer(token(ed_key, "EdDSA")))


async def test_hs256_token_signed_with_the_rsa_public_key_is_refused() -> None:
    pem = public_pem(rsa_key())
    metrics = Metrics()
    auth = plugin(metrics, algorithms=["RS256"], public_key=pem)
    for forged in (forged_token("HS256", pem.encode()), forged_token("HS256", pem.strip().encode())):
        assert (await refused(auth, bearer(forged)))[1] == "the token's algorithm is not accepted"
    assert failures(metrics, "invalid") == 2


def test_public_key_with_escaped_newlines_from_an_env_var_is_accepted() -> None:
    plugin(algorithms=["RS256"], public_key=public_pem(rsa_key()).replace("\n", "\\n"))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"algorithms": ["none"]}, "must not contain \"none\""),
        ({"algorithms": ["HS256", "NONE"]}, "must not contain \"none\""),
        ({"algorithms": ["RS256"]}, "RS256 needs `public_key` or `jwks_url`"),
        ({"algorithms": ["HS256", "RS256", "ES256"]}, "RS256, ES256 need `public_key` or `jwks_url`"),
        ({"algorithms": ["HS257"]}, "unknown algorithm 'HS257'"),
        ({"algorithms": ["RS256", "HS256"], "public_key": "PEM"}, "HS256 needs `secret`"),
        ({"algorithms": ["RS256"], "public_key": "-----BEGIN PUBLIC KEY-----\nxx\n-----END PUBLIC KEY-----"},
         "not a PEM public key"),
        ({"secret": SECRET, "jwks_url": "http://127.0.0.1:1/jwks"}, "exactly one of"),
        ({"audience": []}, "must not be empty lists"),
    ],
)
def test_bad_option_combinations_are_refused_at_load(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")) as info:
        plugin(**options)
    assert SECRET not in str(info.value)


def test_public_key_must_fit_every_algorithm() -> None:
    ec_pem = public_pem(ec.generate_private_key(ec.SECP384R1()))
    with pytest.raises(ValueError, match="cannot verify ES256"):
        plugin(algorithms=["ES384", "ES256"], public_key=ec_pem)
    with pytest.raises(ValueError, match="cannot verify RS256"):
        plugin(algorithms=["RS256"], public_key=ec_pem)


def test_short_rsa_keys_are_refused() -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(ValueError, match="shorter than 2048 bits"):
        plugin(algorithms=["RS256"], public_key=public_pem(weak))


@pytest.mark.parametrize(
    "options",
    [{}, {"algorithms": []}, {"algorithms": ["HS256"], "leeway": "soon"}, {"algorithms": ["HS256"], "aud": "x"},
     {"algorithms": ["HS256"], "jwks_url": "ftp://x"}, {"algorithms": ["HS256"], "claims_to_headers": {"a": "X Y"}}],
)
def test_bad_options_fail_validation(options: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        build_plugin(JwtAuth, **options)


# --- JWKS --------------------------------------------------------------------------------------


def test_parse_jwks_keeps_only_usable_signature_keys() -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    document = {"keys": [
        jwk(rsa_key(), "rsa"),
        {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec_key.public_key())), "kid": "ec", "alg": "ES256"},
        {"kty": "oct", "k": b64url(b"x" * 32), "kid": "hmac"},
        jwk(rsa_key(1), "enc", use="enc"),
        {"kty": "RSA", "kid": "broken", "n": "AQAB"},
        "junk",
    ]}
    entries = parse_jwks(document)
    assert [(e.kid, e.alg) for e in entries] == [("rsa", None), ("ec", "ES256")]
    assert parse_jwks({"keys": "nope"}) == [] == parse_jwks([])


async def test_jwks_unknown_kid_refetch_is_throttled_and_an_outage_keeps_the_keys() -> None:
    served: dict[str, Any] = {"status": 200, "keys": [jwk(rsa_key(), "k1")]}
    hits: list[float] = []

    async def jwks(_: web.Request) -> web.Response:
        hits.append(time.monotonic())
        return web.json_response({"keys": served["keys"]}, status=served["status"])

    app = web.Application()
    app.router.add_get("/jwks", jwks)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    clock = Clock(1000.0)
    keys = JwksKeys(f"http://127.0.0.1:{server.port}/jwks?tenant=x", ttl=3600, clock=clock)

    async with aiohttp.ClientSession() as session:
        try:
            await keys.start(lambda: session)
            assert [e.kid for e in keys.lookup("k1")] == ["k1"] and len(hits) == 1
            served["keys"] = [jwk(rsa_key(1), "k2")]
            assert [e.kid for e in await keys.refetch("k2")] == ["k2"] and len(hits) == 2
            assert await keys.refetch("k3") == [] and len(hits) == 2  # within 10 s: no fetch
            clock.now += 10
            served["status"] = 503
            assert await keys.refetch("k3") == [] and len(hits) == 3
            assert [e.kid for e in keys.lookup("k2")] == ["k2"]  # the outage kept the cached keys
            served.update(status=200, keys=[])
            assert not await keys.refresh() and keys.lookup("k2")  # an empty set is not trusted
        finally:
            await keys.stop()
            await server.close()


async def test_jwks_that_cannot_be_fetched_at_startup_gives_401_not_500() -> None:
    keys_url = "http://127.0.0.1:9/jwks"  # discard port: nothing listens
    async with aiohttp.ClientSession() as session:
        auth = plugin(algorithms=["RS256"], jwks_url=keys_url, http_session=session)
        await auth.startup()
        try:
            assert auth.jwks is not None and auth.jwks.entries == []
            _, detail = await refused(auth, bearer(token(rsa_key(), "RS256", kid="k1")))
            assert detail == "the token's signing key is not known"
        finally:
            await auth.shutdown()


async def test_a_token_without_kid_is_tried_against_each_key_of_the_set() -> None:
    auth = plugin(algorithms=["RS256"], jwks_url="http://127.0.0.1:9/jwks")
    assert auth.jwks is not None
    auth.jwks.use(parse_jwks({"keys": [jwk(rsa_key(0), "a"), jwk(rsa_key(1), "b")]}))
    seen = (await accepted(auth, bearer(token(rsa_key(1), "RS256")))).requests[0]
    assert seen.consumer == "alice"
    _, detail = await refused(auth, bearer(token(rsa_key(2), "RS256")))
    assert detail == "the token's signature is not valid"


async def test_a_jwk_bound_to_another_algorithm_is_not_used() -> None:
    auth = plugin(algorithms=["RS256", "PS256"], jwks_url="http://127.0.0.1:9/jwks")
    assert auth.jwks is not None
    auth.jwks.use(parse_jwks({"keys": [jwk(rsa_key(0), "a", alg="PS256")]}))
    await accepted(auth, bearer(token(rsa_key(0), "PS256", kid="a")))
    auth.jwks._last_refetch = auth.jwks.clock()  # no refetch: the kid is known, the alg is not its own
    assert (await refused(auth, bearer(token(rsa_key(0), "RS256", kid="a"))))[1] == \
        "the token's signing key is not known"


def test_option_problems_are_reported_at_the_plugins_location() -> None:
    toml = plugin_route("jwt", secret='"${JWT_SECRET}"', algorithms='["RS256", "HS256"]')
    with pytest.raises(ConfigError) as info:
        Runtime(load_text(toml, "routes.toml", {"JWT_SECRET": SECRET}), Metrics(), Clients())
    assert info.value.lines() == [
        "routes.toml: routes[0].plugins[0] (jwt): RS256 needs `public_key` or `jwks_url`: `secret` verifies "
        "HS256/HS384/HS512 only (one key never serves both families)"
    ]


def test_an_x_consumer_claim_header_is_reported_at_the_option() -> None:
    toml = plugin_route("jwt", secret='"${JWT_SECRET}"', algorithms='["HS256"]',
                        claims_to_headers='{ sub = "X-Consumer" }')
    with pytest.raises(ConfigError) as info:
        Runtime(load_text(toml, "routes.toml", {"JWT_SECRET": SECRET}), Metrics(), Clients())
    lines = info.value.lines()
    assert len(lines) == 1
    assert lines[0].startswith("routes.toml: routes[0].plugins[0] (jwt).claims_to_headers: ")
    assert "claim 'sub': the header 'X-Consumer' is not allowed" in lines[0]


def test_a_subject_mapped_to_two_consumers_is_refused() -> None:
    consumers = {"a": ConsumerConfig(jwt_subjects=["s"]), "b": ConsumerConfig(jwt_subjects=["s"])}
    with pytest.raises(ValueError, match="jwt subject 's' belongs to consumers 'a' and 'b'"):
        build_plugin(JwtAuth, consumers=consumers, algorithms=["HS256"], secret=SECRET)


async def test_the_challenge_stays_a_valid_quoted_string() -> None:
    challenge, detail = await refused(plugin(required_claims=['we"ird\\']), bearer(token(SECRET)))
    assert detail == 'the token lacks the required claim we"ird\\'
    assert challenge.endswith("error_description=\"the token lacks the required claim we'ird\"")


async def test_concurrent_unknown_kids_share_one_fetch() -> None:
    served = {"keys": [jwk(rsa_key(0), "k1")]}
    hits = 0

    async def slow_jwks(_: web.Request) -> web.Response:
        nonlocal hits
        hits += 1
        await asyncio.sleep(0.1)
        return web.json_response(served)

    app = web.Application()
    app.router.add_get("/jwks", slow_jwks)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    keys = JwksKeys(f"http://127.0.0.1:{server.port}/jwks", ttl=3600)
    async with aiohttp.ClientSession() as session:
        try:
            await keys.start(lambda: session)
            served["keys"] = [jwk(rsa_key(1), "k2")]
            found = await asyncio.gather(*(keys.refetch("k2") for _ in range(5)))
            assert [[e.kid for e in f] for f in found] == [["k2"]] * 5
            assert hits == 2
        finally:
            await keys.stop()
            await server.close()


@pytest.mark.parametrize(("options", "message"), [
    ({"algorithms": ["HS256", "HS384"]}, "`secret` is 44 bytes; HS384 should have at least 48"),
    ({"secret": "short"}, "`secret` is 5 bytes; HS256 should have at least 32"),
])
def test_short_hmac_secrets_are_accepted_with_a_warning(
    options: dict[str, Any], message: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="gateway.plugins.jwt"):
        build_plugin(JwtAuth, **{"algorithms": ["HS256"], "secret": SECRET, **options})
    assert message in caplog.text
