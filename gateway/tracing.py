"""Span export (docs/operations.md#tracing): the spans a sampled request recorded
(gateway.request_scope) become OpenTelemetry SDK spans, batched and sent by OTLP/HTTP from
the SDK's worker thread — never on the request path, and a dead collector only costs the
spans it drops.

Spans are recorded as plain objects while the request runs and handed to the SDK's
``BatchSpanProcessor`` when it ends, instead of going through the SDK's tracer: its
per-span context attach/detach would be paid on every hop, and only sampled requests pay
for the conversion here. The SDK is imported only when ``[gateway.tracing]`` is configured.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

import gateway
from gateway.request_scope import CLIENT, INTERNAL, SERVER, RequestScope

if TYPE_CHECKING:
    from gateway.config_model import TracingConfig

log = logging.getLogger("gateway.tracing")

EXPORT_TIMEOUT = 5.0  # seconds one export may take before its batch is given up
CLOSE_TIMEOUT = 5.0  # seconds a drain waits for the last spans to go out
QUIET_FOR = 60.0  # seconds the same SDK warning is held back after it was logged once
# Where the SDK and the exporter log (a dead collector: one warning per retry, per dropped span).
SDK_LOGGERS = ("opentelemetry.sdk._shared_internal", "opentelemetry.exporter.otlp.proto.http.trace_exporter")


class OncePer(logging.Filter):
    """Lets each distinct message through once per ``seconds``: a dead collector gives one
    warning a minute, not one per dropped span on the request path."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self._last: dict[object, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        key = record.msg
        if now - self._last.get(key, -self.seconds) < self.seconds:
            return False
        if len(self._last) > 100:
            self._last.clear()
        self._last[key] = now
        return True


def _quiet_sdk() -> None:
    for name in SDK_LOGGERS:
        sdk_log = logging.getLogger(name)
        if not any(isinstance(f, OncePer) for f in sdk_log.filters):
            sdk_log.addFilter(OncePer(QUIET_FOR))


class Exporter:
    """Turns a request's recorded spans into SDK spans and queues them for export."""

    def __init__(self, config: TracingConfig) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope
        from opentelemetry.trace import SpanKind

        _quiet_sdk()
        self.config = config
        self.sample_ratio = config.sample_ratio
        endpoint = config.endpoint.rstrip("/") + "/v1/traces"
        self._processor = BatchSpanProcessor(
            OTLPSpanExporter(endpoint=endpoint, timeout=EXPORT_TIMEOUT),
            max_queue_size=8192, schedule_delay_millis=500, max_export_batch_size=512,
            export_timeout_millis=EXPORT_TIMEOUT * 1000,
        )
        self._resource = Resource.create({"service.name": config.service_name,
                                          "service.version": gateway.__version__})
        self._scope = InstrumentationScope("gateway", gateway.__version__)
        self._kinds = {SERVER: SpanKind.SERVER, CLIENT: SpanKind.CLIENT, INTERNAL: SpanKind.INTERNAL}

    def export(self, scope: RequestScope) -> None:
        """Queue the spans ``scope`` recorded (the processor drops them when its queue is full)."""
        if not scope.spans:
            return
        from opentelemetry.sdk.trace import Event, ReadableSpan
        from opentelemetry.trace import SpanContext, Status, StatusCode, TraceFlags

        trace = scope.trace
        trace_id = int(trace.trace_id, 16)
        flags = TraceFlags(TraceFlags.SAMPLED)
        remote_parent = trace.parent_id
        on_end = self._processor.on_end
        for span in scope.spans:
            parent_id = span.parent_id
            parent = None
            if parent_id is not None:
                parent = SpanContext(trace_id, int(parent_id, 16), is_remote=parent_id == remote_parent,
                                     trace_flags=flags)
            status = Status(StatusCode.ERROR, span.error) if span.error is not None else Status(StatusCode.UNSET)
            on_end(ReadableSpan(
                span.name,
                context=SpanContext(trace_id, int(span.span_id, 16), is_remote=False, trace_flags=flags),
                parent=parent,
                resource=self._resource,
                attributes=span.attributes,
                events=[Event(name, attributes, timestamp) for name, timestamp, attributes in span.events],
                kind=self._kinds[span.kind],
                status=status,
                start_time=span.start_ns,
                end_time=span.end_ns,
                instrumentation_scope=self._scope,
            ))

    async def close(self) -> None:
        """Send what is queued (bounded by CLOSE_TIMEOUT) and stop the worker thread."""
        try:
            await asyncio.wait_for(asyncio.to_thread(self._shutdown), CLOSE_TIMEOUT + 1)
        except TimeoutError:
            log.warning("span export did not finish within %ss; the remaining spans are dropped", CLOSE_TIMEOUT)

    def _shutdown(self) -> None:
        self._processor.force_flush(int(CLOSE_TIMEOUT * 1000))
        self._processor.shutdown()  # type: ignore[no-untyped-call]
