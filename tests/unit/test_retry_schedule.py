"""Retry decisions, backoff schedule, Retry-After and the retry budget (pure, no I/O)."""

from __future__ import annotations

import random
from email.utils import formatdate

import pytest
from multidict import CIMultiDict

from gateway.config_model import RetryConfig
from gateway.errors import PayloadTooLarge, ServiceUnavailable, UpstreamConnectError, UpstreamReset, UpstreamTimeout
from gateway.http import Response
from gateway.upstream.breaker import CircuitOpen
from gateway.upstream.retry import RETRY_METHODS, RetryBudget, RetryPolicy, failure_kind, retry_after


def policy(**options: object) -> RetryPolicy:
    return RetryPolicy(RetryConfig.model_validate(options), random.Random(7))


def response(status: int, **headers: str) -> Response:
    return Response(status, CIMultiDict(headers))


def test_backoff_ceiling_doubles_up_to_max_backoff() -> None:
    p = policy(attempts=8, backoff="25ms", max_backoff="250ms")
    assert [p.ceiling(n) for n in range(1, 7)] == pytest.approx([0.025, 0.05, 0.1, 0.2, 0.25, 0.25])


@pytest.mark.parametrize("retry", [1, 2, 3, 4, 5])
def test_full_jitter_stays_between_zero_and_the_ceiling_and_spreads(retry: int) -> None:
    p = policy(attempts=8, backoff="25ms", max_backoff="250ms")
    waits = [p.delay(retry, None) for _ in range(500)]
    ceiling = p.ceiling(retry)
    assert all(w is not None and 0.0 <= w <= ceiling for w in waits)
    spread = [w for w in waits if w is not None]
    assert min(spread) < ceiling * 0.1 and max(spread) > ceiling * 0.9  # full jitter, not ±x%


def test_retry_after_within_max_backoff_is_waited_for() -> None:
    p = policy(backoff="1ms", max_backoff="2s")
    assert p.delay(1, response(503, **{"Retry-After": "1"})) == pytest.approx(1.0)


def test_retry_after_longer_than_max_backoff_ends_the_retries() -> None:
    p = policy(backoff="1ms", max_backoff="500ms")
    assert p.delay(1, response(503, **{"Retry-After": "3"})) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0", 0.0), ("7", 7.0), (" 2 ", 2.0), ("soon", None), ("-1", None), ("1.5", None), ("", None)],
)
def test_retry_after_seconds(value: str, expected: float | None) -> None:
    assert retry_after({"Retry-After": value}) == expected


def test_retry_after_http_date() -> None:
    now = 1_700_000_000.0
    header = formatdate(now + 30, usegmt=True)
    assert retry_after({"Retry-After": header}, now=now) == pytest.approx(30.0)
    assert retry_after({"Retry-After": formatdate(now - 30, usegmt=True)}, now=now) == 0.0
    assert retry_after({}) is None


def test_reason_is_the_matching_entry_of_on() -> None:
    p = policy(on=[503, "connect", "timeout"])
    assert p.reason(response(503), None) == "503"
    assert p.reason(response(502), None) is None
    assert p.reason(response(200), None) is None
    assert p.reason(None, UpstreamConnectError("x")) == "connect"
    assert p.reason(None, UpstreamTimeout("x")) == "timeout"
    assert p.reason(None, UpstreamReset("x")) is None  # "reset" not listed


@pytest.mark.parametrize(
    "error", [CircuitOpen(1), ServiceUnavailable("no target"), PayloadTooLarge("big"), RuntimeError("bug")]
)
def test_errors_that_are_not_upstream_failures_are_never_retried(error: Exception) -> None:
    assert failure_kind(error) is None
    assert policy(on=[502, 503, 504, "connect", "timeout", "reset"]).reason(None, error) is None


@pytest.mark.parametrize(
    ("method", "reason", "replayable", "unsent", "expected"),
    [
        ("GET", "503", True, False, True),
        ("PUT", "timeout", True, False, True),
        ("DELETE", "reset", True, False, True),
        ("POST", "503", True, False, False),  # not idempotent
        ("POST", "timeout", True, False, False),
        ("POST", "connect", True, False, True),  # nothing was sent
        ("POST", "connect", False, True, True),  # a streamed body that never started
        ("POST", "connect", False, False, False),  # a streamed body already (partly) sent
        ("PUT", "503", False, False, False),  # a streamed body cannot be replayed
    ],
)
def test_which_attempts_may_be_retried(method: str, reason: str, replayable: bool, unsent: bool,
                                       expected: bool) -> None:
    assert policy().may_retry(method, reason, replayable=replayable, unsent=unsent) is expected


def test_methods_override_the_idempotent_default() -> None:
    assert policy().methods == RETRY_METHODS == {"GET", "HEAD", "OPTIONS", "PUT", "DELETE"}
    p = policy(methods=["post", "GET"])
    assert p.methods == {"POST", "GET"}
    assert p.may_retry("POST", "503", replayable=True, unsent=False)
    assert not p.may_retry("PUT", "503", replayable=True, unsent=False)


def test_budget_allows_at_least_three_retries_in_flight() -> None:
    budget = RetryBudget()
    budget.requests = 1
    assert [budget.acquire() for _ in range(4)] == [True, True, True, False]
    budget.release()
    assert budget.acquire()


def test_budget_is_twenty_percent_of_requests_in_flight() -> None:
    budget = RetryBudget()
    budget.requests = 100
    granted = sum(budget.acquire() for _ in range(50))
    assert granted == 20
    budget.requests = 50  # most requests finished: the budget shrinks with them
    budget.retries = 10
    assert not budget.acquire()
