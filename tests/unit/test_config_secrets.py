"""A config error names where the problem is but never echoes a secret's value."""

from __future__ import annotations

import textwrap

import pytest

from gateway.config_load import ConfigError, load_text

ROUTE = """
[upstreams.users]
targets = ["http://127.0.0.1:9001"]

[[routes]]
name = "r"
path = "/r"
upstream = "users"
"""


def errors(text: str, env: dict[str, str] | None = None) -> dict[str, str]:
    """location -> message (fails the test when the config loads)."""
    with pytest.raises(ConfigError) as caught:
        load_text(textwrap.dedent(text), "routes.toml", env or {})
    found = dict(caught.value.problems)
    everything = "\n".join(caught.value.lines())
    assert str(caught.value) == everything
    return found


def test_consumer_api_keys_that_are_not_an_array() -> None:
    found = errors(ROUTE + """
        [consumers.alice]
        api_keys = "alice-live-key"
    """)
    assert found["consumers.alice.api_keys"] == "must be an array, got '<redacted>'"


def test_a_consumer_api_key_that_is_not_a_string() -> None:
    found = errors(ROUTE + """
        [consumers.bob]
        api_keys = ["fine-key", 98765432]
    """)
    assert found["consumers.bob.api_keys[1]"] == "must be a string, got '<redacted>'"
    assert "98765432" not in str(found) and "fine-key" not in str(found)


def test_a_consumer_given_as_an_array_hides_the_keys_inside() -> None:
    found = errors(ROUTE + """
        [[consumers.carol]]
        api_keys = ["carol-key"]
    """)
    assert found["consumers.carol"] == "must be a table, got [{'api_keys': '<redacted>'}]"


def test_admin_token_and_redis_url_of_the_wrong_type() -> None:
    found = errors("""
        [gateway]
        admin_token = 31415926
        redis_url = ["redis://:pw@redis:6379/0"]
    """ + ROUTE)
    assert found["gateway.admin_token"] == "must be a string, got '<redacted>'"
    assert found["gateway.redis_url"] == "must be a string, got '<redacted>'"


def test_plugin_options_named_like_secrets() -> None:
    found = errors(ROUTE + """
        [[routes.plugins]]
        use = "jwt"
        secret = 27182818
        algorithms = ["HS256"]
        [[routes.plugins]]
        use = "basic_auth"
        users = "alice:wonderland"
    """)
    assert found["routes[0].plugins[0] (jwt).secret"] == "must be a string, got '<redacted>'"
    assert found["routes[0].plugins[1] (basic_auth).users"] == "must be a table, got '<redacted>'"
    assert "wonderland" not in str(found) and "27182818" not in str(found)


def test_global_plugin_options_named_like_secrets() -> None:
    found = errors("""
        [[plugins]]
        use = "jwt"
        secret = 1234567
        algorithms = ["HS256"]
    """ + ROUTE)
    assert found["plugins[0] (jwt).secret"] == "must be a string, got '<redacted>'"


def test_plugin_options_of_an_otherwise_invalid_config_are_hidden_too() -> None:
    found = errors(ROUTE + """
        websocket = "maybe"
        [[routes.plugins]]
        use = "jwt"
        secret = 7654321
        algorithms = ["HS256"]
    """)
    assert found["routes[0].websocket"] == "must be true or false, got 'maybe'"
    assert found["routes[0].plugins[0] (jwt).secret"] == "must be a string, got '<redacted>'"


def test_a_value_from_the_environment_is_never_echoed() -> None:
    found = errors("""
        [gateway]
        drain_timeout = "${DRAIN}"
    """ + ROUTE, {"DRAIN": "soonish-secret"})
    assert found["gateway.drain_timeout"].endswith("got '<redacted>'")
    assert "soonish-secret" not in found["gateway.drain_timeout"]


def test_a_value_from_the_environment_in_a_plugin_option_is_never_echoed() -> None:
    found = errors(ROUTE + """
        [[routes.plugins]]
        use = "api_key"
        header = "${KEY_HEADER}"
    """, {"KEY_HEADER": "not a header name"})
    message = found["routes[0].plugins[0] (api_key).header"]
    assert message.startswith("must match ") and message.endswith("got '<redacted>'")


def test_a_value_partly_from_the_environment_is_hidden_whole() -> None:
    found = errors(ROUTE + """
        [consumers.dave]
        jwt_subjects = "user-${SUFFIX}"
    """, {"SUFFIX": "from-env"})
    assert found["consumers.dave.jwt_subjects"] == "must be an array, got '<redacted>'"


def test_the_password_of_a_url_in_any_message_is_hidden() -> None:
    found = errors("""
        [upstreams.users]
        targets = ["ftp://svc:hunter2@files.internal"]
        [[routes]]
        name = "r"
        path = "/r"
        upstream = "users"
    """)
    message = found["upstreams.users.targets[0]"]
    assert "hunter2" not in message
    assert "ftp://svc:<redacted>@files.internal" in message


def test_values_that_are_not_secret_are_still_shown() -> None:
    found = errors("""
        [gateway]
        workers = "four"
        [consumers.erin]
        jwt_subjects = "erin@example.com"
    """ + ROUTE)
    assert found["gateway.workers"] == "must be an integer, got 'four'"
    assert found["consumers.erin.jwt_subjects"] == "must be an array, got 'erin@example.com'"


def test_plugin_settings_that_only_look_secret_are_shown() -> None:
    found = errors(ROUTE + """
        [[routes.plugins]]
        use = "rate_limit"
        limit = 10
        window = "1m"
        key = "tenant"
        max_keys = 0
    """)
    assert found["routes[0].plugins[0] (rate_limit).key"].endswith("got 'tenant'")
    assert found["routes[0].plugins[0] (rate_limit).max_keys"] == "must be a positive integer, got 0"


def test_user_information_in_a_target_is_refused_without_echoing_it() -> None:
    found = errors("""
        [upstreams.users]
        targets = ["http://svc:hunter2@users.internal:8080", "https://s3cr3t-token@files.internal/"]
        [[routes]]
        name = "r"
        path = "/r"
        upstream = "users"
    """)
    first, second = found["upstreams.users.targets[0]"], found["upstreams.users.targets[1]"]
    assert first.startswith("must not contain user information")
    assert first.endswith("got 'http://users.internal:8080'")
    assert second.endswith("got 'https://files.internal/'")
    for message in (first, second):
        assert "hunter2" not in message and "svc" not in message and "s3cr3t" not in message


def test_user_information_with_an_at_sign_in_the_password_is_removed_whole() -> None:
    found = errors("""
        [upstreams.users]
        targets = ["http://svc:p@ss@word@users:80"]
    """)
    message = found["upstreams.users.targets[0]"]
    assert message.endswith("got 'http://users:80'")
    assert "p@ss" not in message and "ss@word" not in message and "svc" not in message


def test_a_bad_target_from_the_environment_is_located_but_not_echoed() -> None:
    found = errors("""
        [upstreams.users]
        targets = ["${USERS_URL}", "${OTHER_URL}"]
        [[routes]]
        name = "r"
        path = "/r"
        upstream = "users"
    """, {"USERS_URL": "http://svc:hunter2@users:80", "OTHER_URL": "http://users-secret-host:99999"})
    assert found["upstreams.users.targets[0]"].startswith("must not contain user information")
    assert found["upstreams.users.targets[0]"].endswith("got '<redacted>'")
    assert found["upstreams.users.targets[1]"] == "the port must be a number from 1 to 65535, got '<redacted>'"
    assert "hunter2" not in str(found) and "users-secret-host" not in str(found)


def test_a_bounded_value_from_the_environment_is_not_echoed() -> None:
    found = errors("""
        [gateway]
        drain_timeout = "${DRAIN}"
        listen = "${LISTEN}"
    """ + ROUTE, {"DRAIN": "9999h", "LISTEN": "internal-name:70000"})
    assert found["gateway.drain_timeout"] == "must be at most 24h, got '<redacted>'"
    assert found["gateway.listen"].endswith("got '<redacted>'")
    assert "9999h" not in str(found) and "internal-name" not in str(found)


def test_an_admin_token_deep_in_a_too_deep_file_is_not_echoed() -> None:
    text = '[gateway]\nadmin_token = "tok-3141"\n[x]\ny = ' + "[" * 100 + '"tok-2718"' + "]" * 100 + "\n"
    found = errors(text)
    assert found == {"x.y[0]...": "nested deeper than 64 levels (tables and arrays inside one another)"}
