"""Loading routes.toml: every problem found at once, each with its dotted location
(docs/configuration.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import PositiveInt

from gateway import Plugin, PluginConfig
from gateway.config_load import ConfigError, load_config
from gateway.registry import Registry
from tests.support import plugin_table
from tests.support.units import USERS as UPSTREAM
from tests.support.units import config_error, load, users_route
from tests.support.units import config_errors as problems
from tests.support.units import users_upstream as upstream

MINIMAL = users_route(path="/users/{id}")


def one_route(route: str = "") -> str:
    """One route ``r`` at ``/r/{id}``; ``route`` is TOML in its table."""
    return users_route(route, path="/r/{id}")


# --- valid configs --------------------------------------------------------------------------


def test_minimal_config_loads_with_defaults() -> None:
    loaded = load(MINIMAL)
    config = loaded.config
    assert [r.name for r in config.routes] == ["r"]
    assert config.upstreams["users"].targets == ["http://127.0.0.1:9001"]
    assert config.upstreams["users"].balance == "round_robin"
    assert config.gateway.timeout == 30.0
    assert config.gateway.max_body_bytes == 10 * 1024 * 1024
    assert config.gateway.trusted_proxies == []
    assert config.routes[0].methods is None
    assert loaded.summary() == "ok: 1 routes, 1 upstreams, 0 plugins"


def test_empty_file_is_a_valid_config_without_routes() -> None:
    assert load("").summary() == "ok: 0 routes, 0 upstreams, 0 plugins"


def test_units_env_and_plugins_are_resolved() -> None:
    settings = """
        [gateway]
        timeout = "250ms"
        max_body_bytes = "1MiB"
        redis_url = "${REDIS_URL:-}"
        [[plugins]]
        use = "request_id"
    """
    plugins = plugin_table("ip_filter", allow='["10.0.0.0/8"]') + "\n" + plugin_table(
        "headers", response='{ set = { "Cache-Control" = "no-store" } }')
    users = upstream('timeout = { connect = "1s", response = "2m", idle = "1h" }', '["http://${USERS_HOST}:9001"]')
    loaded = load(settings + users_route(plugins, upstreams=users), env={"USERS_HOST": "10.1.2.3"})
    config = loaded.config
    assert config.gateway.timeout == pytest.approx(0.25)
    assert config.gateway.max_body_bytes == 1024 * 1024
    assert config.gateway.redis_url == ""
    assert config.upstreams["users"].targets == ["http://10.1.2.3:9001"]
    assert config.upstreams["users"].timeout.response == 120.0
    assert config.upstreams["users"].timeout.idle == 3600.0
    assert [p.use for p in loaded.global_plugins] == ["request_id"]
    assert [(p.use, p.location) for p in loaded.route_plugins[0]] == [
        ("ip_filter", "routes[0].plugins[0] (ip_filter)"),
        ("headers", "routes[0].plugins[1] (headers)"),
    ]
    assert "upstreams.users.targets[0]" in loaded.secret_locations
    assert loaded.summary() == "ok: 1 routes, 1 upstreams, 3 plugins"


def test_load_config_reads_a_file_and_names_it(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(MINIMAL)
    assert load_config(path, env={}).source == str(path)
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "missing.toml", env={})
    assert caught.value.lines()[0].startswith(f"{tmp_path / 'missing.toml'}: cannot read")


# --- unknown keys ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "location", "suggestion"),
    [
        ("[gateway]\nlistn = '0.0.0.0:1'\n", "gateway.listn", "listen"),
        (UPSTREAM + "balanse = 'random'\n", "upstreams.users.balanse", "balance"),
        (UPSTREAM + "timeout = { conect = '1s' }\n", "upstreams.users.timeout.conect", "connect"),
        (UPSTREAM + "retry = { atempts = 2 }\n", "upstreams.users.retry.atempts", "attempts"),
        (one_route("upstrem = 'users'"), "routes[0].upstrem", "upstream"),
        (one_route("[[routes.plugins]]\nuse = 'ip_filter'\nalow = ['10.0.0.0/8']"),
         "routes[0].plugins[0] (ip_filter).alow", "allow"),
        (one_route("[[routes.plugins]]\nuse = 'cors'\norigin = ['https://a.example']"),
         "routes[0].plugins[0] (cors).origin", "origins"),
        ("[[routs]]\nname = 'x'\n", "routs", "routes"),
    ],
)
def test_unknown_keys_are_errors_with_did_you_mean(text: str, location: str, suggestion: str) -> None:
    found = problems(text)
    assert location in found, found
    assert found[location].startswith("unknown key"), found[location]
    assert f"did you mean {suggestion!r}?" in found[location]


def test_unknown_key_far_from_any_name_lists_the_allowed_ones() -> None:
    found = problems("[gateway]\nzzzzzz = 1\n")
    assert "allowed:" in found["gateway.zzzzzz"]
    assert "listen" in found["gateway.zzzzzz"]


# --- located errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "location", "fragment"),
    [
        ("[gateway]\nworkers = 0\n", "gateway.workers", "must be a positive integer, got 0"),
        ("[gateway]\nworkers = 'two'\n", "gateway.workers", "must be an integer"),
        ("[gateway]\nlisten = 'nope'\n", "gateway.listen", "HOST:PORT"),
        ("[gateway]\ntimeout = 5\n", "gateway.timeout", "duration"),
        ("[gateway]\ntimeout = '0s'\n", "gateway.timeout", "longer than 0"),
        ("[gateway]\nmax_body_bytes = '10 parsecs'\n", "gateway.max_body_bytes", "size"),
        ("[gateway]\ntrusted_proxies = ['10.0.0.0/8', 'localhost']\n", "gateway.trusted_proxies[1]", "CIDR"),
        ("[upstreams.users]\ntargets = []\n", "upstreams.users.targets", "must not be empty"),
        ("[upstreams.users]\n", "upstreams.users.targets", "is required"),
        ("[upstreams.users]\ntargets = ['ftp://x']\n", "upstreams.users.targets[0]", "http://"),
        ("[upstreams.users]\ntargets = ['http://x/path']\n", "upstreams.users.targets[0]", "without a path"),
        (UPSTREAM + "balance = 'fastest'\n", "upstreams.users.balance", "must be one of"),
        (UPSTREAM + "retry = { on = [502, 'sometimes'] }\n", "upstreams.users.retry.on[1]", "'sometimes'"),
        (one_route("methods = ['GET', 'FETCH']"), "routes[0].methods[1]", "must be one of"),
        (one_route("timeout = '5 years'"), "routes[0].timeout", "duration"),
        (one_route("websocket = 'maybe'"), "routes[0].websocket", "must be true or false, got 'maybe'"),
        (UPSTREAM + "[[routes]]\nname = 'bad name'\npath = '/x'\nupstream = 'users'\n", "routes[0].name", "must match"),
        (UPSTREAM + "[[routes]]\nname = 'r'\npath = 'x'\nupstream = 'users'\n", "routes[0].path", "must match"),
        # built-in plugins' own options, named by position and plugin
        (one_route("[[routes.plugins]]\nuse = 'request_id'\n[[routes.plugins]]\nuse = 'ip_filter'\n"
                   "allow = ['10.0.0.0/33']"),
         "routes[0].plugins[1] (ip_filter).allow[0]",
         "must be an IP address or CIDR such as 10.0.0.0/8, got '10.0.0.0/33'"),
        (one_route("[[routes.plugins]]\nuse = 'headers'\nrequest = { set = { X-Tenant = 5 } }"),
         "routes[0].plugins[0] (headers).request.set.X-Tenant", "must be a string, got 5"),
        (one_route("[[routes.plugins]]\nuse = 'headers'\nresponse = { remove = 'Server' }"),
         "routes[0].plugins[0] (headers).response.remove", "must be an array"),
        (one_route("[[routes.plugins]]\nuse = 'cors'\nmax_age = 600"),
         "routes[0].plugins[0] (cors).max_age", "duration"),
        (one_route("[[routes.plugins]]\nuse = 'request_id'\ntrust_incoming = 'sometimes'"),
         "routes[0].plugins[0] (request_id).trust_incoming", "true or false"),
        ("[[plugins]]\nuse = 'ip_filter'\ndeny = ['300.1.1.1']\n", "plugins[0] (ip_filter).deny[0]", "CIDR"),
        (one_route("[[routes.plugins]]\nuse = 'ip_filtr'"),
         "routes[0].plugins[0].use", "unknown plugin 'ip_filtr'"),
        (one_route("[[routes.plugins]]\nuse = 'no_such_module_xyz:Plugin'"),
         "routes[0].plugins[0].use", "cannot import"),
        (one_route("[[routes.plugins]]\nallow = []"), "routes[0].plugins[0].use", "is required"),
    ],
)
def test_every_error_is_located(text: str, location: str, fragment: str) -> None:
    found = problems(text)
    assert location in found, found
    assert fragment in found[location]


class LimitConfig(PluginConfig):
    limit: PositiveInt
    window: str = "1m"


class FakeRateLimit(Plugin[LimitConfig]):
    """A stand-in with an integer option, to check the documented example message."""

    name = "rate_limit"
    Config = LimitConfig


def test_spec_example_message_for_a_plugin_option() -> None:
    registry = Registry({**dict(Registry.discover().items()), "rate_limit": FakeRateLimit})
    routes = "".join(
        f'[[routes]]\nname = "r{i}"\npath = "/r{i}"\nupstream = "users"\n'
        + plugin_table("request_id") + "\n" + plugin_table("rate_limit", limit=str(limit)) + "\n"
        for i, limit in enumerate([10, 10, -5])
    )
    assert config_error(UPSTREAM + routes, registry=registry).lines() == [
        "routes.toml: routes[2].plugins[1] (rate_limit).limit: must be a positive integer, got -5"
    ]


def test_missing_environment_variable_is_located() -> None:
    found = problems(UPSTREAM + '[consumers.alice]\napi_keys = ["${ALICE_KEY}"]\n')
    assert "ALICE_KEY is not set" in found["consumers.alice.api_keys[0]"]


def test_missing_environment_variable_with_default_is_fine() -> None:
    loaded = load(UPSTREAM + "[consumers.alice]\napi_keys = ['${ALICE_KEY:-dev-key}']\n")
    assert loaded.config.consumers["alice"].api_keys == ["dev-key"]


@pytest.mark.parametrize(
    ("text", "location", "fragment"),
    [
        (UPSTREAM + "[[routes]]\nname = 'r'\npath = '/r'\nupstream = 'user'\n",
         "routes[0].upstream", "unknown upstream 'user' (did you mean 'users'?)"),
        (UPSTREAM + "[[routes]]\nname = 'r'\npath = '/r'\nupstream = 'billing'\n",
         "routes[0].upstream", "unknown upstream 'billing'"),
        (UPSTREAM + "[[routes]]\nname = 'r'\npath = '/r'\n", "routes[0]", "has no terminal"),
        (UPSTREAM + "[[routes]]\nname = 'a'\npath = '/a'\nupstream = 'users'\n"
                    "[[routes]]\nname = 'b'\npath = '/b'\nupstream = 'users'\n"
                    "[[routes]]\nname = 'a'\npath = '/c'\nupstream = 'users'\n",
         "routes[2].name", "'a' is already the name of routes[0]"),
        (one_route().replace("/r/{id}", "/r/{id"), "routes[0].path", "'/r/{id'"),
        (one_route().replace("/r/{id}", "/r/{id:[}"), "routes[0].path", "pattern"),
        (one_route().replace("/r/{id}", "/r/{id}/{id}"), "routes[0].path", "id"),
        (one_route("rewrite = '/users/{user}'"), "routes[0].rewrite", "{user} is not a parameter of path '/r/{id}'"),
        (one_route("rewrite = 'users/{id}'"), "routes[0].rewrite", "must start with '/'"),
        ("[upstreams.users]\ntargets = ['http://a:1', 'http://b:1']\nweights = [1]\n",
         "upstreams.users.weights", "needs one weight per target (2), got 1"),
        ("[upstreams.users]\ntargets = ['http://a:1']\nweights = [1, 2]\n",
         "upstreams.users.weights", "needs one weight per target (1), got 2"),
        (UPSTREAM + "[consumers.a]\napi_keys = ['k1']\n[consumers.b]\napi_keys = ['k1']\n",
         "consumers.b.api_keys[0]", "the same key is given to consumer 'a'"),
    ],
)
def test_cross_checks_are_located(text: str, location: str, fragment: str) -> None:
    found = problems(text)
    assert location in found, found
    assert fragment in found[location]


def test_valid_rewrite_and_weights_pass() -> None:
    users = upstream("weights = [2, 1]", '["http://a:1", "http://b:1"]')
    loaded = load(users_route('rewrite = "/v1/{rest}"', path="/api/{rest:.*}", upstreams=users))
    assert loaded.config.upstreams["users"].weights == [2, 1]
    assert loaded.config.routes[0].rewrite == "/v1/{rest}"


# --- several errors at once -----------------------------------------------------------------


def test_several_errors_are_reported_in_one_config_error() -> None:
    bad_target = upstream(targets='["ftp://users"]')
    bad_plugin = plugin_table("ip_filter", allow='["not-a-cidr"]')
    found = problems('[gateway]\nworkers = 0\nlisten = "nope"\n' + users_route(bad_plugin, upstreams=bad_target))
    assert set(found) >= {
        "gateway.workers", "gateway.listen", "upstreams.users.targets[0]", "routes[0].plugins[0] (ip_filter).allow[0]",
    }


def test_several_cross_check_and_plugin_errors_at_once() -> None:
    found = problems(
        UPSTREAM
        + "[[routes]]\nname = 'a'\npath = '/a/{x}'\nupstream = 'nope'\nrewrite = '/{y}'\n"
        + plugin_table("headers", request="{ set = { X = 1 } }")
        + "\n[[routes]]\nname = 'a'\npath = '/b'\nupstream = 'users'\n"
        + "[consumers.alice]\napi_keys = ['${ALICE_KEY}']\n"
    )
    assert set(found) >= {
        "routes[0].upstream", "routes[0].rewrite", "routes[0].plugins[0] (headers).request.set.X",
        "routes[1].name", "consumers.alice.api_keys[0]",
    }


def test_toml_syntax_error_is_reported_with_its_line() -> None:
    [line] = config_error("[gateway]\nlisten = \n").lines()
    assert line.startswith("routes.toml: not valid TOML:")
    assert "line 2" in line


def test_message_format_is_file_location_message() -> None:
    error = config_error("[gateway]\nworkers = -1\ndrain_timeout = 'soon'\n", source="conf/gw.toml")
    assert error.lines() == [f"conf/gw.toml: {loc}: {msg}" for loc, msg in error.problems]
    assert "conf/gw.toml: gateway.workers: must be a positive integer, got -1" in error.lines()
    assert any(line.startswith("conf/gw.toml: gateway.drain_timeout: ") for line in error.lines())
    assert str(error) == "\n".join(error.lines())


def test_repo_routes_toml_is_valid() -> None:
    root = Path(__file__).resolve().parents[2]
    loaded = load_config(root / "routes.toml", env={})
    assert len(loaded.config.routes) >= 1


def test_shared_breaker_needs_a_redis_url() -> None:
    text = users_route(upstreams=upstream("breaker = { shared = true }"))
    assert "needs gateway.redis_url" in problems(text)["upstreams.users.breaker.shared"]
    load('[gateway]\nredis_url = "redis://127.0.0.1:6379"\n' + text)


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/a/../b", "has a '.' or '..' segment"),
        ("/a/./{rest:.*}", "has a '.' or '..' segment"),
        ("/a//b", "has an empty segment"),
    ],
)
def test_a_route_path_no_normalized_request_can_match_is_an_error(path: str, message: str) -> None:
    lines = config_error(users_route(path=path)).lines()
    assert any(f"routes[0].path: {path!r} {message}" in line for line in lines)


def test_route_paths_with_dots_in_names_and_a_trailing_slash_are_fine() -> None:
    second = '[[routes]]\nname = "s"\npath = "/a//b"\nupstream = "users"'
    text = "[gateway]\nmerge_slashes = false\n" + users_route(second, path="/v1.2/.well-known/{file:.*}/")
    assert load(text).config.routes[1].path == "/a//b"


# --- absurd values, ports and URLs ----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "location", "fragment"),
    [
        # ports: 1-65535 for targets, 0-65535 for listeners (0: any free port)
        (upstream(targets='["http://127.0.0.1:99999"]'), "upstreams.users.targets[0]",
         "the port must be a number from 1 to 65535, got 'http://127.0.0.1:99999'"),
        (upstream(targets='["http://127.0.0.1:0"]'), "upstreams.users.targets[0]", "from 1 to 65535"),
        (upstream(targets='["http://a:1", "http://b:"]'), "upstreams.users.targets[1]", "from 1 to 65535"),
        (upstream(targets='["http://b:8o"]'), "upstreams.users.targets[0]", "from 1 to 65535"),
        ("[gateway]\nlisten = '0.0.0.0:65536'\n", "gateway.listen", "from 0 to 65535"),
        ("[gateway]\nadmin_listen = '127.0.0.1:-1'\n", "gateway.admin_listen", "from 0 to 65535"),
        ("[gateway]\nlisten = '0.0.0.0:٨٠'\n", "gateway.listen", "from 0 to 65535"),
        ("[gateway]\nlisten = 'local host:80'\n", "gateway.listen", "without spaces"),
        ("[gateway]\nlisten = 'a$b:80'\n", "gateway.listen", "not a valid host name"),
        ("[gateway]\nlisten = '::1:80'\n", "gateway.listen", "IPv6 address must be in brackets"),
        ("[gateway]\nadmin_listen = '[::g]:80'\n", "gateway.admin_listen", "not an IPv6 address"),
        # malformed URLs
        (upstream(targets='["http://"]'), "upstreams.users.targets[0]", "has no host"),
        (upstream(targets='["http://:8080"]'), "upstreams.users.targets[0]", "has no host"),
        (upstream(targets='["http://users service:80"]'), "upstreams.users.targets[0]", "spaces"),
        (upstream(targets='["http://users\\tservice"]'), "upstreams.users.targets[0]", "control characters"),
        (upstream(targets='["http://us*rs:80"]'), "upstreams.users.targets[0]", "not a valid host name"),
        (upstream(targets='["http://-users"]'), "upstreams.users.targets[0]", "not a valid host name"),
        (upstream(targets='["http://300.1.1.1:80"]'), "upstreams.users.targets[0]", "not an IPv4 address"),
        (upstream(targets='["http://::1:80"]'), "upstreams.users.targets[0]", "must be in brackets"),
        (upstream(targets='["http://[::1"]'), "upstreams.users.targets[0]", "closing ']'"),
        (upstream(targets='["http://[::g]:80"]'), "upstreams.users.targets[0]", "not an IPv6 address"),
        (upstream(targets='["http://[::1]x"]'), "upstreams.users.targets[0]", "scheme://host[:port]"),
        (upstream(targets='["HTTP://users"]'), "upstreams.users.targets[0]", "http:// or https://"),
        (upstream(targets='["users:80"]'), "upstreams.users.targets[0]", "http:// or https://"),
        (upstream(targets='["http://users?x=1"]'), "upstreams.users.targets[0]", "without a path, query or fragment"),
        (upstream(targets='["http://users#top"]'), "upstreams.users.targets[0]", "without a path, query or fragment"),
        # user information never reaches a target
        (upstream(targets='["http://svc:hunter2@users:80"]'), "upstreams.users.targets[0]",
         "must not contain user information"),
        # absurd values
        ("[gateway]\nworkers = 100000000\n", "gateway.workers", "must be at most 1024"),
        ("[gateway]\nworkers = 1025\n", "gateway.workers", "must be at most 1024"),
        ("[gateway]\nmax_connections = 1000001\n", "gateway.max_connections", "must be at most 1_000_000"),
        ("[gateway]\nmax_connections = 0\n", "gateway.max_connections", "must be a positive integer"),
        ("[gateway]\nmax_json_depth = 513\n", "gateway.max_json_depth", "must be at most 512"),
        ("[gateway]\nmax_json_depth = 0\n", "gateway.max_json_depth", "must be a positive integer"),
        ("[gateway]\nheader_timeout = '25h'\n", "gateway.header_timeout", "must be at most 24h, got '25h'"),
        ("[gateway]\nkeepalive_timeout = '0s'\n", "gateway.keepalive_timeout", "longer than 0"),
        ("[gateway]\ntimeout = '1441m'\n", "gateway.timeout", "must be at most 24h"),
        ("[gateway]\ndrain_timeout = '100000h'\n", "gateway.drain_timeout", "must be at most 24h"),
        (upstream("health = { interval = '0.001ms' }"), "upstreams.users.health.interval",
         "must be at least 100ms, got '0.001ms'"),
        (upstream("health = { interval = '99ms' }"), "upstreams.users.health.interval", "at least 100ms"),
        (upstream("health = { path = 'healthz' }"), "upstreams.users.health.path", 'starting with "/"'),
        (upstream("health = { path = '/health z' }"), "upstreams.users.health.path", "without spaces"),
        (upstream("timeout = { response = '48h' }"), "upstreams.users.timeout.response", "at most 24h"),
        (upstream("breaker = { on = [502, 999] }"), "upstreams.users.breaker.on[1]", "HTTP status (100-599), got 999"),
        (upstream("breaker = { reset_timeout = '2000h' }"), "upstreams.users.breaker.reset_timeout", "at most 24h"),
        (upstream("retry = { attempts = 1000 }"), "upstreams.users.retry.attempts", "must be at most 100"),
        (upstream("retry = { methods = ['GET', 'PSOT'] }"), "upstreams.users.retry.methods[1]", "HTTP method"),
        (upstream("retry = { max_backoff = '25h' }"), "upstreams.users.retry.max_backoff", "at most 24h"),
        (upstream("weights = [1, 1001]", '["http://a:1", "http://b:1"]'), "upstreams.users.weights[1]",
         "must be at most 1000"),
        (one_route("timeout = '48h'"), "routes[0].timeout", "at most 24h"),
    ],
)
def test_ports_urls_and_absurd_values_are_located_errors(text: str, location: str, fragment: str) -> None:
    found = problems(text)
    assert location in found, found
    assert fragment in found[location], found[location]


def test_limits_and_unusual_but_valid_values_load() -> None:
    loaded = load(
        """
        [gateway]
        listen = "[::]:0"
        admin_listen = ":9901"
        workers = 1024
        timeout = "24h"
        header_timeout = "1ms"
        max_connections = 1_000_000
        max_json_depth = 512
        trusted_proxies = ["10.0.0.0/8"]
        [upstreams.users]
        targets = ["http://127.0.0.1:65535", "https://users_v2.internal.", "http://[fd00::7]:8080",
                   "http://localhost:1/", "http://USERS-1.example.com"]
        weights = [1000, 1, 1, 1, 1]
        health = { path = "/healthz?deep=1", interval = "100ms", timeout = "24h" }
        breaker = { on = [100, 599] }
        retry = { attempts = 100, methods = ["get", "POST"] }
        """
    )
    config = loaded.config
    assert config.gateway.listen == "[::]:0"
    assert config.gateway.workers == 1024
    assert config.upstreams["users"].targets[3] == "http://localhost:1"
    assert config.upstreams["users"].health is not None
    assert config.upstreams["users"].health.interval == pytest.approx(0.1)
    assert loaded.warnings == ()


def test_the_new_gateway_settings_have_their_documented_defaults() -> None:
    settings = load("").config.gateway
    assert (settings.header_timeout, settings.keepalive_timeout) == (10.0, 75.0)
    assert (settings.max_connections, settings.max_json_depth) == (10_000, 64)


# --- trusted_proxies that trust everyone ---------------------------------------------------


def test_trusted_proxies_of_everyone_load_with_one_warning_each(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="gateway.config"):
        loaded = load("[gateway]\ntrusted_proxies = ['10.0.0.0/8', '0.0.0.0/0', '::/0', '1.2.3.4/0']\n")
    assert loaded.config.gateway.trusted_proxies[1] == "0.0.0.0/0"
    assert [loc for loc, _ in loaded.warnings] == [
        "gateway.trusted_proxies[1]", "gateway.trusted_proxies[2]", "gateway.trusted_proxies[3]",
    ]
    assert "trusts every peer" in loaded.warnings[0][1]
    records = [r for r in caplog.records if r.name == "gateway.config"]
    assert [r.levelname for r in records] == ["WARNING"] * 3
    assert records[0].getMessage() == loaded.warning_lines()[0]
    assert records[0].getMessage().startswith("routes.toml: gateway.trusted_proxies[1]: '0.0.0.0/0' trusts")


def test_narrow_trusted_proxies_load_without_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="gateway.config"):
        loaded = load("[gateway]\ntrusted_proxies = ['0.0.0.0/1', '127.0.0.1']\n")
    assert loaded.warnings == ()
    assert not [r for r in caplog.records if r.name == "gateway.config"]


# --- nesting --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "location"),
    [
        ("a = " + "[" * 3000 + "]" * 3000, ""),  # the TOML parser itself recurses
        ("a = " + "{b = " * 3000 + "1" + "}" * 3000, ""),
        ("[" + ".".join(["a"] * 3000) + "]\nx = 1\n", "a.a.a..."),  # tables by name do not recurse
        ("a." * 3000 + "x = 1\n", "a.a.a..."),
        ("a = " + "[" * 200 + "]" * 200, "a[0][0]..."),
        (UPSTREAM + "[[routes]]\nname = 'r'\npath = '/r'\n[[routes.steps]]\nname = 's'\nupstream = 'users'\n"
         "path = '/x'\nbody = " + "{a = " * 70 + "1" + "}" * 70 + "\n", "routes[0].steps..."),
    ],
)
def test_deep_nesting_is_a_config_error_not_a_recursion_error(text: str, location: str) -> None:
    nested = "nested deeper than 64 levels (tables and arrays inside one another)"
    assert config_error(text).problems == [(location, nested)]


def step_body(levels: int) -> str:
    """A route whose step body nests ``levels`` tables (the file, routes, routes[0], steps and
    steps[0] are the 5 levels around it)."""
    body = "{a = " * levels + "1" + "}" * levels
    return (UPSTREAM + "[[routes]]\nname = 'r'\npath = '/r'\n[[routes.steps]]\nname = 's'\n"
            f"upstream = 'users'\npath = '/x'\nmethod = 'POST'\nbody = {body}\n")


def test_nesting_up_to_the_limit_loads() -> None:
    assert load(step_body(59)).config.routes[0].steps[0].body is not None
    assert problems(step_body(60)) == {
        "routes[0].steps...": "nested deeper than 64 levels (tables and arrays inside one another)"
    }


def test_a_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "routes.toml"
    path.write_bytes(b"[gateway]\nlisten = '\xff'\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert caught.value.lines() == [f"{path}: not UTF-8 text (line 2)"]


# --- route path regexes: linear time or refused ---------------------------------------------


@pytest.mark.parametrize(
    ("path", "fragments"),
    [
        ("/x/{p:(a+)+b}", ["{p:(a+)+b} can match the same text in more than one way", "exponential time"]),
        ("/x/{p:(a|a)*}", ["{p:(a|a)*} can match the same text in more than one way", "exponential"]),
        ("/x/{p:(.*)*}", ["{p:(.*)*}", "exponential"]),
        (r"/x/{p:(\w+\s?)+}", [r"{p:(\w+\s?)+}", "exponential"]),
        ("/x/{p:(?:[a-z]+-?)+}", ["exponential"]),
        ("/x/{p:(x+x+)+y}", ["exponential"]),
        (r"/x/{p:\d+\d+}", [r"{p:\d+\d+} has two repetitions", "quadratic time"]),
        ("/x/{name}.{ext}", ["{name} and {ext} can match the same text", "quadratic", "{name:[^/.]+}.{ext}"]),
        ("/x/{a}-{b}", ["{a} and {b}", "quadratic"]),
        ("/x/{a:.*}/y/{b:.*}", ["{a:.*} and {b:.*}", "quadratic"]),
        ("/x/{p:a?a?a?a?a?a?a?a?a?a?a?a?aaaaaaaaaaaa}", ["in more than 128 ways"]),
        (r"/x/{p:(a)\2}", ["backreference"]),
        ("/x/{p:(?P<q>a)(?P=q)}", ["backreference"]),
        ("/x/{p:(?=a)[a-z]+}", ["lookahead or lookbehind"]),
        ("/x/{p:[a-z]+(?<!x)}", ["lookahead or lookbehind"]),
    ],
)
def test_route_regexes_that_backtrack_are_refused(path: str, fragments: list[str]) -> None:
    found = problems(users_route(path=path))
    assert "routes[0].path" in found, found
    for fragment in fragments:
        assert fragment in found["routes[0].path"], found["routes[0].path"]


@pytest.mark.parametrize(
    "path",
    [
        "/x/{rest:.*}",
        r"/x/{id:\d+}",
        "/x/{name:[a-z0-9-]+}",
        "/x/{v:v[0-9]+}",
        "/x/{id}",
        "/x/{a}/y/{b}/{rest:.*}",
        "/x/{name}.json",
        "/x/{name:[^/.]+}.{ext}",
        "/x/{slug:(?:[a-z0-9]+-)*[a-z0-9]+}",
        "/x/{opts:(?:-[a-z]+)*}",
        "/x/{uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}}",
        "/x/{hex:(?:[0-9a-f]{2})+}",
        r"/x/{ip:\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}}",
        "/x/{v:(?:v1|v2|v2beta)}",
        "/x/{p:(?i:abc)}",
        "/x/{p:(a|ab)*c}",
        r"/x/{p:\d{1,1000}}",
        "/v1.2/.well-known/{file:.*}/",
    ],
)
def test_route_regexes_that_match_in_linear_time_are_accepted(path: str) -> None:
    assert load(users_route(path=path)).config.routes[0].path == path
