"""Host games and the methods a route answers only when it names them."""

from __future__ import annotations

import pytest

from tests.conftest import StartGateway
from tests.security.recorder import Recorder, assert_refused, assert_upstream_clean, config, is_problem, send
from tests.support import raw_exchange


@pytest.mark.parametrize(
    "host",
    [
        pytest.param("evil/../private", id="path-in-host"),
        pytest.param("example.com:99999", id="port-out-of-range"),
        pytest.param("..", id="dotdot"),
        pytest.param(".evil", id="leading-dot"),
        pytest.param("a..b", id="empty-label"),
        pytest.param("a@b", id="userinfo"),
        pytest.param("h:80@evil", id="port-then-userinfo"),
        pytest.param("evil\\..\\private", id="backslashes"),
        pytest.param("", id="empty"),
    ],
)
async def test_invalid_host_is_refused(host: str, gateway: StartGateway, recorder: Recorder) -> None:
    gw = await gateway(config(recorder.url))
    response = await send(gw.port, "/public/x", host=host)
    assert_refused(response, 400)
    assert recorder.requests == []


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(b"GET /public/x HTTP/1.1\r\nHost: a b\r\n\r\n", id="space-in-host"),
        pytest.param(b"GET /public/x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", id="two-hosts"),
        pytest.param(b"GET /public/x HTTP/1.1\r\n\r\n", id="no-host-http11"),
        pytest.param(b"GET http://evil.example:99999/public/x HTTP/1.1\r\nHost: gw\r\n\r\n",
                     id="absolute-form-port-out-of-range"),
        pytest.param(b"GET http://user@h/public/x HTTP/1.1\r\nHost: gw\r\n\r\n", id="absolute-form-userinfo"),
        pytest.param(b"GET http://evil..com/public/x HTTP/1.1\r\nHost: gw\r\n\r\n", id="absolute-form-empty-label"),
    ],
)
async def test_host_refused_by_the_gateway_or_the_parser(
    request_bytes: bytes, gateway: StartGateway, recorder: Recorder
) -> None:
    gw = await gateway(config(recorder.url))
    response = await raw_exchange(gw.port, request_bytes)
    assert response.status == 400
    assert recorder.requests == []


@pytest.mark.parametrize(
    "host",
    [
        pytest.param("[::1]:8080", id="ipv6-literal-port"),
        pytest.param("[::1]", id="ipv6-literal"),
        pytest.param("127.0.0.1:8080", id="ipv4-port"),
        pytest.param("gw.example.", id="trailing-dot-fqdn"),
        pytest.param("GW.Example", id="mixed-case"),
    ],
)
async def test_valid_host_is_accepted(host: str, gateway: StartGateway, recorder: Recorder) -> None:
    gw = await gateway(config(recorder.url))
    response = await send(gw.port, "/public/x", host=host)
    assert response.status == 200
    assert recorder.targets == ["/public/x"]
    assert recorder.requests[0].all("X-Forwarded-Host") == [host]
    assert_upstream_clean(recorder)


async def test_http10_without_host_is_served(gateway: StartGateway, recorder: Recorder) -> None:
    gw = await gateway(config(recorder.url))
    response = await raw_exchange(gw.port, b"GET /public/x HTTP/1.0\r\n\r\n")
    assert response.status == 200
    assert recorder.targets == ["/public/x"]
    assert_upstream_clean(recorder)


async def test_absolute_form_authority_is_the_host(gateway: StartGateway, recorder: Recorder) -> None:
    gw = await gateway(config(recorder.url))
    response = await send(gw.port, "http://api.example/public/x", host="gw.example")
    assert response.status == 200
    assert recorder.targets == ["/public/x"]
    assert recorder.requests[0].all("X-Forwarded-Host") == ["api.example"]
    assert_upstream_clean(recorder)


# --- TRACE and CONNECT --------------------------------------------------------------------


def _assert_405(allow: str | None) -> None:
    assert allow is not None
    methods = {m.strip() for m in allow.split(",")}
    assert "GET" in methods
    assert not methods & {"TRACE", "CONNECT"}


@pytest.mark.parametrize(
    ("method", "target"),
    [
        pytest.param("TRACE", "/public/x", id="trace-public"),
        pytest.param("TRACE", "/private/x", id="trace-private"),
        pytest.param("TRACE", "/nowhere", id="trace-unrouted"),
        pytest.param("CONNECT", "/public/x", id="connect-origin-form"),
        pytest.param("CONNECT", "example.com:443", id="connect-authority-form"),
        pytest.param("CONNECT", "127.0.0.1:22", id="connect-local-port"),
    ],
)
async def test_trace_and_connect_are_405_without_a_route_naming_them(
    method: str, target: str, gateway: StartGateway, recorder: Recorder
) -> None:
    gw = await gateway(config(recorder.url, catch_all=True))
    host = target if method == "CONNECT" and not target.startswith("/") else "gw.example"
    response = await send(gw.port, target, method=method, host=host)
    assert_refused(response, 405)
    _assert_405(response.get("Allow"))
    assert recorder.requests == []


TRACE_ROUTE = '[[routes]]\nname = "trace"\npath = "/trace/{tail:.*}"\nupstream = "files"\nmethods = ["TRACE"]\n'


async def test_a_route_naming_trace_receives_it(gateway: StartGateway, recorder: Recorder) -> None:
    gw = await gateway(config(recorder.url, routes=TRACE_ROUTE))
    response = await send(gw.port, "/trace/x", method="TRACE")
    assert response.status == 200
    assert [r.request_line for r in recorder.requests] == ["TRACE /trace/x HTTP/1.1"]
    assert_upstream_clean(recorder)


@pytest.mark.parametrize(
    ("method", "target"),
    [
        pytest.param("TRACE", "/public/x", id="trace-other-route"),
        pytest.param("CONNECT", "/trace/x", id="connect-on-trace-route"),
    ],
)
async def test_naming_trace_on_one_route_opens_nothing_else(
    method: str, target: str, gateway: StartGateway, recorder: Recorder
) -> None:
    gw = await gateway(config(recorder.url, routes=TRACE_ROUTE))
    response = await send(gw.port, target, method=method)
    assert response.status == 405
    assert is_problem(response)
    assert response.get("Allow") is not None
    assert recorder.requests == []
