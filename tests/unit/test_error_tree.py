"""One error tree: every error's status and upstream outcome, the client's body errors in it."""

from __future__ import annotations

import asyncio
from typing import get_args

import pytest

import gateway.http
from gateway.config_model import RetryConfig
from gateway.errors import (
    BadRequest,
    BodyError,
    BodyStalled,
    BodyTooLarge,
    Forbidden,
    GatewayError,
    GatewayTimeout,
    HeadersTooLarge,
    InternalError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    ServiceUnavailable,
    Unauthorized,
    UpstreamConnectError,
    UpstreamError,
    UpstreamOutcome,
    UpstreamReset,
    UpstreamTimeout,
    UriTooLong,
    error_response,
)
from gateway.http import Body
from gateway.upstream.breaker import CircuitOpen
from gateway.upstream.retry import KINDS, RetryPolicy, failure_kind
from gateway.upstream.sender import map_client_error

TREE: list[tuple[GatewayError, int, str | None]] = [
    (GatewayError(), 500, None),
    (InternalError("bug"), 500, None),
    (BadRequest("x"), 400, None),
    (Unauthorized("x"), 401, None),
    (Forbidden("x"), 403, None),
    (NotFound("x"), 404, None),
    (MethodNotAllowed("DELETE", ["GET"]), 405, None),
    (RequestTimeout("x"), 408, None),
    (BodyStalled("x"), 408, None),
    (PayloadTooLarge("x"), 413, None),
    (BodyTooLarge("x"), 413, None),
    (UriTooLong("x"), 414, None),
    (HeadersTooLarge("x"), 431, None),
    (UpstreamError("x"), 502, "reset"),
    (UpstreamConnectError("x"), 502, "connect_error"),
    (UpstreamReset("x"), 502, "reset"),
    (ServiceUnavailable("x"), 503, None),
    (CircuitOpen(1), 503, "circuit_open"),
    (GatewayTimeout("x"), 504, None),
    (UpstreamTimeout("x"), 504, "timeout"),
]


@pytest.mark.parametrize(("error", "status", "outcome"), TREE, ids=[type(e).__name__ for e, _, _ in TREE])
def test_each_error_knows_its_status_and_upstream_outcome(error: GatewayError, status: int,
                                                          outcome: str | None) -> None:
    assert error.status == status
    assert error.outcome == outcome
    assert error_response(error, "r", "id").status == status


def test_outcomes_are_only_the_metrics_label_values() -> None:
    assert set(get_args(UpstreamOutcome)) == {"ok", "http_error", "timeout", "connect_error", "reset", "circuit_open"}
    assert {outcome for _, _, outcome in TREE} - {None} <= set(get_args(UpstreamOutcome))


@pytest.mark.parametrize(("body_error", "parent"), [(BodyTooLarge, PayloadTooLarge), (BodyStalled, RequestTimeout)])
def test_body_errors_are_gateway_errors(body_error: type[BodyError], parent: type[GatewayError]) -> None:
    error = body_error("detail")
    assert isinstance(error, parent) and isinstance(error, BodyError) and isinstance(error, GatewayError)
    assert error.detail == "detail"
    assert error.type == parent("x").type and error.title == parent.title


def test_body_errors_stay_importable_from_gateway_http() -> None:
    assert gateway.http.BodyError is BodyError
    assert gateway.http.BodyTooLarge is BodyTooLarge
    assert gateway.http.BodyStalled is BodyStalled


@pytest.mark.parametrize(
    ("error", "kind"),
    [(UpstreamConnectError("x"), "connect"), (UpstreamTimeout("x"), "timeout"), (UpstreamReset("x"), "reset"),
     (UpstreamError("x"), "reset"), (CircuitOpen(1), None), (ServiceUnavailable("x"), None),
     (BodyTooLarge("x"), None), (BodyStalled("x"), None), (GatewayTimeout("x"), None), (RuntimeError("x"), None)],
)
def test_retry_kind_is_read_off_the_outcome(error: BaseException, kind: str | None) -> None:
    assert failure_kind(error) == kind
    outcome = getattr(error, "outcome", None)
    assert kind == (KINDS.get(outcome) if outcome is not None else None)


def test_a_broken_upload_is_never_a_retry_reason() -> None:
    policy = RetryPolicy(RetryConfig.model_validate({"on": [408, 413, "connect", "timeout", "reset"]}))
    assert policy.reason(None, BodyTooLarge("x")) is None
    assert policy.reason(None, BodyStalled("x")) is None


class _Client:
    """Stands in for the client connection's StreamReader: a few chunks, then silence or EOF."""

    def __init__(self, *chunks: bytes, stall: bool = False) -> None:
        self._chunks = list(chunks)
        self._stall = stall

    async def readany(self) -> bytes:
        if self._chunks:
            return self._chunks.pop(0)
        if self._stall:
            await asyncio.sleep(10)
        return b""


async def test_body_keeps_the_error_that_stopped_it_and_the_client_mapping_returns_it() -> None:
    body = Body(_Client(b"x" * 6, b"x" * 6), None, 10)  # type: ignore[arg-type]
    with pytest.raises(BodyTooLarge) as caught:
        await body.read()
    assert body.failure is caught.value
    assert caught.value.status == 413 and caught.value.outcome is None
    # Whatever the upstream side raised as a consequence, the client's error is the answer.
    assert map_client_error(ConnectionResetError(), body) is body.failure
    assert map_client_error(UpstreamReset("broken pipe"), body) is body.failure


async def test_a_stalled_body_is_a_408_without_outcome() -> None:
    body = Body(_Client(b"x", stall=True), None, 10, idle=0.01)  # type: ignore[arg-type]
    with pytest.raises(BodyStalled) as caught:
        await body.read()
    assert body.failure is caught.value
    assert isinstance(caught.value, RequestTimeout)
    assert caught.value.status == 408 and caught.value.outcome is None
    assert error_response(caught.value, "r", "id").status == 408


def test_a_body_error_without_a_failed_body_passes_through() -> None:
    error = BodyStalled("stalled")
    assert map_client_error(error, None) is error
