"""Proxying, headers: what the upstream receives and what the client gets back.

Where exactness matters (which headers a request carries, how a response is framed) the
client is a raw asyncio socket, because aiohttp's own client adds headers itself; where the
upstream must send what aiohttp's server would not, the upstream is a raw socket too.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from tests.conftest import StartGateway, StartUpstream, Upstream
from tests.support import (
    plugin_table,
    proxy_config,
    raw_connection,
    raw_exchange,
    raw_upstream,
    read_request_head,
    read_response,
    url,
)
from tests.support.edge import fetch, fetch_json, proxied, streaming

TRUSTED = 'trusted_proxies = ["127.0.0.1/32"]'


def received_headers(up: Upstream, index: int = -1) -> list[tuple[str, str]]:
    """The headers one recorded upstream request carried, in order, as sent on the wire."""
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in up.requests[index].raw_headers]


# --- what the upstream receives: nothing injected, no hop-by-hop headers ------------------------


HOP_REQUEST_HEADERS = (
    b"Connection: keep-alive, X-Named-Hop\r\n"
    b"X-Named-Hop: secret\r\n"
    b"Keep-Alive: timeout=5\r\n"
    b"TE: trailers\r\n"
    b"Trailer: X-Checksum\r\n"
    b"Upgrade: h2c\r\n"
    b"Proxy-Authorization: Basic Zm9vOmJhcg==\r\n"
    b"Proxy-Connection: keep-alive\r\n"
    b"Proxy-Custom: yes\r\n"
)
MINIMAL_HEADERS = ["host", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-request-id", "traceparent"]


@pytest.mark.parametrize("extra", [
    pytest.param(b"", id="minimal"),
    # hop-by-hop headers, named by Connection or not, never reach the upstream; others do
    pytest.param(HOP_REQUEST_HEADERS + b"X-Kept: yes\r\n", id="hop-by-hop"),
])
@pytest.mark.parametrize(("method", "body"), [
    pytest.param(b"GET", b"", id="get"),
    # a body brings its Content-Length, and no Content-Type or Content-Encoding of the gateway's
    pytest.param(b"POST", b"abc", id="post"),
])
async def test_the_upstream_gets_exactly_the_documented_headers_and_no_hop_by_hop_ones(
    extra: bytes, method: bytes, body: bytes, upstream: StartUpstream, gateway: StartGateway
) -> None:
    up, gw = await proxied(upstream, gateway)
    length = b"Content-Length: %d\r\n" % len(body) if body else b""
    head = method + b" /svc/min?q=1 HTTP/1.1\r\nHost: gw.example\r\n" + extra + length
    response = await raw_exchange(gw.port, head + b"\r\n" + body)
    assert response.status == 200
    headers = received_headers(up)
    expected = MINIMAL_HEADERS + (["content-length"] if body else []) + (["x-kept"] if extra else [])
    assert sorted(k.lower() for k, _ in headers) == sorted(expected), headers
    got = CIMultiDict(headers)
    assert got["Host"] == f"127.0.0.1:{up.server.port}"
    assert got["X-Forwarded-For"] == "127.0.0.1"
    assert got["X-Forwarded-Proto"] == "http"
    assert got["X-Forwarded-Host"] == "gw.example"
    assert got["X-Request-ID"] == response.get("X-Request-ID")
    assert got.get("Content-Length") == (str(len(body)) if body else None)
    assert got.get("X-Kept") == ("yes" if extra else None)
    assert up.bodies == [body]


# --- what the client gets back: no hop-by-hop headers --------------------------------------------


HOP_RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Connection: close, X-Named-Hop\r\n"
    b"X-Named-Hop: secret\r\n"
    b"Keep-Alive: timeout=5, max=100\r\n"
    b"Proxy-Authenticate: Basic realm=\"up\"\r\n"
    b"Proxy-Custom: yes\r\n"
    b"Upgrade: h2c\r\n"
    b"Trailer: X-Checksum\r\n"
    b"Transfer-Encoding: chunked\r\n"
    b"X-Kept: yes\r\n"
    b"\r\n"
    b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Checksum: abc\r\n\r\n"
)


async def _answer_once_and_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request_head(reader)
    writer.write(HOP_RESPONSE)
    await writer.drain()


async def test_hop_by_hop_response_headers_are_not_returned(gateway: StartGateway) -> None:
    async with raw_upstream(_answer_once_and_close) as target:
        gw = await gateway(proxy_config(target, rewrite="/{rest}", upstream=""))
        response = await raw_exchange(gw.port, b"GET /svc/x HTTP/1.1\r\nHost: gw.example\r\n\r\n")
    assert response.status == 200
    assert response.body == b"hello world"
    assert response.get("X-Kept") == "yes"
    assert response.names & {"x-named-hop", "keep-alive", "proxy-authenticate", "proxy-custom",
                             "upgrade", "trailer", "x-checksum"} == set()
    # The gateway may frame the body itself, but only its own single Transfer-Encoding.
    assert response.all("Transfer-Encoding") in ([], ["chunked"])
    assert "close" not in (response.get("Connection") or "").lower()
    # The upstream sent no Content-Type; none is invented on the way back.
    assert "content-type" not in response.names


async def test_upstream_connection_close_keeps_client_connection_open(gateway: StartGateway) -> None:
    async with raw_upstream(_answer_once_and_close) as target:
        gw = await gateway(proxy_config(target, rewrite="/{rest}", upstream=""))
        async with raw_connection(gw.port) as (reader, writer):
            for i in range(3):
                writer.write(f"GET /svc/{i} HTTP/1.1\r\nHost: gw.example\r\n\r\n".encode())
                await writer.drain()
                response = await read_response(reader)
                assert response.status == 200, i
                assert response.body == b"hello world"
                assert "close" not in (response.get("Connection") or "").lower()
            assert not reader.at_eof()


# --- client headers -----------------------------------------------------------------------


async def test_client_headers_pass_as_sent(upstream: StartUpstream, gateway: StartGateway) -> None:
    up, gw = await proxied(upstream, gateway)
    response = await raw_exchange(
        gw.port,
        b"GET /svc/h HTTP/1.1\r\nHost: gw.example\r\nAccept: text/csv\r\nUser-Agent: curl/8.0\r\n"
        b"Accept-Encoding: br\r\nX-Multi: one\r\nX-Multi: two\r\n\r\n",
    )
    assert response.status == 200
    got = CIMultiDict(received_headers(up))
    assert got["Accept"] == "text/csv"
    assert got["User-Agent"] == "curl/8.0"
    assert got["Accept-Encoding"] == "br"
    assert got.getall("X-Multi") == ["one", "two"]


# --- X-Forwarded-* ------------------------------------------------------------------------


SPOOFED = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "shop.example"}


@pytest.mark.parametrize(("settings", "sent", "expected"), [
    # without trusted_proxies nobody is trusted; the client's X-Forwarded-For is appended to, never dropped
    pytest.param("", {**SPOOFED, "Host": "gw.example"}, ("203.0.113.7, 127.0.0.1", "http", "gw.example"),
                 id="from-an-untrusted-peer-replaced"),
    pytest.param(TRUSTED, {**SPOOFED, "Host": "gw.example"}, ("203.0.113.7, 127.0.0.1", "https", "shop.example"),
                 id="from-a-trusted-peer-kept"),
    pytest.param(TRUSTED, {"Host": "gw.example:8443"}, ("127.0.0.1", "http", "gw.example:8443"),
                 id="set-when-the-client-sent-none"),
])
async def test_forwarded_headers(
    settings: str, sent: dict[str, str], expected: tuple[str, str, str],
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession,
) -> None:
    up, gw = await proxied(upstream, gateway, settings=settings)
    await fetch(http, gw, "/svc/f", headers=sent)
    got = up.requests[0].headers
    names = ("X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host")
    assert [got.getall(name) for name in names] == [[value] for value in expected]


# --- X-Request-ID ---------------------------------------------------------------------------


async def test_request_id_is_generated_and_returned(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    up, gw = await proxied(upstream, gateway)
    ids = [(await fetch(http, gw, "/svc/id"))[0]["X-Request-ID"] for _ in range(2)]
    assert [r.headers["X-Request-ID"] for r in up.requests] == ids
    assert ids[0] != ids[1]
    assert all(8 <= len(i) <= 200 for i in ids)


@pytest.mark.parametrize(("sent", "kept"), [
    pytest.param("req-42.abc", True, id="sane-kept"),
    pytest.param("<script>alert(1)</script>", False, id="markup-replaced"),
    pytest.param("x" * 1000, False, id="too-long-replaced"),
    pytest.param("has spaces in it", False, id="spaces-replaced"),
])
async def test_an_incoming_request_id_is_kept_only_when_sane(
    sent: str, kept: bool, upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    up, gw = await proxied(upstream, gateway)
    headers, _ = await fetch(http, gw, "/svc/id", headers={"X-Request-ID": sent})
    returned = headers["X-Request-ID"]
    assert (returned == sent) is kept
    assert up.requests[0].headers.getall("X-Request-ID") == [returned]


async def test_request_id_plugin_changes_the_header_name(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    up, gw = await proxied(upstream, gateway, after='[[plugins]]\nuse = "request_id"\nheader = "X-Trace-ID"')
    headers, _ = await fetch(http, gw, "/svc/id", headers={"X-Trace-ID": "trace-1"})
    assert headers["X-Trace-ID"] == "trace-1"
    assert up.requests[0].headers["X-Trace-ID"] == "trace-1"


# --- Host -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("route", "sent", "preserved"), [
    pytest.param("", "public.example", False, id="the-upstreams-by-default"),
    pytest.param("preserve_host = true", "public.example:8080", True, id="the-clients-with-preserve-host"),
])
async def test_host_sent_upstream(
    route: str, sent: str, preserved: bool, upstream: StartUpstream, gateway: StartGateway,
    http: aiohttp.ClientSession,
) -> None:
    up, gw = await proxied(upstream, gateway, route=route)
    await fetch(http, gw, "/svc/h", headers={"Host": sent})
    assert up.requests[0].headers.getall("Host") == [sent if preserved else f"127.0.0.1:{up.server.port}"]


# --- repeated headers, redirects, query strings, rewrite -----------------------------------------


async def test_repeated_set_cookie_headers_stay_separate_and_in_order(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    cookies = ["b=2; Path=/", "a=1; Expires=Wed, 21 Oct 2037 07:28:00 GMT", "c=3; HttpOnly"]

    async def handler(_: web.Request) -> web.StreamResponse:
        headers: CIMultiDict[str] = CIMultiDict()
        for cookie in cookies:
            headers.add("Set-Cookie", cookie)
        return web.Response(text="ok", headers=headers)

    _, gw = await proxied(upstream, gateway, handler)
    headers, _ = await fetch(http, gw, "/svc/c")
    assert headers.getall("Set-Cookie") == cookies


async def test_redirects_are_passed_through_not_followed(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path == "/start":
            return web.Response(status=302, headers={"Location": "/elsewhere?x=1"}, text="moved")
        return web.Response(text="followed!")

    up, gw = await proxied(upstream, gateway, handler)
    headers, body = await fetch(http, gw, "/svc/start", status=302, allow_redirects=False)
    assert headers["Location"] == "/elsewhere?x=1"
    assert body == b"moved"
    assert [r.path for r in up.requests] == ["/start"]


async def test_query_string_passes_through_unchanged(upstream: StartUpstream, gateway: StartGateway) -> None:
    up, gw = await proxied(upstream, gateway)
    query = b"a=1&b=%20two%2F&a=3&empty=&flag"
    response = await raw_exchange(gw.port, b"GET /svc/q?" + query + b" HTTP/1.1\r\nHost: gw\r\n\r\n")
    assert response.status == 200
    assert up.requests[0].raw_path == "/q?" + query.decode()


async def test_a_normal_encoded_path_passes_through_unchanged_without_rewrite(
    upstream: StartUpstream, gateway: StartGateway
) -> None:
    up, gw = await proxied(upstream, gateway, rewrite=None)
    response = await raw_exchange(gw.port, b"GET /svc/a%20b%3Ac;v=1 HTTP/1.1\r\nHost: gw\r\n\r\n")
    assert response.status == 200
    assert up.requests[0].raw_path == "/svc/a%20b%3Ac;v=1"


async def test_encoded_slashes_are_refused_unless_kept(upstream: StartUpstream, gateway: StartGateway) -> None:
    up, gw = await proxied(upstream, gateway, rewrite=None)
    response = await raw_exchange(gw.port, b"GET /svc/a%20b%2Fc;v=1 HTTP/1.1\r\nHost: gw\r\n\r\n")
    assert response.status == 400
    assert up.hits == 0
    kept = await gateway(proxy_config(up.url, upstream="", gateway='encoded_slashes = "keep"'))
    response = await raw_exchange(kept.port, b"GET /svc/a%20b%2fc;v=1 HTTP/1.1\r\nHost: gw\r\n\r\n")
    assert response.status == 200
    assert up.requests[0].raw_path == "/svc/a%20b%2Fc;v=1"


async def test_kept_encoded_slashes_stay_encoded_through_rewrite(
    upstream: StartUpstream, gateway: StartGateway
) -> None:
    up = await upstream()
    gw = await gateway(proxy_config(up.url, name="files", path="/files/{name}/{rest:.*}",
                                    rewrite="/store/{name}/{rest}", upstream="", gateway='encoded_slashes = "keep"'))
    response = await raw_exchange(gw.port, b"GET /files/a%2Fb/c/d%2Fe%25 HTTP/1.1\r\nHost: gw\r\n\r\n")
    assert response.status == 200
    assert up.requests[0].raw_path == "/store/a%2Fb/c/d%2Fe%25"
    response = await raw_exchange(gw.port, b"GET /files/x/..%2F..%2Fadmin HTTP/1.1\r\nHost: gw\r\n\r\n")
    assert response.status == 400
    assert up.hits == 1


async def test_rewrite_with_path_parameters(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    up = await upstream()
    gw = await gateway(proxy_config(up.url, name="items", path="/api/{user}/items/{rest:.*}",
                                    rewrite="/v2/users/{user}/{rest}", upstream=""))
    answer = await fetch_json(http, gw, "/api/42/items/a/b?page=2")
    assert answer == {"path": "/v2/users/42/a/b?page=2", "method": "GET"}
    assert up.requests[0].raw_path == "/v2/users/42/a/b?page=2"


# --- HTTP/1.0 and Expect: 100-continue -------------------------------------------------------------


async def test_http10_client_gets_a_non_chunked_response(
    upstream: StartUpstream, gateway: StartGateway
) -> None:
    payload = bytes(range(256)) * 1024  # 256 KiB, larger than any "small body" shortcut
    _, gw = await proxied(upstream, gateway, streaming(payload, 32 * 1024))  # the upstream sends it chunked
    response = await raw_exchange(gw.port, b"GET /svc/big HTTP/1.0\r\nHost: gw.example\r\n\r\n")
    assert response.status == 200
    assert response.version in ("HTTP/1.0", "HTTP/1.1")
    assert not response.chunked
    assert "transfer-encoding" not in response.names
    assert response.body == payload


async def test_expect_100_continue_upload(upstream: StartUpstream, gateway: StartGateway) -> None:
    body = b"0123456789" * 10_000
    up, gw = await proxied(upstream, gateway)
    async with raw_connection(gw.port) as (reader, writer):
        writer.write(
            b"POST /svc/upload HTTP/1.1\r\nHost: gw.example\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\nExpect: 100-continue\r\n\r\n"
        )
        await writer.drain()
        interim = await read_response(reader)
        assert interim.status == 100
        writer.write(body)
        await writer.drain()
        final = await read_response(reader)
    assert final.status == 200
    assert up.bodies == [body]
    got = up.requests[0].headers
    assert got["Content-Length"] == str(len(body))
    assert "Expect" not in got


async def test_client_cannot_spoof_consumer_headers(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    up, gw = await proxied(upstream, gateway)
    headers = {"X-Consumer": "admin", "x-consumer-id": "1", "X-Consumer-Groups": "root", "X-Consumers": "x"}
    await fetch(http, gw, "/svc/a", headers=headers)
    received = up.requests[0].headers
    assert not [k for k in received if k.lower().startswith("x-consumer")]


async def test_rewrite_refuses_dot_segments_from_encoded_slashes(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    up, gw = await proxied(upstream, gateway)
    for path in ("/svc/..%2F..%2Fadmin", "/svc/%2e%2e/%2e%2e/admin", "/svc/a/..%2fadmin"):
        async with http.get(URL(url(gw, path), encoded=True)) as response:
            assert response.status == 400, path
            assert response.headers["Content-Type"] == "application/problem+json"
    assert up.hits == 0
    await fetch(http, gw, "/svc/a/b.txt")
    assert up.requests[0].path == "/a/b.txt"


async def test_every_x_forwarded_for_line_counts(
    upstream: StartUpstream, gateway: StartGateway
) -> None:
    deny = plugin_table("ip_filter", deny='["203.0.113.0/24"]')
    up, gw = await proxied(upstream, gateway, settings=TRUSTED, after=deny)
    request = (b"GET /svc/a HTTP/1.1\r\nHost: gw\r\nX-Forwarded-For: 198.51.100.1\r\n"
               b"X-Forwarded-For: 203.0.113.9\r\n\r\n")
    response = await raw_exchange(gw.port, request)
    assert response.status == 403  # the proxy's own line names the client, not the first line
    ok = await raw_exchange(gw.port, request.replace(b"203.0.113.9", b"192.0.2.7"))
    assert ok.status == 200
    assert up.requests[-1].headers["X-Forwarded-For"] == "198.51.100.1, 192.0.2.7, 127.0.0.1"
