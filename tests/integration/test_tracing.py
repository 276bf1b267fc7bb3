"""W3C trace context through the proxy, its retries and orchestration, and the spans an
OTLP/HTTP collector receives: names, kinds, parent links, and the span ids upstreams saw."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from aiohttp import web

from gateway.trace_context import parse_traceparent
from tests.conftest import StartGateway, StartUpstream, Upstream
from tests.support import free_port, proxy_config, url
from tests.support.otlp import Collector, collector

__all__ = ["collector"]  # the fixture

INCOMING = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TRACE_ID, CALLER_SPAN = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
RETRY = 'retry = { attempts = 3, backoff = "1ms", max_backoff = "2ms" }'


def tracing(endpoint: str, ratio: str = "1.0") -> str:
    return f'[gateway.tracing]\nendpoint = "{endpoint}"\nservice_name = "edge-gw"\nsample_ratio = {ratio}'


def sent(up: Upstream) -> list[tuple[str, str, int]]:
    """(trace id, span id, flags) of the traceparent each request to ``up`` carried."""
    parsed = [parse_traceparent(r.headers.get("traceparent")) for r in up.requests]
    assert all(p is not None for p in parsed), [r.headers.get("traceparent") for r in up.requests]
    return [p for p in parsed if p is not None]


async def test_proxy_with_retries_continues_the_trace_with_a_span_per_attempt(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession, collector: Collector
) -> None:
    async def flaky(_: web.Request) -> web.Response:
        return web.Response(status=503 if up.hits < 2 else 200, text="ok")

    up = await upstream(flaky)
    gw = await gateway(proxy_config(up.url, gateway=tracing(collector.url), upstream=RETRY))
    async with http.get(url(gw, "/svc/a?x=1"), headers={"traceparent": INCOMING, "tracestate": "vendor=1"}) as r:
        assert r.status == 200
    spans = await collector.wait_for_spans(3)
    [server] = collector.by_kind("server")
    clients = sorted(collector.by_kind("client"), key=lambda s: s.start_ns)
    assert len(spans) == 3 and len(clients) == 2
    assert {s.trace_id for s in spans} == {TRACE_ID}
    assert (server.name, server.parent_id, server.service) == ("svc", CALLER_SPAN, "edge-gw")
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["http.request.method"] == "GET" and server.attributes["url.path"] == "/svc/a"
    assert [c.parent_id for c in clients] == [server.span_id] * 2
    assert [c.attributes["gateway.attempt"] for c in clients] == [1, 2]
    assert [c.attributes["http.response.status_code"] for c in clients] == [503, 200]
    assert [c.error for c in clients] == [True, False]
    # Each attempt sent its own span id: the ones the collector got, with the caller's trace id.
    assert sent(up) == [(TRACE_ID, c.span_id, 1) for c in clients]
    assert [r.headers.get("tracestate") for r in up.requests] == ["vendor=1", "vendor=1"]
    assert len({c.span_id for c in clients} | {server.span_id}) == 3


async def test_orchestration_has_a_span_per_step_and_calls_under_it(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession, collector: Collector
) -> None:
    async def service(request: web.Request) -> web.Response:
        if request.path == "/user":
            return web.json_response({"id": 7, "friends": [1, 2, 3]})
        return web.json_response({"path": request.path})

    up = await upstream(service)
    gw = await gateway(f"""
        {tracing(collector.url)}
        [upstreams.svc]
        targets = ["{up.url}"]
        [[routes]]
        name = "dash"
        path = "/dash"
          [[routes.steps]]
          name = "user"
          upstream = "svc"
          path = "/user"
          [[routes.steps]]
          name = "friends"
          upstream = "svc"
          path = "/friend/{{item}}"
          for_each = "user.friends"
          into = "friends"
    """)
    async with http.get(url(gw, "/dash")) as response:
        assert response.status == 200, await response.text()
    spans = await collector.wait_for_spans(7)
    [server] = collector.by_kind("server")
    steps = {s.name: s for s in collector.by_kind("internal")}
    clients = collector.by_kind("client")
    assert len(spans) == 7 and server.parent_id == "" and server.name == "dash"
    assert set(steps) == {"step user", "step friends"}
    assert all(s.parent_id == server.span_id for s in steps.values())
    assert all(s.attributes["gateway.step.outcome"] == "ok" for s in steps.values())
    by_parent = sorted((c.parent_id, str(c.attributes["url.full"]).rsplit("/", 1)[-1]) for c in clients)
    assert by_parent == sorted([(steps["step user"].span_id, "user")] +
                               [(steps["step friends"].span_id, str(n)) for n in (1, 2, 3)])
    assert {s[1] for s in sent(up)} == {c.span_id for c in clients}
    assert {s[0] for s in sent(up)} == {server.trace_id}
    assert steps["step friends"].start_ns >= steps["step user"].end_ns  # it needed the user's data


async def test_an_invalid_traceparent_starts_a_new_trace_and_drops_tracestate(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    up = await upstream()
    gw = await gateway(proxy_config(up.url))  # no collector: propagation only
    bad = "00-00000000000000000000000000000000-b7ad6b7169203331-01"
    async with http.get(url(gw, "/svc/a"), headers={"traceparent": bad, "tracestate": "vendor=1"}) as response:
        assert response.status == 200
    async with http.get(url(gw, "/svc/b"), headers={"traceparent": INCOMING, "tracestate": "v=2"}) as response:
        assert response.status == 200
    (new_trace, _, new_flags), (kept_trace, kept_span, kept_flags) = sent(up)
    assert new_trace not in (TRACE_ID, "0" * 32) and new_flags == 0  # not recorded: not sampled
    assert "tracestate" not in up.requests[0].headers
    assert (kept_trace, kept_flags) == (TRACE_ID, 1) and kept_span != CALLER_SPAN
    assert up.requests[1].headers["tracestate"] == "v=2"


async def test_sample_ratio_zero_exports_nothing_but_a_sampled_caller_is_respected(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession, collector: Collector
) -> None:
    up = await upstream()
    gw = await gateway(proxy_config(up.url, gateway=tracing(collector.url, "0")))
    for _ in range(5):
        async with http.get(url(gw, "/svc/a")) as response:
            assert response.status == 200
    async with http.get(url(gw, "/svc/b"), headers={"traceparent": INCOMING}) as response:
        assert response.status == 200
    spans = await collector.wait_for_spans(2)
    assert {s.trace_id for s in spans} == {TRACE_ID}  # only the caller's sampled trace
    assert [flags for _, _, flags in sent(up)] == [0] * 5 + [1]


async def test_a_dead_collector_neither_fails_nor_slows_requests(
    upstream: StartUpstream, gateway: StartGateway, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    # A collector that accepts connections and never answers: every export waits its full
    # timeout (seconds) in the exporter's thread, never in a request.
    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    server = await asyncio.start_server(hang, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        up = await upstream()
        refused = await gateway(proxy_config(up.url, gateway=tracing(f"http://127.0.0.1:{free_port()}")))
        hung = await gateway(proxy_config(up.url, gateway=tracing(f"http://127.0.0.1:{port}")))
        for gw in (refused, hung):
            slowest = 0.0
            for n in range(200):
                started = time.monotonic()
                async with http.get(url(gw, f"/svc/{n}")) as response:
                    assert response.status == 200
                slowest = max(slowest, time.monotonic() - started)
                if n % 50 == 0:
                    await asyncio.sleep(0.6)  # let a batch go out to the dead collector meanwhile
            assert slowest < 1.0  # an export blocking a request would take its timeout (5 s)
        started = time.monotonic()
        await hung.drain()  # gives up on the last batch within its bound
        assert time.monotonic() - started < 8.0
        # The exporter's complaints are held to one line per kind of message a minute.
        complaints = [r.getMessage() for r in caplog.records if r.name.startswith("opentelemetry")]
        assert len(complaints) == len({r.msg for r in caplog.records if r.name.startswith("opentelemetry")})
    finally:
        server.close()
