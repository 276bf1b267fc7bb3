"""GET /config hides every secret, however it was written, and keeps the rest readable."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.admin import redacted_config
from gateway.redaction import REDACTED, credential_header, hide_url_passwords
from tests.support import plugin_table
from tests.support.tokens import bcrypt_hash
from tests.support.units import USERS, load
from tests.support.units import users_route as route


def shown(toml: str, env: dict[str, str] | None = None) -> Any:
    return redacted_config(load(toml, env))


def steps_route(headers: str) -> str:
    """A route ``o`` whose one step calls ``users`` with ``headers`` (a TOML inline table)."""
    return ('[[routes]]\nname = "o"\npath = "/o"\n'
            f'[[routes.steps]]\nname = "s"\nupstream = "users"\npath = "/s"\nheaders = {headers}\n')


def jwt_plugin(secret: str) -> str:
    return plugin_table("jwt", secret=secret, algorithms='["HS256"]')


def test_values_from_the_environment_are_hidden() -> None:
    config = shown("""
        [gateway]
        listen = "${LISTEN}"
    """ + route(), {"LISTEN": "127.0.0.1:8080"})
    assert config["gateway"]["listen"] == REDACTED


def test_consumer_api_keys_are_hidden() -> None:
    config = shown(route() + """
        [consumers.alice]
        api_keys = ["alice-key-1", "alice-key-2"]
        jwt_subjects = ["alice@example.com"]
    """)
    assert config["consumers"]["alice"]["api_keys"] == [REDACTED, REDACTED]
    assert config["consumers"]["alice"]["jwt_subjects"] == ["alice@example.com"]


def test_plugin_options_named_like_secrets_are_hidden() -> None:
    basic_auth = plugin_table("basic_auth", users=f'{{ alice = "{bcrypt_hash("wonderland")}" }}')
    config = shown(route(jwt_plugin('"hs256-shared-secret"') + "\n" + basic_auth))
    jwt, basic = config["routes"][0]["plugins"]
    assert jwt["secret"] == REDACTED
    assert jwt["algorithms"] == ["HS256"]
    assert basic["users"] == {"alice": REDACTED}


def test_plugin_settings_that_only_look_secret_stay_visible() -> None:
    config = shown(route("""
        [[routes.plugins]]
        use = "api_key"
        hide_credentials = false
        [[routes.plugins]]
        use = "rate_limit"
        limit = 10
        window = "1m"
        key = "header:X-Tenant"
        max_keys = 5000
    """))
    api_key, rate_limit = config["routes"][0]["plugins"]
    assert api_key["hide_credentials"] is False
    assert rate_limit["key"] == "header:X-Tenant"
    assert rate_limit["max_keys"] == 5000


def test_admin_token_is_hidden() -> None:
    config = shown("""
        [gateway]
        admin_token = "literal-admin-token"
        admin_hosts = ["gateway-admin.default.svc"]
    """ + route())
    assert config["gateway"]["admin_token"] == REDACTED
    assert config["gateway"]["admin_hosts"] == ["gateway-admin.default.svc"]
    assert "literal-admin-token" not in json.dumps(config)


def test_an_empty_admin_token_stays_visible_as_unset() -> None:
    assert shown(route())["gateway"]["admin_token"] == ""


def test_the_password_of_a_redis_url_is_hidden_and_the_rest_kept() -> None:
    config = shown("""
        [gateway]
        redis_url = "redis://:s3cr3t@redis.internal:6379/0"
    """ + route())
    assert config["gateway"]["redis_url"] == "redis://:<redacted>@redis.internal:6379/0"


def test_the_password_of_any_url_anywhere_is_hidden() -> None:
    config = shown(route("""
        [[routes.plugins]]
        use = "jwt"
        algorithms = ["RS256"]
        jwks_url = "https://svc:pa55word@idp.example/.well-known/jwks.json"
    """))
    assert config["routes"][0]["plugins"][0]["jwks_url"] == "https://svc:<redacted>@idp.example/.well-known/jwks.json"


@pytest.mark.parametrize(("text", "expected"), [
    ("redis://:pw@host:6379/0", "redis://:<redacted>@host:6379/0"),
    ("http://user:pw@h", "http://user:<redacted>@h"),
    ("https://user:p%40ss@h:8443/path?q=1#f", "https://user:<redacted>@h:8443/path?q=1#f"),
    ("http://user:pw@with@at@h/x", "http://user:<redacted>@h/x"),
    ("http://ghp_token123@github.com/x", "http://<redacted>@github.com/x"),
    ("see http://a:b@one and redis://:c@two", "see http://a:<redacted>@one and redis://:<redacted>@two"),
    ("http://user:@h", "http://user:@h"),
    ("http://h/path@x", "http://h/path@x"),
    ("http://h?to=a@b", "http://h?to=a@b"),
    ("alice@example.com", "alice@example.com"),
    ("http://127.0.0.1:9001", "http://127.0.0.1:9001"),
])
def test_hide_url_passwords(text: str, expected: str) -> None:
    assert hide_url_passwords(text) == expected


@pytest.mark.parametrize("name", [
    "Authorization", "proxy-authorization", "Cookie", "Set-Cookie", "X-Api-Key", "X-AUTH-TOKEN",
    "X-Client-Secret", "X-Password", "X-Upstream-Auth",
])
def test_credential_headers(name: str) -> None:
    assert credential_header(name)


@pytest.mark.parametrize("name", ["Accept", "X-Request-ID", "X-Forwarded-Proto", "Content-Type", "X-Tenant"])
def test_other_headers_are_not_credentials(name: str) -> None:
    assert not credential_header(name)


def test_credential_headers_set_by_the_headers_plugin_are_hidden() -> None:
    config = shown(route("""
        [[routes.plugins]]
        use = "headers"
        request.set = { Authorization = "Bearer upstream-token", Cookie = "session=abc", X-Tenant = "acme" }
        request.remove = ["Authorization"]
        response.set = { Proxy-Authorization = "Basic Zm9vOmJhcg==", X-Served-By = "gw" }
    """))
    plugin = config["routes"][0]["plugins"][0]
    assert plugin["request"]["set"] == {"Authorization": REDACTED, "Cookie": REDACTED, "X-Tenant": "acme"}
    assert plugin["request"]["remove"] == ["Authorization"]
    assert plugin["response"]["set"] == {"Proxy-Authorization": REDACTED, "X-Served-By": "gw"}


def test_credential_headers_of_orchestration_steps_are_hidden() -> None:
    config = shown(USERS + steps_route(
        '{ Authorization = "Bearer step-token", X-Service-Key = "k-123", Accept-Language = "en" }'))
    headers = config["routes"][0]["steps"][0]["headers"]
    assert headers == {"Authorization": REDACTED, "X-Service-Key": REDACTED, "Accept-Language": "en"}


def test_nothing_secret_survives_anywhere_in_the_output() -> None:
    secrets = ["env-jwt-secret", "alice-key", "admin-tok", "redispw", "hdr-token", "step-token", "tenantpw"]
    gateway = '[gateway]\nadmin_token = "admin-tok"\nredis_url = "redis://default:redispw@redis:6379/0"\n'
    request_set = '{ X-Auth-Token = "hdr-token", X-Callback = "http://cb:tenantpw@hooks.example/in" }'
    plugins = [jwt_plugin('"${JWT_SECRET}"'), plugin_table("headers", **{"request.set": request_set})]
    steps = steps_route('{ authorization = "step-token" }')
    everything = route("\n".join([*plugins, steps, '[consumers.alice]\napi_keys = ["alice-key"]']))
    text = json.dumps(shown(gateway + everything, {"JWT_SECRET": "env-jwt-secret"}))
    for secret in secrets:
        assert secret not in text, secret
    assert "redis://default:<redacted>@redis:6379/0" in text
    assert "http://cb:<redacted>@hooks.example/in" in text
    assert '"/r"' in text and '"HS256"' in text
