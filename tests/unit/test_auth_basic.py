"""The ``basic_auth`` plugin without a server: bcrypt and PBKDF2 hashes, what a refused
client sees, and plain-text passwords refused when the config is loaded."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from gateway.metrics import Metrics
from gateway.testing import FakeUpstream, ValidationError, build_plugin, make_request, run_plugin
from plugins.basic_auth import BasicAuth, make_verifier, parse_basic
from tests.support.tokens import basic, bcrypt_hash, pbkdf2_hash
from tests.support.units import config_error, plugin_route

USERS = {"alice": bcrypt_hash("wonderland"), "bob": pbkdf2_hash("builder")}


def plugin(metrics: Metrics | None = None, **options: Any) -> BasicAuth:
    options.setdefault("users", USERS)
    return build_plugin(BasicAuth, metrics=metrics, **options)


def failures(metrics: Metrics, reason: str) -> float | None:
    return metrics.registry.get_sample_value(
        "gateway_auth_failures_total", {"route": "test", "plugin": "basic_auth", "reason": reason})


async def refused(auth: BasicAuth, headers: dict[str, str]) -> str:
    upstream = FakeUpstream()
    response = await run_plugin(auth, make_request(headers=headers), upstream)
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == 'Basic realm="gateway", charset="UTF-8"'
    assert response.headers["Content-Type"] == "application/problem+json"
    assert upstream.requests == []
    detail: str = json.loads(response.body)["detail"]
    return detail


@pytest.mark.parametrize(("user", "password"), [("alice", "wonderland"), ("bob", "builder")])
async def test_right_password_makes_the_user_the_consumer(user: str, password: str) -> None:
    upstream = FakeUpstream()
    response = await run_plugin(plugin(), make_request(headers=basic(user, password)), upstream)
    assert response.status == 200
    seen = upstream.requests[0]
    assert seen.consumer == user
    assert "Authorization" not in seen.headers


async def test_hide_credentials_false_forwards_the_authorization_header() -> None:
    upstream = FakeUpstream()
    headers = basic("bob", "builder")
    await run_plugin(plugin(hide_credentials=False), make_request(headers=headers), upstream)
    assert upstream.requests[0].headers["Authorization"] == headers["Authorization"]


async def test_wrong_password_or_unknown_user_is_invalid() -> None:
    metrics = Metrics()
    auth = plugin(metrics)
    for headers in (basic("alice", "builder"), basic("bob", "wonderland"), basic("mallory", "wonderland"),
                    basic("alice", ""), basic("alice", "wonderland" * 10)):  # > 72 bytes: bcrypt refuses
        assert await refused(auth, headers) == "wrong user name or password"
    assert failures(metrics, "invalid") == 5
    assert failures(metrics, "missing") == 0


async def test_missing_credentials() -> None:
    metrics = Metrics()
    auth = plugin(metrics)
    for headers in ({}, {"Authorization": "Bearer abc"}, {"Authorization": "Basic "}):
        assert await refused(auth, headers) == "user name and password required (HTTP Basic)"
    assert failures(metrics, "missing") == 3


async def test_malformed_credentials_are_invalid() -> None:
    metrics = Metrics()
    auth = plugin(metrics)
    no_colon = base64.b64encode(b"alice").decode()
    not_utf8 = base64.b64encode(b"\xff\xfe:x").decode()
    for value in ("!!!", no_colon, not_utf8):
        assert await refused(auth, {"Authorization": f"Basic {value}"}) == "malformed Basic credentials"
    assert failures(metrics, "invalid") == 3


async def test_scheme_is_case_insensitive_and_realm_is_configurable() -> None:
    auth = plugin(realm="ops")
    header = basic("bob", "builder")["Authorization"].replace("Basic", "bAsIc")
    assert (await run_plugin(auth, make_request(headers={"Authorization": header}))).status == 200
    response = await run_plugin(auth, make_request())
    assert response.headers["WWW-Authenticate"] == 'Basic realm="ops", charset="UTF-8"'


async def test_password_with_a_colon_and_unicode() -> None:
    auth = plugin(users={"zoë": pbkdf2_hash("p:ä:ss")})
    response = await run_plugin(auth, make_request(headers=basic("zoë", "p:ä:ss")))
    assert response.status == 200


def hashed_passwords(auth: BasicAuth) -> list[bytes]:
    """Every password bob's verifier is asked to hash from now on."""
    calls: list[bytes] = []
    real = auth._users["bob"]

    def counting(password: bytes) -> bool:
        calls.append(password)
        return real(password)

    auth._users["bob"] = counting
    return calls


async def statuses(auth: BasicAuth, password: str, times: int) -> list[int]:
    return [(await run_plugin(auth, make_request(headers=basic("bob", password)))).status for _ in range(times)]


async def test_a_verified_credential_is_not_hashed_again_but_a_wrong_one_is() -> None:
    auth = plugin()
    calls = hashed_passwords(auth)
    assert await statuses(auth, "builder", 3) == [200] * 3
    assert await statuses(auth, "nope", 2) == [401] * 2
    assert calls == [b"builder", b"nope", b"nope"]


async def test_cache_size_zero_hashes_every_time() -> None:
    auth = plugin(cache_size=0)
    calls = hashed_passwords(auth)
    assert await statuses(auth, "builder", 2) == [200] * 2
    assert len(calls) == 2


def test_htpasswd_style_2y_bcrypt_hashes_work() -> None:
    hashed = bcrypt_hash("pw").replace("$2b$", "$2y$", 1)
    check = make_verifier(hashed)
    assert check(b"pw") and not check(b"wrong")


@pytest.mark.parametrize("value", [
    "hunter2", "$2b$04$tooShort", "pbkdf2_sha256$0$salt$aGFzaA==", "pbkdf2_sha256$1000$salt$aGFzaGhhc2hoYXNoaGFzaAx",
    "pbkdf2_sha1$1000$salt$aGFzaGhhc2hoYXNoaGFzaA==", "md5$abc",
])
def test_anything_but_a_hash_is_refused_naming_the_user_not_the_value(value: str) -> None:
    toml = plugin_route("basic_auth", users='{ alice = "${ALICE_HASH}", carol = "${CAROL_PASSWORD}" }')
    error = config_error(toml, {"ALICE_HASH": USERS["alice"], "CAROL_PASSWORD": value})
    assert error.lines() == [
        "routes.toml: routes[0].plugins[0] (basic_auth).users: user 'carol': the password is not a bcrypt "
        "hash ($2b$...) or pbkdf2_sha256$<iterations>$<salt>$<base64 hash>"
        + (" (the hash is not valid base64)" if value.endswith("aAx") else "")
        + "; plain-text passwords are not accepted"
    ]


def test_user_names_cannot_contain_a_colon() -> None:
    with pytest.raises(ValidationError, match="must not be empty or contain ':'"):
        plugin(users={"a:b": USERS["alice"]})


def test_users_are_required() -> None:
    with pytest.raises(ValidationError):
        build_plugin(BasicAuth)
    with pytest.raises(ValidationError):
        build_plugin(BasicAuth, users={})


@pytest.mark.parametrize(
    ("value", "expected"),
    [("YTpi", ("a", b"b")), ("YTo=", ("a", b"")), ("OmI=", ("", b"b")), ("YWJj", None), ("###", None)],
)
def test_parse_basic(value: str, expected: tuple[str, bytes] | None) -> None:
    assert parse_basic(value) == expected
