"""W3C traceparent: what is accepted, what starts a new trace, and what goes upstream."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.trace_context import SAMPLED, incoming, new_span_id, new_trace_id, parse_traceparent

HEADER = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]")
hex_digits = st.text("0123456789abcdef", min_size=1, max_size=1)


@pytest.mark.parametrize(("value", "parsed"), [
    pytest.param("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                 ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331", 1), id="sampled"),
    pytest.param("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
                 ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331", 0), id="not-sampled"),
    pytest.param(" 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01 ",
                 ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331", 1), id="surrounding-space"),
    pytest.param("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-what-comes-next",
                 ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331", 1), id="later-version-extra-fields"),
    pytest.param("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra", None, id="v00-extra"),
    pytest.param("ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", None, id="version-ff"),
    pytest.param("00-00000000000000000000000000000000-b7ad6b7169203331-01", None, id="zero-trace"),
    pytest.param("00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01", None, id="zero-parent"),
    pytest.param("00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01", None, id="upper-case"),
    pytest.param("00-0af7651916cd43dd8448eb211c80319-cb7ad6b7169203331-01", None, id="misplaced-dash"),
    pytest.param("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1", None, id="short-flags"),
    pytest.param("00_0af7651916cd43dd8448eb211c80319c_b7ad6b7169203331_01", None, id="underscores"),
    pytest.param("", None, id="empty"),
    pytest.param(None, None, id="absent"),
])
def test_parse_traceparent(value: str | None, parsed: tuple[str, str, int] | None) -> None:
    assert parse_traceparent(value) == parsed


@given(st.text(max_size=80))
def test_any_text_is_parsed_or_refused_without_error(value: str) -> None:
    parsed = parse_traceparent(value)
    if parsed is not None:
        trace_id, parent_id, flags = parsed
        assert re.fullmatch("[0-9a-f]{32}", trace_id) and trace_id != "0" * 32
        assert re.fullmatch("[0-9a-f]{16}", parent_id) and parent_id != "0" * 16
        assert 0 <= flags <= 255


@given(st.lists(hex_digits, min_size=32, max_size=32), st.lists(hex_digits, min_size=16, max_size=16),
       st.sampled_from(["00", "01"]))
def test_what_the_gateway_sends_is_what_it_accepts(trace: list[str], span: list[str], flags: str) -> None:
    trace_id, span_id = "".join(trace), "".join(span)
    value = f"00-{trace_id}-{span_id}-{flags}"
    expected = (trace_id, span_id, int(flags)) if trace_id.strip("0") and span_id.strip("0") else None
    assert parse_traceparent(value) == expected


def test_a_continued_trace_keeps_id_flag_and_state_and_sends_its_own_span_ids() -> None:
    trace = incoming("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "a=1,b=2", sample=0.0)
    assert (trace.trace_id, trace.parent_id, trace.sampled, trace.tracestate) == (
        "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331", True, "a=1,b=2")
    span = new_span_id()
    assert trace.header_for(span) == f"00-0af7651916cd43dd8448eb211c80319c-{span}-01"
    # Flags other than "sampled" are not passed on (none is defined for a hop to keep).
    assert not incoming("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-fe", None, 1.0).flags & ~SAMPLED


def test_a_new_trace_is_sampled_by_ratio_and_drops_an_invalid_callers_state() -> None:
    assert incoming(None, None, 1.0).sampled
    assert not incoming(None, None, 0.0).sampled
    assert incoming("garbage", "a=1", 1.0).tracestate is None
    sampled = sum(incoming(None, None, 0.25).sampled for _ in range(4000))
    assert 700 < sampled < 1300  # 1000 expected; the bounds are > 7 standard deviations wide
    header = incoming(None, None, 0.0).header_for(new_span_id())
    assert HEADER.fullmatch(header)


def test_ids_are_never_zero_and_do_not_repeat() -> None:
    traces = {new_trace_id() for _ in range(10_000)}
    spans = {new_span_id() for _ in range(10_000)}
    assert len(traces) == len(spans) == 10_000
    assert all(len(t) == 32 and t != "0" * 32 for t in traces)
    assert all(len(s) == 16 and s != "0" * 16 for s in spans)
