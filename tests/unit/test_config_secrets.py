"""A config error names where the problem is but never echoes a secret's value."""

from __future__ import annotations

import pytest

from tests.support import plugin_table
from tests.support.units import config_errors, users_route, users_upstream

REDACTED = "got '<redacted>'"
USER_INFO = "must not contain user information (user:password@); send credentials with a plugin such as `headers`, got "
NOT_A_STRING = f"must be a string, {REDACTED}"


def jwt_secret(secret: str) -> str:
    return plugin_table("jwt", secret=secret, algorithms='["HS256"]')


@pytest.mark.parametrize(
    ("text", "env", "expected", "hidden"),
    [
        pytest.param(
            users_route('[consumers.alice]\napi_keys = "alice-live-key"'), {},
            {"consumers.alice.api_keys": f"must be an array, {REDACTED}"}, (),
            id="consumer_api_keys_that_are_not_an_array",
        ),
        pytest.param(
            users_route('[consumers.bob]\napi_keys = ["fine-key", 98765432]'), {},
            {"consumers.bob.api_keys[1]": NOT_A_STRING}, ("98765432", "fine-key"),
            id="a_consumer_api_key_that_is_not_a_string",
        ),
        pytest.param(
            users_route('[[consumers.carol]]\napi_keys = ["carol-key"]'), {},
            {"consumers.carol": "must be a table, got [{'api_keys': '<redacted>'}]"}, (),
            id="a_consumer_given_as_an_array_hides_the_keys_inside",
        ),
        pytest.param(
            '[gateway]\nadmin_token = 31415926\nredis_url = ["redis://:pw@redis:6379/0"]\n' + users_route(), {},
            {"gateway.admin_token": NOT_A_STRING, "gateway.redis_url": NOT_A_STRING}, (),
            id="admin_token_and_redis_url_of_the_wrong_type",
        ),
        pytest.param(
            users_route(jwt_secret("27182818") + "\n" + plugin_table("basic_auth", users='"alice:wonderland"')), {},
            {"routes[0].plugins[0] (jwt).secret": NOT_A_STRING,
             "routes[0].plugins[1] (basic_auth).users": f"must be a table, {REDACTED}"},
            ("wonderland", "27182818"),
            id="plugin_options_named_like_secrets",
        ),
        pytest.param(
            '[[plugins]]\nuse = "jwt"\nsecret = 1234567\nalgorithms = ["HS256"]\n' + users_route(), {},
            {"plugins[0] (jwt).secret": NOT_A_STRING}, (),
            id="global_plugin_options_named_like_secrets",
        ),
        pytest.param(
            users_route('websocket = "maybe"\n' + jwt_secret("7654321")), {},
            {"routes[0].websocket": "must be true or false, got 'maybe'",
             "routes[0].plugins[0] (jwt).secret": NOT_A_STRING},
            (),
            id="plugin_options_of_an_otherwise_invalid_config_are_hidden_too",
        ),
        pytest.param(
            '[gateway]\ndrain_timeout = "${DRAIN}"\n' + users_route(), {"DRAIN": "soonish-secret"},
            {"gateway.drain_timeout": f'must be a duration such as "250ms", "5s", "1m" or "2h", {REDACTED}'},
            ("soonish-secret",),
            id="a_value_from_the_environment_is_never_echoed",
        ),
        pytest.param(
            users_route(plugin_table("api_key", header='"${KEY_HEADER}"')), {"KEY_HEADER": "not a header name"},
            {"routes[0].plugins[0] (api_key).header": f'must match "^[!#$%&\'*+.^_`|~0-9A-Za-z-]*$", {REDACTED}'},
            ("not a header name",),
            id="a_value_from_the_environment_in_a_plugin_option_is_never_echoed",
        ),
        pytest.param(
            users_route('[consumers.dave]\njwt_subjects = "user-${SUFFIX}"'), {"SUFFIX": "from-env"},
            {"consumers.dave.jwt_subjects": f"must be an array, {REDACTED}"}, ("from-env",),
            id="a_value_partly_from_the_environment_is_hidden_whole",
        ),
        pytest.param(
            users_route(upstreams=users_upstream(targets='["ftp://svc:hunter2@files.internal"]')), {},
            {"upstreams.users.targets[0]":
             "must be an http:// or https:// URL such as \"http://10.0.0.1:8080\", got 'ftp://svc:<redacted>@files.internal'"},
            ("hunter2",),
            id="the_password_of_a_url_in_any_message_is_hidden",
        ),
        pytest.param(
            '[gateway]\nworkers = "four"\n[consumers.erin]\njwt_subjects = "erin@example.com"\n' + users_route(), {},
            {"gateway.workers": "must be an integer, got 'four'",
             "consumers.erin.jwt_subjects": "must be an array, got 'erin@example.com'"},
            (),
            id="values_that_are_not_secret_are_still_shown",
        ),
        pytest.param(
            users_route(plugin_table("rate_limit", limit="10", window='"1m"', key='"tenant"', max_keys="0")), {},
            {"routes[0].plugins[0] (rate_limit).key":
             'must be "consumer", "ip", "route" or "header:NAME", got \'tenant\'',
             "routes[0].plugins[0] (rate_limit).max_keys": "must be a positive integer, got 0"},
            (),
            id="plugin_settings_that_only_look_secret_are_shown",
        ),
        pytest.param(
            users_route(upstreams=users_upstream(
                targets='["http://svc:hunter2@users.internal:8080", "https://s3cr3t-token@files.internal/"]')), {},
            {"upstreams.users.targets[0]": USER_INFO + "'http://users.internal:8080'",
             "upstreams.users.targets[1]": USER_INFO + "'https://files.internal/'"},
            ("hunter2", "svc", "s3cr3t"),
            id="user_information_in_a_target_is_refused_without_echoing_it",
        ),
        pytest.param(
            users_upstream(targets='["http://svc:p@ss@word@users:80"]'), {},
            {"upstreams.users.targets[0]": USER_INFO + "'http://users:80'"}, ("p@ss", "ss@word", "svc"),
            id="user_information_with_an_at_sign_in_the_password_is_removed_whole",
        ),
        pytest.param(
            users_route(upstreams=users_upstream(targets='["${USERS_URL}", "${OTHER_URL}"]')),
            {"USERS_URL": "http://svc:hunter2@users:80", "OTHER_URL": "http://users-secret-host:99999"},
            {"upstreams.users.targets[0]": USER_INFO + "'<redacted>'",
             "upstreams.users.targets[1]": f"the port must be a number from 1 to 65535, {REDACTED}"},
            ("hunter2", "users-secret-host"),
            id="a_bad_target_from_the_environment_is_located_but_not_echoed",
        ),
        pytest.param(
            '[gateway]\ndrain_timeout = "${DRAIN}"\nlisten = "${LISTEN}"\n' + users_route(),
            {"DRAIN": "9999h", "LISTEN": "internal-name:70000"},
            {"gateway.drain_timeout": f"must be at most 24h, {REDACTED}",
             "gateway.listen":
             f'must be "HOST:PORT": the port must be a number from 0 to 65535 (0: any free port), {REDACTED}'},
            ("9999h", "internal-name"),
            id="a_bounded_value_from_the_environment_is_not_echoed",
        ),
        pytest.param(
            '[gateway]\nadmin_token = "tok-3141"\n[x]\ny = ' + "[" * 100 + '"tok-2718"' + "]" * 100 + "\n", {},
            {"x.y[0]...": "nested deeper than 64 levels (tables and arrays inside one another)"}, ("tok-",),
            id="an_admin_token_deep_in_a_too_deep_file_is_not_echoed",
        ),
    ],
)
def test_a_config_error_shows_values_but_never_secrets(
    text: str, env: dict[str, str], expected: dict[str, str], hidden: tuple[str, ...]
) -> None:
    found = config_errors(text, env)
    assert found == expected
    for secret in hidden:
        assert secret not in str(found), secret
