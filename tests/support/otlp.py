"""An OTLP/HTTP trace receiver on 127.0.0.1: what a collector would get from the gateway,
decoded with opentelemetry-proto."""

from __future__ import annotations

import asyncio
import gzip
import time
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan

KINDS = {ProtoSpan.SPAN_KIND_SERVER: "server", ProtoSpan.SPAN_KIND_CLIENT: "client",
         ProtoSpan.SPAN_KIND_INTERNAL: "internal"}


def _value(value: AnyValue) -> object:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind is not None else None


@dataclass
class ReceivedSpan:
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: str
    attributes: dict[str, object]
    events: list[tuple[str, dict[str, object]]]
    error: bool
    start_ns: int
    end_ns: int
    service: str


@dataclass
class Collector:
    """The spans received so far; ``url`` is the endpoint to configure."""

    url: str = ""
    spans: list[ReceivedSpan] = field(default_factory=list)
    posts: int = 0

    async def wait_for_spans(self, count: int, timeout: float = 10.0) -> list[ReceivedSpan]:
        deadline = time.monotonic() + timeout
        while len(self.spans) < count:
            assert time.monotonic() < deadline, f"{len(self.spans)} spans received, expected {count}"
            await asyncio.sleep(0.05)
        return self.spans

    def by_kind(self, kind: str) -> list[ReceivedSpan]:
        return [span for span in self.spans if span.kind == kind]


def _decode(body: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    return body


@pytest.fixture
async def collector() -> AsyncIterator[Collector]:
    received = Collector()

    async def traces(request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        message = ExportTraceServiceRequest.FromString(
            _decode(await request.read(), request.headers.get("Content-Encoding", "")))
        received.posts += 1
        for resource_spans in message.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.spans.append(ReceivedSpan(
                        span.trace_id.hex(), span.span_id.hex(), span.parent_span_id.hex(), span.name,
                        KINDS.get(span.kind, str(span.kind)),
                        {a.key: _value(a.value) for a in span.attributes},
                        [(e.name, {a.key: _value(a.value) for a in e.attributes}) for e in span.events],
                        span.status.code == span.status.STATUS_CODE_ERROR,
                        span.start_time_unix_nano, span.end_time_unix_nano, str(resource.get("service.name")),
                    ))
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    received.url = f"http://127.0.0.1:{server.port}"
    yield received
    await server.close()
