"""The built-in plugins request_id, headers, cors and ip_filter, without a server (docs/plugins.md)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from gateway.errors import Unauthorized
from gateway.http import Request, Response
from gateway.testing import FakeUpstream, ValidationError, build_plugin, make_request, run_plugin
from plugins.cors import Cors
from plugins.headers import Headers
from plugins.ip_filter import IpFilter
from plugins.request_id import RequestId

GENERATED_ID = re.compile(r"^[0-9a-f]{32}$")

# --- request_id -------------------------------------------------------------------------------


async def test_request_id_keeps_a_sane_incoming_id() -> None:
    upstream = FakeUpstream()
    request = make_request(headers={"X-Request-ID": "abc-123.def:4@host/x+y=z"})
    await run_plugin(build_plugin(RequestId), request, upstream)
    seen = upstream.requests[0]
    assert seen.request_id == "abc-123.def:4@host/x+y=z"
    assert seen.request_id_header == "X-Request-ID"


async def test_request_id_reads_and_sends_a_custom_header() -> None:
    upstream = FakeUpstream()
    request = make_request(headers={"X-Trace-Id": "trace-1", "X-Request-ID": "other"})
    await run_plugin(build_plugin(RequestId, header="X-Trace-Id"), request, upstream)
    assert upstream.requests[0].request_id == "trace-1"
    assert upstream.requests[0].request_id_header == "X-Trace-Id"


async def test_request_id_makes_one_when_none_is_sent() -> None:
    upstream = FakeUpstream()
    request = make_request()
    before = request.request_id
    await run_plugin(build_plugin(RequestId, header="X-Trace-Id"), request, upstream)
    made = upstream.requests[0].request_id
    assert GENERATED_ID.match(made)
    assert made != before


async def test_request_id_ignores_incoming_ids_when_not_trusted() -> None:
    plugin = build_plugin(RequestId, trust_incoming=False)
    ids = []
    for _ in range(2):
        upstream = FakeUpstream()
        await run_plugin(plugin, make_request(headers={"X-Request-ID": "client-chosen"}), upstream)
        ids.append(upstream.requests[0].request_id)
    assert all(GENERATED_ID.match(i) for i in ids)
    assert ids[0] != ids[1]


@pytest.mark.parametrize(
    "insane",
    ["", "has space", "x" * 201, "<script>alert(1)</script>", "a\tb", "ünïcode", "semi;colon", "quote\"d"],
)
async def test_request_id_replaces_insane_ids(insane: str) -> None:
    upstream = FakeUpstream()
    await run_plugin(build_plugin(RequestId), make_request(headers={"X-Request-ID": insane}), upstream)
    assert GENERATED_ID.match(upstream.requests[0].request_id)


def test_request_id_rejects_unknown_options() -> None:
    with pytest.raises(ValidationError):
        build_plugin(RequestId, heder="X-Id")


# --- headers ----------------------------------------------------------------------------------


async def test_headers_sets_and_removes_request_headers_before_the_upstream() -> None:
    plugin = build_plugin(
        Headers, request={"set": {"X-Tenant": "acme", "accept": "application/json"}, "remove": ["Cookie", "x-debug"]}
    )
    upstream = FakeUpstream()
    request = make_request(headers={"Accept": "*/*", "Cookie": "s=1", "X-Debug": "1", "X-Keep": "k"})
    request.headers.add("X-Debug", "2")
    await run_plugin(plugin, request, upstream)
    seen = upstream.requests[0].headers
    assert seen["X-Tenant"] == "acme"
    assert seen.getall("Accept") == ["application/json"]  # replaced, not added
    assert "Cookie" not in seen and "X-Debug" not in seen  # every value removed
    assert seen["X-Keep"] == "k"


async def test_headers_sets_and_removes_response_headers() -> None:
    plugin = build_plugin(
        Headers, response={"set": {"Cache-Control": "no-store", "X-Frame-Options": "DENY"}, "remove": ["Server"]}
    )
    upstream = FakeUpstream(headers={"Server": "internal/1.2", "Cache-Control": "public", "Content-Type": "text/plain"})
    response = await run_plugin(plugin, make_request(), upstream)
    assert "Server" not in response.headers
    assert response.headers.getall("Cache-Control") == ["no-store"]
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Content-Type"] == "text/plain"
    assert "Cache-Control" not in upstream.requests[0].headers  # response changes stay on the response


async def test_headers_set_wins_over_remove_of_the_same_header() -> None:
    plugin = build_plugin(Headers, request={"set": {"X-Api": "v2"}, "remove": ["X-Api"]})
    upstream = FakeUpstream()
    await run_plugin(plugin, make_request(headers={"X-Api": "v1"}), upstream)
    assert upstream.requests[0].headers.getall("X-Api") == ["v2"]


async def test_headers_without_response_changes_leaves_the_response_alone() -> None:
    upstream = FakeUpstream(headers={"Server": "s"})
    response = await run_plugin(build_plugin(Headers, request={"set": {"X": "1"}}), make_request(), upstream)
    assert dict(response.headers) == {"Server": "s"}


@pytest.mark.parametrize(
    "options",
    [
        {"request": {"set": {"X": 5}}},
        {"request": {"set": ["X"]}},
        {"response": {"remove": "Server"}},
        {"response": {"add": {"X": "1"}}},
        {"requests": {}},
    ],
)
def test_headers_bad_options_fail_at_build(options: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        build_plugin(Headers, **options)


# --- cors -------------------------------------------------------------------------------------

ORIGIN = "https://app.example.com"


def preflight(origin: str = ORIGIN, method: str = "PUT", request_headers: str | None = None) -> Request:
    headers = {"Origin": origin, "Access-Control-Request-Method": method}
    if request_headers is not None:
        headers["Access-Control-Request-Headers"] = request_headers
    return make_request("OPTIONS", "/api", headers=headers)


async def test_cors_answers_preflight_itself() -> None:
    plugin = build_plugin(
        Cors, origins=[ORIGIN], methods=["GET", "put"], headers=["Content-Type", "X-Api-Key"], max_age="10m"
    )
    upstream = FakeUpstream()
    response = await run_plugin(plugin, preflight(request_headers="content-type"), upstream)
    assert upstream.requests == []
    assert response.status == 204
    assert response.body == b""
    h = response.headers
    assert h["Access-Control-Allow-Origin"] == ORIGIN
    assert h["Access-Control-Allow-Methods"] == "GET, PUT"
    assert h["Access-Control-Allow-Headers"] == "Content-Type, X-Api-Key"
    assert h["Access-Control-Max-Age"] == "600"
    assert "Access-Control-Allow-Credentials" not in h
    assert "Origin" in h["Vary"]


async def test_cors_preflight_echoes_requested_headers_when_none_are_configured() -> None:
    plugin = build_plugin(Cors)
    response = await run_plugin(plugin, preflight(request_headers="X-Custom, Content-Type"), FakeUpstream())
    assert response.status == 204
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert response.headers["Access-Control-Allow-Headers"] == "X-Custom, Content-Type"
    assert "Access-Control-Max-Age" not in response.headers


@pytest.mark.parametrize(
    ("origin", "method"),
    [
        ("https://evil.example.net", "GET"),  # origin not allowed
        ("https://app.example.com.evil.net", "GET"),
        ("http://app.example.com", "GET"),  # scheme matters
        (ORIGIN, "DELETE"),  # method not allowed
    ],
)
async def test_cors_refuses_disallowed_preflight_with_403(origin: str, method: str) -> None:
    plugin = build_plugin(Cors, origins=[ORIGIN], methods=["GET", "PUT"])
    upstream = FakeUpstream()
    response = await run_plugin(plugin, preflight(origin, method), upstream)
    assert response.status == 403
    assert response.headers["Content-Type"] == "application/problem+json"
    assert "Access-Control-Allow-Origin" not in response.headers
    assert upstream.requests == []


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("https://app.example.com", True),
        ("https://api.example.com", True),
        ("https://example.com", False),
        ("https://a.b.example.com", False),  # one label only
        ("https://appexample.com", False),
        ("https://evil.com/.example.com", False),
        ("https://app.example.com.evil.net", False),
        ("http://app.example.com", False),
        ("https://partner.test", True),
    ],
)
async def test_cors_wildcard_subdomain_origins(origin: str, allowed: bool) -> None:
    plugin = build_plugin(Cors, origins=["https://*.example.com", "https://partner.test"])
    response = await run_plugin(plugin, preflight(origin, "GET"), FakeUpstream())
    assert response.status == (204 if allowed else 403)
    actual = await run_plugin(plugin, make_request(headers={"Origin": origin}), FakeUpstream())
    assert actual.status == 200
    assert actual.headers.get("Access-Control-Allow-Origin") == (origin if allowed else None)


async def test_cors_actual_request_gets_headers_and_reaches_upstream() -> None:
    plugin = build_plugin(Cors, origins=[ORIGIN], expose_headers=["X-Total"])
    upstream = FakeUpstream(body=b"data", headers={"Vary": "Accept-Encoding"})
    response = await run_plugin(plugin, make_request("POST", headers={"Origin": ORIGIN}), upstream)
    assert len(upstream.requests) == 1
    assert response.body == b"data"
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert response.headers["Access-Control-Expose-Headers"] == "X-Total"
    assert "Access-Control-Allow-Credentials" not in response.headers
    assert set(response.headers.getall("Vary")) == {"Accept-Encoding", "Origin"}


async def test_cors_with_credentials_echoes_the_origin_and_varies() -> None:
    plugin = build_plugin(Cors, credentials=True)  # origins default to "*"
    response = await run_plugin(plugin, make_request(headers={"Origin": ORIGIN}), FakeUpstream())
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert response.headers["Access-Control-Allow-Credentials"] == "true"
    assert "Origin" in response.headers.getall("Vary")
    answer = await run_plugin(plugin, preflight(), FakeUpstream())
    assert answer.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert answer.headers["Access-Control-Allow-Credentials"] == "true"


async def test_cors_any_origin_without_credentials_is_a_star_without_vary() -> None:
    response = await run_plugin(build_plugin(Cors), make_request(headers={"Origin": ORIGIN}), FakeUpstream())
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "Vary" not in response.headers


async def test_cors_leaves_non_cors_requests_untouched() -> None:
    plugin = build_plugin(Cors, origins=[ORIGIN], credentials=True)
    upstream = FakeUpstream(headers={"Content-Type": "text/plain"})
    # an OPTIONS without Origin is not a preflight either: it goes upstream
    for request in (make_request(), make_request("OPTIONS", headers={"Access-Control-Request-Method": "GET"})):
        response = await run_plugin(plugin, request, upstream)
        assert response.status == 200
        assert dict(response.headers) == {"Content-Type": "text/plain"}
    assert len(upstream.requests) == 2


async def test_cors_options_with_origin_but_no_requested_method_goes_upstream() -> None:
    upstream = FakeUpstream()
    response = await run_plugin(build_plugin(Cors), make_request("OPTIONS", headers={"Origin": ORIGIN}), upstream)
    assert len(upstream.requests) == 1
    assert response.headers["Access-Control-Allow-Origin"] == "*"


async def test_cors_headers_are_on_errors_from_the_rest_of_the_chain() -> None:
    # A browser app must be able to read a 401 from an auth plugin placed after cors
    # (Kong and Envoy add CORS headers to such answers too).
    async def auth_refuses(_: Request) -> Response:
        raise Unauthorized("missing API key", headers={"WWW-Authenticate": "ApiKey"})

    plugin = build_plugin(Cors, origins=[ORIGIN], credentials=True)
    response = await run_plugin(plugin, make_request(headers={"Origin": ORIGIN}), auth_refuses)
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == "ApiKey"
    assert response.headers.get("Access-Control-Allow-Origin") == ORIGIN
    assert response.headers.get("Access-Control-Allow-Credentials") == "true"


# --- ip_filter --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "client", "allowed"),
    [
        ({"allow": ["10.0.0.0/8"]}, "10.1.2.3", True),
        ({"allow": ["10.0.0.0/8"]}, "192.168.0.1", False),
        ({"allow": ["10.0.0.0/8", "192.168.0.0/16"]}, "192.168.0.1", True),
        ({"allow": ["203.0.113.7"]}, "203.0.113.7", True),  # a bare address is a /32
        ({"allow": ["203.0.113.7"]}, "203.0.113.8", False),
        ({"deny": ["203.0.113.0/24"]}, "203.0.113.9", False),
        ({"deny": ["203.0.113.0/24"]}, "198.51.100.1", True),
        # deny wins over allow
        ({"allow": ["10.0.0.0/8"], "deny": ["10.0.0.5/32"]}, "10.0.0.5", False),
        ({"allow": ["10.0.0.0/8"], "deny": ["10.0.0.5/32"]}, "10.0.0.6", True),
        ({"allow": ["10.0.0.0/8"], "deny": ["10.0.0.5/32"]}, "172.16.0.1", False),
        # IPv6 and IPv4-mapped addresses
        ({"allow": ["2001:db8::/32"]}, "2001:db8::1", True),
        ({"allow": ["2001:db8::/32"]}, "2001:db9::1", False),
        ({"allow": ["10.0.0.0/8"]}, "::ffff:10.0.0.1", True),
        ({"deny": ["10.0.0.0/8"]}, "::ffff:10.0.0.1", False),
        # an address that cannot be parsed is never on an allow list
        ({"allow": ["10.0.0.0/8"]}, "unknown", False),
    ],
)
async def test_ip_filter(options: dict[str, Any], client: str, allowed: bool) -> None:
    upstream = FakeUpstream()
    response = await run_plugin(build_plugin(IpFilter, **options), make_request(client_ip=client), upstream)
    if allowed:
        assert response.status == 200
        assert len(upstream.requests) == 1
    else:
        assert response.status == 403
        assert response.headers["Content-Type"] == "application/problem+json"
        assert upstream.requests == []


async def test_ip_filter_uses_the_client_ip_not_the_peer() -> None:
    plugin = build_plugin(IpFilter, deny=["1.2.3.4"])
    request = make_request(client_ip="1.2.3.4")
    request.peer = "10.0.0.1"  # a trusted proxy in front
    assert (await run_plugin(plugin, request, FakeUpstream())).status == 403


@pytest.mark.parametrize("options", [{}, {"allow": [], "deny": []}])
def test_ip_filter_without_lists_fails_at_build(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="allow") as caught:
        build_plugin(IpFilter, **options)
    assert not isinstance(caught.value, ValidationError)  # raised by the plugin, not by its schema


@pytest.mark.parametrize("options", [{"allow": ["10.0.0.0/33"]}, {"deny": ["nope"]}, {"allow": "10.0.0.0/8"}])
def test_ip_filter_bad_cidr_fails_validation(options: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        build_plugin(IpFilter, **options)
