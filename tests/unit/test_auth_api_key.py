"""The ``api_key`` plugin without a server: where keys are read, what is forwarded, what a
refused client sees, and what is counted."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.config_model import ConsumerConfig
from gateway.http import Response
from gateway.metrics import Metrics
from gateway.testing import FakeUpstream, ValidationError, build_plugin, make_request, run_plugin
from plugins.api_key import ApiKey, without_query_param

CONSUMERS = {
    "alice": ConsumerConfig(api_keys=["alice-key-1", "alice-key-2"]),
    "bob": ConsumerConfig(api_keys=["bob-key"]),
    "carol": ConsumerConfig(jwt_subjects=["carol@example.com"]),
}


def plugin(metrics: Metrics | None = None, route: str | None = "test", **options: Any) -> ApiKey:
    return build_plugin(ApiKey, consumers=CONSUMERS, metrics=metrics, route=route, **options)


def failures(metrics: Metrics, reason: str, route: str = "test") -> float | None:
    return metrics.registry.get_sample_value(
        "gateway_auth_failures_total", {"route": route, "plugin": "api_key", "reason": reason}
    )


def assert_refused(response: Response, upstream: FakeUpstream, detail: str) -> None:
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == 'Key realm="gateway"'
    assert response.headers["Content-Type"] == "application/problem+json"
    problem = json.loads(response.body)
    assert problem["status"] == 401
    assert problem["title"] == "Unauthorized"
    assert problem["detail"] == detail
    assert problem["route"] == "test"
    assert upstream.requests == []


async def test_missing_key_is_refused_and_counted_as_missing() -> None:
    metrics = Metrics()
    upstream = FakeUpstream()
    response = await run_plugin(plugin(metrics), make_request(), upstream)
    assert_refused(response, upstream, "an API key is required")
    assert failures(metrics, "missing") == 1
    assert failures(metrics, "invalid") == 0


async def test_empty_key_counts_as_missing() -> None:
    metrics = Metrics()
    upstream = FakeUpstream()
    response = await run_plugin(plugin(metrics), make_request(headers={"X-API-Key": ""}), upstream)
    assert_refused(response, upstream, "an API key is required")
    assert failures(metrics, "missing") == 1


async def test_unknown_key_is_refused_and_counted_as_invalid() -> None:
    metrics = Metrics()
    upstream = FakeUpstream()
    for key in ("nope", "alice-key-1 ", "ALICE-KEY-1", "alice-key-"):
        response = await run_plugin(plugin(metrics), make_request(headers={"X-API-Key": key}), upstream)
        assert_refused(response, upstream, "the API key is not valid")
    assert failures(metrics, "invalid") == 4
    assert failures(metrics, "missing") == 0
    assert failures(metrics, "expired") == 0


async def test_each_key_identifies_its_consumer_and_is_not_forwarded() -> None:
    auth = plugin()
    for key, consumer in (("alice-key-1", "alice"), ("alice-key-2", "alice"), ("bob-key", "bob")):
        upstream = FakeUpstream(body=b"ok")
        request = make_request(headers={"X-API-Key": key, "Accept": "text/plain"})
        response = await run_plugin(auth, request, upstream)
        assert response.status == 200
        seen = upstream.requests[0]
        assert seen.consumer == consumer
        assert "X-API-Key" not in seen.headers
        assert seen.headers["Accept"] == "text/plain"


async def test_hide_credentials_false_forwards_the_key() -> None:
    upstream = FakeUpstream()
    request = make_request(headers={"X-API-Key": "bob-key"})
    response = await run_plugin(plugin(hide_credentials=False), request, upstream)
    assert response.status == 200
    assert upstream.requests[0].headers["X-API-Key"] == "bob-key"


async def test_custom_header_name() -> None:
    auth = plugin(header="Authorization-Key")
    upstream = FakeUpstream()
    assert (await run_plugin(auth, make_request(headers={"X-API-Key": "bob-key"}), upstream)).status == 401
    response = await run_plugin(auth, make_request(headers={"authorization-key": "bob-key"}), upstream)
    assert response.status == 200
    assert upstream.requests[0].consumer == "bob"


async def test_key_in_query_parameter_is_removed_before_forwarding() -> None:
    upstream = FakeUpstream()
    request = make_request(query="a=1&apikey=bob-key&b=%20x%2F", headers={})
    response = await run_plugin(plugin(query="apikey"), request, upstream)
    assert response.status == 200
    seen = upstream.requests[0]
    assert seen.consumer == "bob"
    assert seen.query_string == "a=1&b=%20x%2F"


async def test_query_key_is_kept_when_hide_credentials_is_false() -> None:
    upstream = FakeUpstream()
    request = make_request(query="apikey=bob-key")
    await run_plugin(plugin(query="apikey", hide_credentials=False), request, upstream)
    assert upstream.requests[0].query_string == "apikey=bob-key"


async def test_header_is_read_before_the_query_and_both_are_hidden() -> None:
    upstream = FakeUpstream()
    request = make_request(query="apikey=nope&x=1", headers={"X-API-Key": "alice-key-1"})
    response = await run_plugin(plugin(query="apikey"), request, upstream)
    assert response.status == 200
    seen = upstream.requests[0]
    assert seen.consumer == "alice"
    assert seen.query_string == "x=1"
    assert "X-API-Key" not in seen.headers


async def test_query_only_ignores_the_header() -> None:
    auth = plugin(header="", query="key")
    upstream = FakeUpstream()
    assert (await run_plugin(auth, make_request(headers={"X-API-Key": "bob-key"}), upstream)).status == 401
    assert (await run_plugin(auth, make_request(query="key=bob-key"), upstream)).status == 200


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("apikey=k", ""),
        ("a=1&apikey=k&apikey=j&b=2", "a=1&b=2"),
        ("api%6Bey=k&a=%2B", "a=%2B"),
        ("apikeyx=1&xapikey=2", "apikeyx=1&xapikey=2"),
        ("flag&apikey", "flag"),
    ],
)
def test_without_query_param(query: str, expected: str) -> None:
    assert without_query_param(query, "apikey") == expected


async def test_failure_children_are_bound_per_route_at_zero() -> None:
    metrics = Metrics()
    plugin(metrics, route="users")
    for reason in ("missing", "invalid", "expired"):
        assert failures(metrics, reason, route="users") == 0


async def test_global_plugin_counts_under_the_requests_route() -> None:
    metrics = Metrics()
    auth = plugin(metrics, route=None)
    await run_plugin(auth, make_request(route="orders"))
    await run_plugin(auth, make_request(route="orders", headers={"X-API-Key": "x"}))
    await run_plugin(auth, make_request(route="users"))
    assert failures(metrics, "missing", route="orders") == 1
    assert failures(metrics, "invalid", route="orders") == 1
    assert failures(metrics, "missing", route="users") == 1


async def test_realm_is_configurable() -> None:
    response = await run_plugin(plugin(realm="internal api"), make_request())
    assert response.headers["WWW-Authenticate"] == 'Key realm="internal api"'


def test_needs_a_place_to_look() -> None:
    with pytest.raises(ValueError, match="needs `header` or `query`"):
        plugin(header="")


def test_needs_a_consumer_with_keys() -> None:
    with pytest.raises(ValueError, match="no consumer has `api_keys`"):
        build_plugin(ApiKey, consumers={"carol": ConsumerConfig(jwt_subjects=["c"])})


@pytest.mark.parametrize(
    "options",
    [{"headr": "X-Key"}, {"header": "Bad Header"}, {"query": "a&b"}, {"realm": 'say "hi"'},
     {"hide_credentials": "yes"}],
)
def test_bad_options_are_rejected(options: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        plugin(**options)
