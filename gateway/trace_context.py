"""W3C Trace Context (docs/operations.md#tracing): the ``traceparent`` a request arrives with,
continued, or a new trace started; the ``traceparent`` each upstream call sends, with the
request's trace id and that call's own span id. Pure and cheap: this is all a request pays
when no collector is configured.

    traceparent: 00-<trace-id: 32 hex>-<parent-id: 16 hex>-<flags: 2 hex>
"""

from __future__ import annotations

import random
import re

_COMMON = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?", re.DOTALL)
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
SAMPLED = 0x01
_random = random.Random()  # ids need to be unique, not secret (like the request ids)
_bits = _random.getrandbits


class TraceContext:
    """The trace one request belongs to: its trace id, the caller's span id (when it came
    with one), the sampled flag and the caller's ``tracestate`` (passed on unchanged)."""

    __slots__ = ("trace_id", "parent_id", "flags", "tracestate", "_span_id", "_prefix", "_suffix")

    def __init__(self, trace_id: str, parent_id: str | None, flags: int, tracestate: str | None) -> None:
        self.trace_id = trace_id
        self.parent_id = parent_id
        self.flags = flags
        self.tracestate = tracestate
        self._span_id: str | None = None
        self._prefix: str | None = None
        self._suffix = "-01" if flags & SAMPLED else "-00"

    @property
    def span_id(self) -> str:
        """The gateway's own span for this request (made when first asked for)."""
        span_id = self._span_id
        if span_id is None:
            span_id = self._span_id = new_span_id()
        return span_id

    @property
    def sampled(self) -> bool:
        return bool(self.flags & SAMPLED)

    def header_for(self, span_id: str) -> str:
        """The ``traceparent`` a call made under span ``span_id`` sends upstream."""
        prefix = self._prefix
        if prefix is None:
            prefix = self._prefix = f"00-{self.trace_id}-"
        return prefix + span_id + self._suffix


def new_trace_id() -> str:
    return (_bits(128) or 1).to_bytes(16, "big").hex()  # never all zeros (invalid)


def new_span_id() -> str:
    return (_bits(64) or 1).to_bytes(8, "big").hex()


def parse_traceparent(value: str | None) -> tuple[str, str, int] | None:
    """(trace id, parent span id, flags) of a valid ``traceparent``, else None.

    Version ``00`` must be exactly 55 characters; a later version may append fields after a
    ``-`` (read as 00, as the spec says); version ``ff`` and any malformed or all-zero id are
    invalid.
    """
    if not value:
        return None
    match = _TRACEPARENT.fullmatch(value.strip())
    if match is None:
        return None
    version, trace_id, parent_id, flags, more = match.groups()
    if version == "ff" or (more and version == "00") or trace_id == _ZERO_TRACE or parent_id == _ZERO_SPAN:
        return None
    return trace_id, parent_id, int(flags, 16)


TraceFields = tuple[str, "str | None", int, "str | None"]  # trace id, caller's span id, flags, tracestate


def incoming_fields(traceparent: str | None, tracestate: str | None, sample: float) -> TraceFields:
    """The request's trace: the caller's continued when its ``traceparent`` is valid (its
    sampled flag decides), else a new one sampled with probability ``sample``. An invalid
    ``traceparent`` also voids its ``tracestate``."""
    if traceparent:
        match = _COMMON.fullmatch(traceparent)  # version 00, as nearly every caller sends it
        if match is not None:
            trace_id, parent_id, flags = match.groups()
            if trace_id != _ZERO_TRACE and parent_id != _ZERO_SPAN:
                return trace_id, parent_id, int(flags, 16) & SAMPLED, tracestate or None
        parsed = parse_traceparent(traceparent)
        if parsed is not None:
            trace_id, parent_id, flags = parsed
            state = tracestate.strip() if tracestate else None
            return trace_id, parent_id, flags & SAMPLED, state or None
    return (new_trace_id(), None, SAMPLED if sample >= 1.0 or (sample > 0.0 and _random.random() < sample) else 0,
            None)


def incoming(traceparent: str | None, tracestate: str | None, sample: float) -> TraceContext:
    """``incoming_fields`` as a TraceContext."""
    return TraceContext(*incoming_fields(traceparent, tracestate, sample))
