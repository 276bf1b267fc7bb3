"""Loading routes.toml: every problem found at once, each with its dotted location (SPEC §1, §2)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from pydantic import PositiveInt

from gateway import Plugin, PluginConfig
from gateway.config_load import ConfigError, LoadedConfig, load_config, load_text
from gateway.registry import Registry

UPSTREAM = """
[upstreams.users]
targets = ["http://127.0.0.1:9001"]
"""

MINIMAL = UPSTREAM + """
[[routes]]
name = "users"
path = "/users/{id}"
upstream = "users"
"""


def load(text: str, env: dict[str, str] | None = None, registry: Registry | None = None) -> LoadedConfig:
    return load_text(textwrap.dedent(text), "routes.toml", env or {}, registry)


def problems(text: str, env: dict[str, str] | None = None, registry: Registry | None = None) -> dict[str, str]:
    """location -> the messages there, one a line (fails the test when the config loads)."""
    with pytest.raises(ConfigError) as caught:
        load(text, env, registry)
    found: dict[str, str] = {}
    for loc, msg in caught.value.problems:
        found[loc] = f"{found[loc]}\n{msg}" if loc in found else msg
    return found


def one_route(extra: str = "", plugins: str = "") -> str:
    return UPSTREAM + f"""
[[routes]]
name = "r"
path = "/r/{{id}}"
upstream = "users"
{extra}
{plugins}
"""


# --- valid configs --------------------------------------------------------------------------


def test_minimal_config_loads_with_defaults() -> None:
    loaded = load(MINIMAL)
    config = loaded.config
    assert [r.name for r in config.routes] == ["users"]
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
    loaded = load(
        """
        [gateway]
        timeout = "250ms"
        max_body_bytes = "1MiB"
        redis_url = "${REDIS_URL:-}"
        [upstreams.users]
        targets = ["http://${USERS_HOST}:9001"]
        timeout = { connect = "1s", response = "2m", idle = "1h" }
        [[plugins]]
        use = "request_id"
        [[routes]]
        name = "users"
        path = "/users/{id}"
        upstream = "users"
          [[routes.plugins]]
          use = "ip_filter"
          allow = ["10.0.0.0/8"]
          [[routes.plugins]]
          use = "headers"
          response = { set = { "Cache-Control" = "no-store" } }
        """,
        env={"USERS_HOST": "10.1.2.3"},
    )
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
        (one_route("", "[[routes.plugins]]\nuse = 'ip_filter'\nalow = ['10.0.0.0/8']"),
         "routes[0].plugins[0] (ip_filter).alow", "allow"),
        (one_route("", "[[routes.plugins]]\nuse = 'cors'\norigin = ['https://a.example']"),
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
        (one_route("", "[[routes.plugins]]\nuse = 'request_id'\n[[routes.plugins]]\nuse = 'ip_filter'\n"
                       "allow = ['10.0.0.0/33']"),
         "routes[0].plugins[1] (ip_filter).allow[0]",
         "must be an IP address or CIDR such as 10.0.0.0/8, got '10.0.0.0/33'"),
        (one_route("", "[[routes.plugins]]\nuse = 'headers'\nrequest = { set = { X-Tenant = 5 } }"),
         "routes[0].plugins[0] (headers).request.set.X-Tenant", "must be a string, got 5"),
        (one_route("", "[[routes.plugins]]\nuse = 'headers'\nresponse = { remove = 'Server' }"),
         "routes[0].plugins[0] (headers).response.remove", "must be an array"),
        (one_route("", "[[routes.plugins]]\nuse = 'cors'\nmax_age = 600"),
         "routes[0].plugins[0] (cors).max_age", "duration"),
        (one_route("", "[[routes.plugins]]\nuse = 'request_id'\ntrust_incoming = 'sometimes'"),
         "routes[0].plugins[0] (request_id).trust_incoming", "true or false"),
        ("[[plugins]]\nuse = 'ip_filter'\ndeny = ['300.1.1.1']\n", "plugins[0] (ip_filter).deny[0]", "CIDR"),
        (one_route("", "[[routes.plugins]]\nuse = 'ip_filtr'"),
         "routes[0].plugins[0].use", "unknown plugin 'ip_filtr'"),
        (one_route("", "[[routes.plugins]]\nuse = 'no_such_module_xyz:Plugin'"),
         "routes[0].plugins[0].use", "cannot import"),
        (one_route("", "[[routes.plugins]]\nallow = []"), "routes[0].plugins[0].use", "is required"),
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
    """A stand-in with an integer option, to check the SPEC's own example message."""

    name = "rate_limit"
    Config = LimitConfig


def test_spec_example_message_for_a_plugin_option() -> None:
    registry = Registry({**dict(Registry.discover().items()), "rate_limit": FakeRateLimit})
    routes = "".join(
        f"""
        [[routes]]
        name = "r{i}"
        path = "/r{i}"
        upstream = "users"
          [[routes.plugins]]
          use = "request_id"
          [[routes.plugins]]
          use = "rate_limit"
          limit = {limit}
        """
        for i, limit in enumerate([10, 10, -5])
    )
    with pytest.raises(ConfigError) as caught:
        load(UPSTREAM + textwrap.dedent(routes), registry=registry)
    assert caught.value.lines() == [
        "routes.toml: routes[2].plugins[1] (rate_limit).limit: must be a positive integer, got -5"
    ]


def test_missing_environment_variable_is_located() -> None:
    found = problems(
        """
        [upstreams.users]
        targets = ["http://127.0.0.1:9001"]
        [consumers.alice]
        api_keys = ["${ALICE_KEY}"]
        """
    )
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
    loaded = load(
        """
        [upstreams.users]
        targets = ["http://a:1", "http://b:1"]
        weights = [2, 1]
        [[routes]]
        name = "r"
        path = "/api/{rest:.*}"
        upstream = "users"
        rewrite = "/v1/{rest}"
        """
    )
    assert loaded.config.upstreams["users"].weights == [2, 1]
    assert loaded.config.routes[0].rewrite == "/v1/{rest}"


# --- several errors at once -----------------------------------------------------------------


def test_several_errors_are_reported_in_one_config_error() -> None:
    found = problems(
        """
        [gateway]
        workers = 0
        listen = "nope"
        [upstreams.users]
        targets = ["ftp://users"]
        [[routes]]
        name = "r"
        path = "/r"
        upstream = "users"
          [[routes.plugins]]
          use = "ip_filter"
          allow = ["not-a-cidr"]
        """
    )
    assert set(found) >= {
        "gateway.workers", "gateway.listen", "upstreams.users.targets[0]", "routes[0].plugins[0] (ip_filter).allow[0]",
    }


def test_several_cross_check_and_plugin_errors_at_once() -> None:
    found = problems(
        UPSTREAM
        + """
[[routes]]
name = "a"
path = "/a/{x}"
upstream = "nope"
rewrite = "/{y}"
  [[routes.plugins]]
  use = "headers"
  request = { set = { X = 1 } }
[[routes]]
name = "a"
path = "/b"
upstream = "users"
[consumers.alice]
api_keys = ["${ALICE_KEY}"]
"""
    )
    assert set(found) >= {
        "routes[0].upstream", "routes[0].rewrite", "routes[0].plugins[0] (headers).request.set.X",
        "routes[1].name", "consumers.alice.api_keys[0]",
    }


def test_toml_syntax_error_is_reported_with_its_line() -> None:
    with pytest.raises(ConfigError) as caught:
        load("[gateway]\nlisten = \n")
    [line] = caught.value.lines()
    assert line.startswith("routes.toml: not valid TOML:")
    assert "line 2" in line


def test_message_format_is_file_location_message() -> None:
    with pytest.raises(ConfigError) as caught:
        load_text("[gateway]\nworkers = -1\ndrain_timeout = 'soon'\n", "conf/gw.toml", {})
    error = caught.value
    assert error.lines() == [f"conf/gw.toml: {loc}: {msg}" for loc, msg in error.problems]
    assert "conf/gw.toml: gateway.workers: must be a positive integer, got -1" in error.lines()
    assert any(line.startswith("conf/gw.toml: gateway.drain_timeout: ") for line in error.lines())
    assert str(error) == "\n".join(error.lines())


def test_repo_routes_toml_is_valid() -> None:
    root = Path(__file__).resolve().parents[2]
    loaded = load_config(root / "routes.toml", env={})
    assert len(loaded.config.routes) >= 1


def test_shared_breaker_needs_a_redis_url() -> None:
    text = """
        [upstreams.u]
        targets = ["http://127.0.0.1:1"]
        breaker = { shared = true }
        [[routes]]
        name = "r"
        path = "/r"
        upstream = "u"
    """
    assert "needs gateway.redis_url" in problems(text)["upstreams.u.breaker.shared"]
    load('[gateway]\nredis_url = "redis://127.0.0.1:6379"\n' + textwrap.dedent(text))


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/a/../b", "has a '.' or '..' segment"),
        ("/a/./{rest:.*}", "has a '.' or '..' segment"),
        ("/a//b", "has an empty segment"),
    ],
)
def test_a_route_path_no_normalized_request_can_match_is_an_error(path: str, message: str) -> None:
    text = f"""
[upstreams.u]
targets = ["http://127.0.0.1:9"]
[[routes]]
name = "r"
path = "{path}"
upstream = "u"
"""
    with pytest.raises(ConfigError) as caught:
        load_text(text, env={})
    assert any(f"routes[0].path: {path!r} {message}" in line for line in caught.value.lines())


def test_route_paths_with_dots_in_names_and_a_trailing_slash_are_fine() -> None:
    text = """
[gateway]
merge_slashes = false
[upstreams.u]
targets = ["http://127.0.0.1:9"]
[[routes]]
name = "r"
path = "/v1.2/.well-known/{file:.*}/"
upstream = "u"
[[routes]]
name = "s"
path = "/a//b"
upstream = "u"
"""
    assert load_text(text, env={}).config.routes[1].path == "/a//b"
