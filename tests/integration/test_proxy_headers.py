"""Proxying, headers: what the upstream receives and what the client gets back.

Where exactness matters (which headers a request carries, how a response is framed) the
client is a raw asyncio socket, because aiohttp's own client adds headers itself; where the
upstream must send what aiohttp's server would not, the upstream is a raw socket too.
"""

from __future__ import annotations

import asyncio
import textwrap

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from tests.conftest import StartGateway, StartUpstream, Upstream, url
from tests.support import (
    raw_connection,
    raw_exchange,
    raw_upstream,
    read_request_head,
    read_response,
)


def proxy_config(target: str, *, route_extra: str = "", gateway_extra: str = "") -> str:
    return f"""
        [gateway]
        {gateway_extra}
        [upstreams.svc]
        targets = ["{target}"]
        [[routes]]
        name = "svc"
        path = "/svc/{{rest:.*}}"
        upstream = "svc"
        rewrite = "/{{rest}}"
        {route_extra}
    """


def received_headers(up: Upstream, index: int = -1) -> list[tuple[str, str]]:
    """The headers one recorded upstream request carried, in order, as sent on the wire."""
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in up.requests[index].raw_headers]


# --- hop-by-hop headers ------------------------------------------------------------------


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


async def test_hop_by_hop_request_headers_are_not_forwarded(
    upstream: StartUpstream, gateway: StartGateway
) -> None:
    up = await upstream()
    gw = await gateway(proxy_config(up.url))
    response = await raw_exchange(
        gw.port,
        b"GET /svc/hop HTTP/1.1\r\nHost: gw.example\r\n" + HOP_REQUEST_HEADERS + b"X-Kept: yes\r\n\r\n",
    )
    assert response.status == 200
    names = {k.lower() for k, _ in received_headers(up)}
    hop = {"connection", "x-named-hop", "keep-alive", "te", "trailer", "upgrade",
           "proxy-authorization", "proxy-connection", "proxy-custom"}
    assert names & hop == set()
    assert up.requests[0].headers["X-Kept"] == "yes"


async def test_hop_by_hop_request_headers_are_not_forwarded_with_a_body(
    upstream: StartUpstream, gateway: StartGateway
) -> None:
    up = await upstream()
    gw = await gateway(proxy_config(up.url))
    response = await raw_exchange(
        gw.port,
        b"POST /svc/hop HTTP/1.1\r\nHost: gw.example\r\n" + HOP_REQUEST_HEADERS
        + b"Content-Length: 5\r\n\r\nhello",
    )
    assert response.status == 200
    names = {k.lower() for k, _ in received_headers(up)}
    assert names & {"connection", "x-named-hop", "keep-alive", "te", "trailer", "upgrade",
                    "proxy-authorization", "proxy-connection", "proxy-custom"} == set()
    assert up.bodies == [b"hello"]


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
        gw = await gateway(proxy_config(target))
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
        gw = await gateway(proxy_config(target))
        async with raw_connection(gw.port) as (reader, writer):
            for i in range(3):
                writer.write(f"GET /svc/{i} HTTP/1.1\r\nHost: gw.example\r\n\r\n".encode())
                await writer.drain()
                response = await read_response(reader)
                assert response.status == 200, i
                assert response.body == b"hello world"
                assert "close" not in (response.get("Connection") or "").lower()
            assert not reader.at_eof()


# --- nothing injected -------------------------------------------------------------------


async def test_minimal_get_reaches_upstream_with_exactly_the_documented_headers(
    upstream: StartUpstream, gateway: StartGateway
) -> None:
    up = await upstream()
    gw = await gateway(proxy_config(up.url))
    response = await raw_exchange(gw.port, b"GET /svc/min?q=1 HTTP/1.1\r\nHost: gw.example\r\n\r\n")
    assert response.status == 200
    headers = received_headers(up)
    assert sorted(k.lower() for k, _ in headers) == sorted(
        ["host", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-request-id"]
    ), headers
    got = CIMultiDict(headers)
    assert got["Host"] == f"127.0.0.1:{up.server.port}"
    assert got["X-Forwarded-For"] == "127.0.0.1"
    assert got["X-Forwarded-Proto"] == "http"
    assert got["X-Forwarded-Host"] == "gw.example"
    assert got["X-Request-ID"] == response.get("X-Request-ID")


async def test_minimal_post_gets_no_injected_content_type_or_encoding(
    upstream: StartUpstream, gateway: StartGateway
) -> None:
    up = await upstream()
    gw = await gateway(proxy_config(up.url))
    response = await raw_exchange(
        gw.port, b"POST /svc/min HTTP/1.1\r\nHost: gw.example\r\nContent-Length: 3\r\n\r\nabc"
    )
    assert response.status == 200
    headers = received_headers(up)
    assert sorted(k.lower() for k, _ in headers) == sorted(
        ["host", "content-length", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-request-id"]
    ), headers
    assert CIMultiDict(headers)["Content-Length"] == "3"
    assert up.bodies == [b"abc"]


async def test_client_headers_pass_as_sent(upstream: StartUpstream, gateway: StartGateway) -> None:
    up = await upstream()
    gw = await gateway(proxy_config(up.url))
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


async def test_forwarded_headers_from_an_untrusted_peer_are_replaced(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    up = await upstream()
    gw = await gateway(proxy_config(up.url))  # no trusted_proxies: nobody is trusted
    async with http.get(url(gw, "/svc/f"), headers={**SPOOFED, "Host": "gw.example"}) as response:
        assert response.status == 200
    got = up.requests[0].headers
    assert got["X-Forwarded-For"] == "203.0.113.7, 127.0.0.1"  # appended, never dropped
    assert got["X-Forwarded-Proto"] == "http"
    assert got["X-Forwarded-Host"] == "gw.example"
    assert len(got.getall("X-Forwarded-For")) == 1


async def test_forwarded_headers_from_a_trusted_peer_are_kept(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    up = await upstream()
    gw = await gateway(proxy_config(up.url, gateway_extra='trusted_proxies = ["127.0.0.1/32"]'))
    async with http.get(url(gw, "/svc/f"), headers={**SPOOFED, "Host": "gw.example"}) as response:
        assert response.status == 200
    got = up.requests[0].headers
    assert got["X-Forwarded-For"] == "203.0.113.7, 127.0.0.1"
    assert got["X-Forwarded-Proto"] == "https"
    assert got["X-Forwarded-Host"] == "shop.example"


async def test_forwarded_headers_are_set_when_the_client_sent_none(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    up = await upstream()
    gw = await gateway(proxy_config(up.url, gateway_extra='trusted_proxies = ["127.0.0.1/32"]'))
    async with http.get(url(gw, "/svc/f"), headers={"Host": "gw.example:8443"}) as response:
        assert response.status == 200
    got = up.requests[0].headers
    assert got["X-Forwarded-For"] == "127.0.0.1"
    assert got["X-Forwarded-Proto"] == "http"
    assert got["X-Forwarded-Host"] == "gw.example:8443"


# --- X-Request-ID ---------------------------------------------------------------------------


async def test_request_id_is_generated_and_returned(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    up = await upstream()
    gw = await gateway(proxy_config(up.url))
    ids = []
    for _ in range(2):
        async with http.get(url(gw, "/svc/id")) as response:
            assert response.status == 200
            ids.append(response.headers["X-Request-ID"])
    assert [r.headers["X-Request-ID"] for r in up.requests] == ids
    assert ids[0] != ids[1]
    assert all(8 <= len(i) <= 200 for i in ids)


async def test_sane_incoming_request_id_is_kept(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    up = await upstream()
    gw = await gateway(proxy_config(up.url))
    async with http.get(url(gw, "/svc/id"), headers={"X-Request-ID": "req-42.abc"}) as response:
        assert response.status == 200
        assert response.headers["X-Request-ID"] == "req-42.abc"
    assert up.requests[0].headers.getall("X-Request-ID") == ["req-42.abc"]


async def test_insane_incoming_request_id_is_replaced(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    up = await upstream()
    gw = await gateway(proxy_config(up.url))
    for bad in ("<script>alert(1)</script>", "x" * 1000, "has spaces in it"):
        async with http.get(url(gw, "/svc/id"), headers={"X-Request-ID": bad}) as response:
            assert response.status == 200
            returned = response.headers["X-Request-ID"]
        assert returned != bad
        assert up.requests[-1].headers.getall("X-Request-ID") == [returned]


async def test_request_id_plugin_changes_the_header_name(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    up = await upstream()
    gw = await gateway(f"""
        [upstreams.svc]
        targets = ["{up.url}"]
        [[plugins]]
        use = "request_id"
        header = "X-Trace-ID"
        [[routes]]
        name = "svc"
        path = "/svc/{{rest:.*}}"
        upstream = "svc"
    """)
    async with http.get(url(gw, "/svc/id"), headers={"X-Trace-ID": "trace-1"}) as response:
        assert response.status == 200
        assert response.headers["X-Trace-ID"] == "trace-1"
    assert up.requests[0].headers["X-Trace-ID"] == "trace-1"


# --- Host -----------------------------------------------------------------------------------


async def test_host_is_the_upstreams_by_default(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    up = await upstream()
    gw = await gateway(proxy_config(up.url))
    async with http.get(url(gw, "/svc/h"), headers={"Host": "public.example"}) as response:
        assert response.status == 200
    assert up.requests[0].headers.getall("Host") == [f"127.0.0.1:{up.server.port}"]


async def test_preserve_host_sends_the_clients_host(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    up = await upstream()
    gw = await gateway(proxy_config(up.url, route_extra="preserve_host = true"))
    async with http.get(url(gw, "/svc/h"), headers={"Host": "public.example:8080"}) as response:
        assert response.status == 200
    assert up.requests[0].headers.getall("Host") == ["public.example:8080"]


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

    up = await upstream(handler)
    gw = await gateway(proxy_config(up.url))
    async with http.get(url(gw, "/svc/c")) as response:
        assert response.status == 200
        assert response.headers.getall("Set-Cookie") == cookies


async def test_redirects_are_passed_through_not_followed(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path == "/start":
            return web.Response(status=302, headers={"Location": "/elsewhere?x=1"}, text="moved")
        return web.Response(text="followed!")

    up = await upstream(handler)
    gw = await gateway(proxy_config(up.url))
    async with http.get(url(gw, "/svc/start"), allow_redirects=False) as response:
        assert response.status == 302
        assert response.headers["Location"] == "/elsewhere?x=1"
        assert await response.read() == b"moved"
    assert [r.path for r in up.requests] == ["/start"]


async def test_query_string_passes_through_unchanged(upstream: StartUpstream, gateway: StartGateway) -> None:
    up = await upstream()
    gw = await gateway(proxy_config(up.url))
    query = b"a=1&b=%20two%2F&a=3&empty=&flag"
    response = await raw_exchange(gw.port, b"GET /svc/q?" + query + b" HTTP/1.1\r\nHost: gw\r\n\r\n")
    assert response.status == 200
    assert up.requests[0].raw_path == "/q?" + query.decode()


async def test_a_normal_encoded_path_passes_through_unchanged_without_rewrite(
    upstream: StartUpstream, gateway: StartGateway
) -> None:
    up = await upstream()
    gw = await gateway(f"""
        [upstreams.svc]
        targets = ["{up.url}"]
        [[routes]]
        name = "svc"
        path = "/svc/{{rest:.*}}"
        upstream = "svc"
    """)
    response = await raw_exchange(gw.port, b"GET /svc/a%20b%3Ac;v=1 HTTP/1.1\r\nHost: gw\r\n\r\n")
    assert response.status == 200
    assert up.requests[0].raw_path == "/svc/a%20b%3Ac;v=1"


async def test_encoded_slashes_are_refused_unless_kept(upstream: StartUpstream, gateway: StartGateway) -> None:
    up = await upstream()
    config = f"""
        [upstreams.svc]
        targets = ["{up.url}"]
        [[routes]]
        name = "svc"
        path = "/svc/{{rest:.*}}"
        upstream = "svc"
    """
    gw = await gateway(config)
    response = await raw_exchange(gw.port, b"GET /svc/a%20b%2Fc;v=1 HTTP/1.1\r\nHost: gw\r\n\r\n")
    assert response.status == 400
    assert up.hits == 0
    kept = await gateway('[gateway]\nencoded_slashes = "keep"\n' + textwrap.dedent(config))
    response = await raw_exchange(kept.port, b"GET /svc/a%20b%2fc;v=1 HTTP/1.1\r\nHost: gw\r\n\r\n")
    assert response.status == 200
    assert up.requests[0].raw_path == "/svc/a%20b%2Fc;v=1"


async def test_kept_encoded_slashes_stay_encoded_through_rewrite(
    upstream: StartUpstream, gateway: StartGateway
) -> None:
    up = await upstream()
    gw = await gateway(f"""
        [gateway]
        encoded_slashes = "keep"
        [upstreams.svc]
        targets = ["{up.url}"]
        [[routes]]
        name = "files"
        path = "/files/{{name}}/{{rest:.*}}"
        upstream = "svc"
        rewrite = "/store/{{name}}/{{rest}}"
    """)
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
    gw = await gateway(f"""
        [upstreams.svc]
        targets = ["{up.url}"]
        [[routes]]
        name = "items"
        path = "/api/{{user}}/items/{{rest:.*}}"
        upstream = "svc"
        rewrite = "/v2/users/{{user}}/{{rest}}"
    """)
    async with http.get(url(gw, "/api/42/items/a/b?page=2")) as response:
        assert response.status == 200
        assert await response.json() == {"path": "/v2/users/42/a/b?page=2", "method": "GET"}
    assert up.requests[0].raw_path == "/v2/users/42/a/b?page=2"


# --- HTTP/1.0 and Expect: 100-continue -------------------------------------------------------------


async def test_http10_client_gets_a_non_chunked_response(
    upstream: StartUpstream, gateway: StartGateway
) -> None:
    payload = bytes(range(256)) * 1024  # 256 KiB, larger than any "small body" shortcut

    async def handler(request: web.Request) -> web.StreamResponse:
        out = web.StreamResponse()  # no Content-Length: the upstream sends it chunked
        await out.prepare(request)
        for i in range(0, len(payload), 32 * 1024):
            await out.write(payload[i:i + 32 * 1024])
        await out.write_eof()
        return out

    up = await upstream(handler)
    gw = await gateway(proxy_config(up.url))
    response = await raw_exchange(gw.port, b"GET /svc/big HTTP/1.0\r\nHost: gw.example\r\n\r\n")
    assert response.status == 200
    assert response.version in ("HTTP/1.0", "HTTP/1.1")
    assert not response.chunked
    assert "transfer-encoding" not in response.names
    assert response.body == payload


async def test_expect_100_continue_upload(upstream: StartUpstream, gateway: StartGateway) -> None:
    body = b"0123456789" * 10_000
    up = await upstream()
    gw = await gateway(proxy_config(up.url))
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
    up = await upstream()
    gw = await gateway(proxy_config(up.url))
    headers = {"X-Consumer": "admin", "x-consumer-id": "1", "X-Consumer-Groups": "root", "X-Consumers": "x"}
    async with http.get(url(gw, "/svc/a"), headers=headers) as response:
        assert response.status == 200
    received = up.requests[0].headers
    assert not [k for k in received if k.lower().startswith("x-consumer")]


async def test_rewrite_refuses_dot_segments_from_encoded_slashes(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    up = await upstream()
    gw = await gateway(proxy_config(up.url))
    for path in ("/svc/..%2F..%2Fadmin", "/svc/%2e%2e/%2e%2e/admin", "/svc/a/..%2fadmin"):
        async with http.get(URL(url(gw, path), encoded=True)) as response:
            assert response.status == 400, path
            assert response.headers["Content-Type"] == "application/problem+json"
    assert up.hits == 0
    async with http.get(url(gw, "/svc/a/b.txt")) as response:
        assert response.status == 200
    assert up.requests[0].path == "/a/b.txt"


async def test_every_x_forwarded_for_line_counts(
    upstream: StartUpstream, gateway: StartGateway
) -> None:
    up = await upstream()
    gw = await gateway(proxy_config(
        up.url, gateway_extra='trusted_proxies = ["127.0.0.1/32"]',
        route_extra='[[routes.plugins]]\nuse = "ip_filter"\ndeny = ["203.0.113.0/24"]'))
    request = (b"GET /svc/a HTTP/1.1\r\nHost: gw\r\nX-Forwarded-For: 198.51.100.1\r\n"
               b"X-Forwarded-For: 203.0.113.9\r\n\r\n")
    response = await raw_exchange(gw.port, request)
    assert response.status == 403  # the proxy's own line names the client, not the first line
    ok = await raw_exchange(gw.port, request.replace(b"203.0.113.9", b"192.0.2.7"))
    assert ok.status == 200
    assert up.requests[-1].headers["X-Forwarded-For"] == "198.51.100.1, 192.0.2.7, 127.0.0.1"
