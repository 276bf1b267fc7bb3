"""Host games and the methods a route answers only when it names them."""

from __future__ import annotations

import pytest

from tests.security.recorder import Front, Recorder, assert_outcome, assert_refused, assert_upstream_clean
from tests.support.auth import route

# A Host the gateway refuses (400) or forwards as X-Forwarded-Host (200).
HOSTS = [
    pytest.param("evil/../private", 400, id="path-in-host"),
    pytest.param("example.com:99999", 400, id="port-out-of-range"),
    pytest.param("..", 400, id="dotdot"),
    pytest.param(".evil", 400, id="leading-dot"),
    pytest.param("a..b", 400, id="empty-label"),
    pytest.param("a@b", 400, id="userinfo"),
    pytest.param("h:80@evil", 400, id="port-then-userinfo"),
    pytest.param("evil\\..\\private", 400, id="backslashes"),
    pytest.param("", 400, id="empty"),
    pytest.param("[::1]:8080", 200, id="ipv6-literal-port"),
    pytest.param("[::1]", 200, id="ipv6-literal"),
    pytest.param("127.0.0.1:8080", 200, id="ipv4-port"),
    pytest.param("gw.example.", 200, id="trailing-dot-fqdn"),
    pytest.param("GW.Example", 200, id="mixed-case"),
]


@pytest.mark.parametrize(("host", "status"), HOSTS)
async def test_host_is_refused_or_forwarded(host: str, status: int, front: Front, recorder: Recorder) -> None:
    response = await front.send("/public/x", host=host)
    assert_outcome(response, recorder, status, ["/public/x"] if status == 200 else [])
    if status == 200:
        assert recorder.requests[0].all("X-Forwarded-Host") == [host]


# Requests as written on the wire: refused (by the gateway or already by the HTTP parser, so not
# always as a problem document), or served.
RAW_REQUESTS = [
    pytest.param(b"GET /public/x HTTP/1.1\r\nHost: a b\r\n\r\n", 400, id="space-in-host"),
    pytest.param(b"GET /public/x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, id="two-hosts"),
    pytest.param(b"GET /public/x HTTP/1.1\r\n\r\n", 400, id="no-host-http11"),
    pytest.param(b"GET http://evil.example:99999/public/x HTTP/1.1\r\nHost: gw\r\n\r\n", 400,
                 id="absolute-form-port-out-of-range"),
    pytest.param(b"GET http://user@h/public/x HTTP/1.1\r\nHost: gw\r\n\r\n", 400, id="absolute-form-userinfo"),
    pytest.param(b"GET http://evil..com/public/x HTTP/1.1\r\nHost: gw\r\n\r\n", 400, id="absolute-form-empty-label"),
    pytest.param(b"GET /public/x HTTP/1.0\r\n\r\n", 200, id="http10-without-host"),
]


@pytest.mark.parametrize(("request_bytes", "status"), RAW_REQUESTS)
async def test_host_of_a_raw_request(request_bytes: bytes, status: int, front: Front, recorder: Recorder) -> None:
    response = await front.exchange(request_bytes)
    assert response.status == status
    assert recorder.targets == (["/public/x"] if status == 200 else [])
    assert_upstream_clean(recorder)


async def test_absolute_form_authority_is_the_host(front: Front, recorder: Recorder) -> None:
    response = await front.send("http://api.example/public/x", host="gw.example")
    assert_outcome(response, recorder, 200, ["/public/x"])
    assert recorder.requests[0].all("X-Forwarded-Host") == ["api.example"]


# --- TRACE and CONNECT --------------------------------------------------------------------


def _assert_405(allow: str | None) -> None:
    assert allow is not None
    methods = {m.strip() for m in allow.split(",")}
    assert "GET" in methods
    assert not methods & {"TRACE", "CONNECT"}


@pytest.mark.parametrize(
    ("method", "target", "host"),
    [
        pytest.param("TRACE", "/public/x", "gw.example", id="trace-public"),
        pytest.param("TRACE", "/private/x", "gw.example", id="trace-private"),
        pytest.param("TRACE", "/nowhere", "gw.example", id="trace-unrouted"),
        pytest.param("CONNECT", "/public/x", "gw.example", id="connect-origin-form"),
        pytest.param("CONNECT", "example.com:443", "example.com:443", id="connect-authority-form"),
        pytest.param("CONNECT", "127.0.0.1:22", "127.0.0.1:22", id="connect-local-port"),
    ],
)
async def test_trace_and_connect_are_405_without_a_route_naming_them(
    method: str, target: str, host: str, front: Front, recorder: Recorder
) -> None:
    await front.start(catch_all=True)
    response = await front.send(target, method=method, host=host)
    assert_refused(response, 405)
    _assert_405(response.get("Allow"))
    assert recorder.requests == []


TRACE_ROUTE = route("trace", "/trace/{tail:.*}", methods=["TRACE"])


@pytest.mark.parametrize(
    ("method", "target", "status"),
    [
        pytest.param("TRACE", "/trace/x", 200, id="trace-on-the-trace-route"),
        pytest.param("TRACE", "/public/x", 405, id="trace-other-route"),
        pytest.param("CONNECT", "/trace/x", 405, id="connect-on-trace-route"),
    ],
)
async def test_naming_trace_on_one_route_opens_that_route_and_nothing_else(
    method: str, target: str, status: int, front: Front, recorder: Recorder
) -> None:
    await front.start(routes=TRACE_ROUTE)
    response = await front.send(target, method=method)
    if status == 200:
        assert_outcome(response, recorder, 200, [target])
        assert [r.request_line for r in recorder.requests] == [f"TRACE {target} HTTP/1.1"]
    else:
        assert_refused(response, 405)
        assert response.get("Allow") is not None
        assert recorder.requests == []
