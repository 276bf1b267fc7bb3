"""Tests of the greeting plugin, without a server: gateway.testing builds the plugin from
its options, makes requests, and stands in for the upstream."""

from __future__ import annotations

from typing import Any

import pytest
from gateway_plugin_greeting import Greeting

from gateway import Request, Response, UpstreamError
from gateway.config_load import ConfigError, load_text
from gateway.registry import Registry
from gateway.testing import FakeUpstream, ValidationError, build_plugin, make_request, run_plugin


async def test_upstream_receives_the_default_greeting() -> None:
    upstream = FakeUpstream(body=b"ok")
    response = await run_plugin(build_plugin(Greeting), make_request("GET", "/x"), upstream)
    assert response.status == 200
    assert response.body == b"ok"
    assert upstream.requests[0].headers["X-Greeting"] == "hello"
    assert "X-Greeting" not in response.headers


async def test_configured_greeting_goes_upstream_and_back_to_the_client() -> None:
    plugin = build_plugin(Greeting, greeting="good morning", header="X-Hello", response_header="X-Greeted")
    upstream = FakeUpstream(headers={"Content-Type": "text/plain"})
    response = await run_plugin(plugin, make_request(), upstream)
    assert upstream.requests[0].headers["X-Hello"] == "good morning"
    assert "X-Greeting" not in upstream.requests[0].headers
    assert response.headers["X-Greeted"] == "good morning"
    assert response.headers["Content-Type"] == "text/plain"


async def test_client_greeting_is_replaced_by_default() -> None:
    upstream = FakeUpstream()
    request = make_request(headers={"X-Greeting": "spoofed"})
    await run_plugin(build_plugin(Greeting), request, upstream)
    assert upstream.requests[0].headers.getall("X-Greeting") == ["hello"]


async def test_client_greeting_is_kept_without_overwrite() -> None:
    upstream = FakeUpstream()
    request = make_request(headers={"X-Greeting": "hi from the client"})
    await run_plugin(build_plugin(Greeting, overwrite=False), request, upstream)
    assert upstream.requests[0].headers["X-Greeting"] == "hi from the client"


async def test_an_error_below_the_plugin_reaches_the_client_as_problem_json() -> None:
    async def failing(_: Request) -> Response:
        raise UpstreamError("could not connect to the upstream")

    plugin = build_plugin(Greeting, response_header="X-Greeted")
    response = await run_plugin(plugin, make_request(route="users"), failing)
    assert response.status == 502
    assert response.headers["Content-Type"] == "application/problem+json"
    assert b'"route": "users"' in response.body


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"greeting": ""}, "at least 1 character"),
        ({"greeting": "hi\r\nX-Admin: yes"}, "printable ASCII"),
        ({"header": "X Greeting"}, "must be an HTTP header name"),
        ({"header": "Host"}, "cannot be set here"),
        ({"response_header": "x-request-id"}, "cannot be set here"),
        ({"response_header": "x-greeting"}, "must differ from header"),
        ({"greting": "typo"}, "Extra inputs are not permitted"),
    ],
)
def test_bad_options_are_rejected(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        build_plugin(Greeting, **options)


def test_bad_options_in_routes_toml_name_their_location() -> None:
    toml = """
        [[routes]]
        name = "svc"
        path = "/svc"
        upstream = "svc"
        plugins = [{ use = "greeting", header = "Bad Header" }]

        [upstreams.svc]
        targets = ["http://127.0.0.1:9001"]
    """
    with pytest.raises(ConfigError) as caught:
        load_text(toml, "routes.toml", {}, Registry({"greeting": Greeting}))
    assert caught.value.lines() == [
        "routes.toml: routes[0].plugins[0] (greeting).header: "
        "must be an HTTP header name such as X-Greeting, got 'Bad Header'"
    ]


def test_installed_package_registers_the_entry_point() -> None:
    assert Registry.discover().resolve("greeting") is Greeting
