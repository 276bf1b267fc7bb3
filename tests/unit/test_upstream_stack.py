"""The order of an upstream stack's layers, run against a MockSender (no sockets): retry
outside breaker outside balancer for ``scope = "upstream"``, the breaker below the balancer
for ``scope = "target"``, and every attempt measured by its own outcome."""

from __future__ import annotations

from typing import Any

import pytest
from multidict import CIMultiDict

from gateway.clients import Clients
from gateway.config_model import UpstreamConfig
from gateway.errors import GatewayError, UpstreamConnectError
from gateway.http import Response
from gateway.metrics import Metrics
from gateway.testing import MockSender, upstream_request
from gateway.upstream.breaker import CircuitOpen
from gateway.upstream.request import UpstreamRequest
from gateway.upstream.stack import Upstream

A, B, C = "http://a.test:1", "http://b.test:2", "http://c.test:3"
RETRY = {"attempts": 3, "backoff": "1ms", "max_backoff": "1ms"}


def answer(status: int) -> Response:
    return Response(status, CIMultiDict(), b"", source="upstream")


def stack(sender: MockSender, metrics: Metrics, **config: Any) -> Upstream:
    """An upstream ``svc`` whose innermost hop is ``sender``."""
    return Upstream("svc", UpstreamConfig.model_validate(config), Clients(), 1 << 20, sender=sender)


def requests_counted(metrics: Metrics, outcome: str, code: str = "") -> float:
    value = metrics.registry.get_sample_value(
        "gateway_upstream_requests_total", {"route": "test", "upstream": "svc", "code": code, "outcome": outcome})
    return value or 0.0


async def test_without_policies_one_call_goes_to_the_balancer_s_pick() -> None:
    sender = MockSender(lambda _: answer(503))
    metrics = Metrics()
    call = stack(sender, metrics, targets=[A, B]).stack("test", metrics)
    assert (await call(upstream_request())).status == 503
    assert (await call(upstream_request())).status == 503
    assert sender.calls == [(A, 1), (B, 1)]  # no retry layer: one attempt each, round robin
    assert requests_counted(metrics, "http_error", "503") == 2


async def test_retries_go_to_targets_not_tried_yet() -> None:
    sender = MockSender(lambda _: answer(503))
    metrics = Metrics()
    call = stack(sender, metrics, targets=[A, B, C], retry=RETRY).stack("test", metrics)
    assert (await call(upstream_request())).status == 503
    assert sorted(sender.targets) == [A, B, C]
    assert [attempt for _, attempt in sender.calls] == [1, 2, 3]
    assert [h["X-Gateway-Attempt"] for h in sender.headers] == ["1", "2", "3"]


async def test_scope_upstream_breaker_sits_inside_retry_and_stops_it_when_it_opens() -> None:
    sender = MockSender(lambda _: answer(503))
    metrics = Metrics()
    up = stack(sender, metrics, targets=[A, B], retry=RETRY, breaker={"failures": 2, "reset_timeout": "60s"})
    call = up.stack("test", metrics)
    # Two attempts fail and open the one breaker; the retry layer sees nothing available and stops.
    assert (await call(upstream_request())).status == 503
    assert sender.calls == [(A, 1), (B, 2)]
    with pytest.raises(CircuitOpen):
        await call(upstream_request())
    assert len(sender.calls) == 2  # the open breaker answered before the balancer picked a target
    assert requests_counted(metrics, "circuit_open") == 1
    assert requests_counted(metrics, "http_error", "503") == 2


async def test_scope_target_breaker_sits_below_the_balancer() -> None:
    def a_refuses(request: UpstreamRequest) -> Response:
        if request.target == A:
            raise UpstreamConnectError("refused")
        return answer(200)

    sender = MockSender(a_refuses)
    metrics = Metrics()
    up = stack(sender, metrics, targets=[A, B], retry=RETRY,
               breaker={"failures": 1, "reset_timeout": "60s", "scope": "target"})
    call = up.stack("test", metrics)
    assert (await call(upstream_request())).status == 200
    assert sender.calls == [(A, 1), (B, 2)]  # A's breaker opened; the retry went to B
    for _ in range(4):
        assert (await call(upstream_request())).status == 200
    assert sender.targets[2:] == [B] * 4  # the balancer skips the target whose breaker is open
    assert requests_counted(metrics, "connect_error") == 1
    assert requests_counted(metrics, "ok", "200") == 5
    assert requests_counted(metrics, "circuit_open") == 0


async def test_an_error_without_an_outcome_is_neither_retried_nor_counted() -> None:
    class ClientGaveUp(GatewayError):
        status = 408
        outcome = None

    def broke_off(_: UpstreamRequest) -> Response:
        raise ClientGaveUp("the client stopped sending its body")

    sender = MockSender(broke_off)
    metrics = Metrics()
    call = stack(sender, metrics, targets=[A, B], retry=RETRY).stack("test", metrics)
    with pytest.raises(ClientGaveUp):
        await call(upstream_request())
    assert sender.calls == [(A, 1)]
    total = metrics.registry.get_sample_value(
        "gateway_upstream_duration_seconds_count", {"route": "test", "upstream": "svc"})
    assert not total
