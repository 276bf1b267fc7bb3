"""The circuit breaker's state machine, driven by a fake clock (no I/O)."""

from __future__ import annotations

import pytest

from gateway.config_model import BreakerConfig
from gateway.upstream.breaker import CLOSED, HALF_OPEN, OPEN, Breaker, BreakerGroup, CircuitOpen
from tests.support.units import Clock

A, B = "http://a:1", "http://b:1"


def breaker_config(**options: object) -> BreakerConfig:
    return BreakerConfig.model_validate(options)


def make(
    failures: int = 3, reset: float = 10.0, probes: int = 1
) -> tuple[Breaker, Clock[float], list[tuple[str, str]]]:
    clock = Clock(1000.0)
    changes: list[tuple[str, str]] = []
    config = breaker_config(failures=failures, reset_timeout=f"{reset}s", half_open_probes=probes)
    breaker = Breaker(config, clock=clock, on_change=lambda _b, old, new, _local: changes.append((old, new)))
    return breaker, clock, changes


def call(breaker: Breaker, failed: bool | None) -> None:
    probe = breaker.admit()
    breaker.record(failed, probe)


def test_opens_after_failures_in_a_row() -> None:
    breaker, _, changes = make(failures=3)
    call(breaker, True)
    call(breaker, True)
    assert breaker.state == CLOSED
    call(breaker, True)
    assert breaker.state == OPEN
    assert changes == [(CLOSED, OPEN)]


def test_a_success_resets_the_failure_streak() -> None:
    breaker, _, _ = make(failures=2)
    for _ in range(5):
        call(breaker, True)
        call(breaker, False)
    assert breaker.state == CLOSED


def test_neutral_outcomes_count_for_nothing() -> None:
    breaker, _, _ = make(failures=2)
    call(breaker, True)
    call(breaker, None)  # e.g. the client went away
    assert breaker.state == CLOSED
    call(breaker, True)
    assert breaker.state == OPEN  # the neutral call did not reset the streak either


def test_open_rejects_with_retry_after_until_reset_timeout() -> None:
    breaker, clock, _ = make(failures=1, reset=10.0)
    call(breaker, True)
    clock.now += 2.5
    with pytest.raises(CircuitOpen) as caught:
        breaker.admit()
    assert caught.value.status == 503
    assert caught.value.headers["Retry-After"] == "8"  # 7.5 s left, rounded up
    assert caught.value.outcome == "circuit_open"
    assert not breaker.available()


def test_after_reset_timeout_one_probe_then_rejects_the_rest() -> None:
    breaker, clock, changes = make(failures=1, reset=10.0, probes=1)
    call(breaker, True)
    clock.now += 10.0
    assert breaker.available()
    assert breaker.admit() is True
    assert breaker.state == HALF_OPEN
    for _ in range(9):
        with pytest.raises(CircuitOpen) as caught:
            breaker.admit()
        assert caught.value.headers["Retry-After"] == "1"
    breaker.record(False, True)
    assert breaker.state == CLOSED
    assert changes == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED)]


def test_half_open_admits_the_configured_number_of_probes() -> None:
    breaker, clock, _ = make(failures=1, reset=1.0, probes=3)
    call(breaker, True)
    clock.now += 1.0
    assert [breaker.admit() for _ in range(3)] == [True, True, True]
    with pytest.raises(CircuitOpen):
        breaker.admit()


def test_failed_probe_reopens_for_another_reset_timeout() -> None:
    breaker, clock, changes = make(failures=1, reset=5.0)
    call(breaker, True)
    clock.now += 5.0
    call(breaker, True)  # the probe fails
    assert breaker.state == OPEN
    assert changes[-1] == (HALF_OPEN, OPEN)
    clock.now += 4.0
    with pytest.raises(CircuitOpen):
        breaker.admit()
    clock.now += 1.0
    assert breaker.admit() is True


def test_cancelled_probe_frees_its_slot_without_deciding() -> None:
    breaker, clock, _ = make(failures=1, reset=1.0)
    call(breaker, True)
    clock.now += 1.0
    breaker.record(None, breaker.admit())
    assert breaker.state == HALF_OPEN
    assert breaker.admit() is True  # the next caller gets to probe


def test_late_answer_from_before_the_trip_is_ignored() -> None:
    breaker, _, _ = make(failures=1)
    slow = breaker.admit()  # a call in flight while another one trips the breaker
    call(breaker, True)
    breaker.record(False, slow)
    assert breaker.state == OPEN


def test_trip_from_another_replica_opens_for_the_time_left_and_is_not_local() -> None:
    clock = Clock(1000.0)
    seen: list[bool] = []
    breaker = Breaker(breaker_config(reset_timeout="10s"), clock=clock,
                      on_change=lambda _b, _old, new, local: seen.append(local) if new == OPEN else None)
    breaker.trip(4.0)
    assert breaker.state == OPEN
    assert breaker.remaining() == pytest.approx(4.0)
    assert seen == [False]


def test_group_per_target_blocks_only_the_open_target() -> None:
    group = BreakerGroup(breaker_config(failures=1, scope="target"), (A, B))
    assert group.blocked() == frozenset()
    call(group.breakers[A], True)
    assert group.blocked() == {A}
    assert group.state() == HALF_OPEN  # degraded: one circuit open
    assert group.available()
    call(group.breakers[B], True)
    assert group.state() == OPEN
    assert not group.available()


def test_group_per_upstream_has_one_breaker() -> None:
    group = BreakerGroup(breaker_config(failures=1), (A, B))
    assert list(group.breakers) == [""]
    call(group.single, True)
    assert group.state() == OPEN
    assert group.blocked() == frozenset()  # upstream scope: the layer rejects, not the balancer


def test_a_call_admitted_before_the_trip_never_decides_half_open() -> None:
    clock = [0.0]
    breaker = Breaker(breaker_config(failures=1, reset_timeout="1s"), clock=lambda: clock[0])
    slow = breaker.admit()  # a long call starts while closed
    before = breaker.generation
    breaker.record(True, breaker.admit(), breaker.generation)  # another call fails: open
    assert breaker.state == "open"
    clock[0] = 2.0
    probe = breaker.admit()  # half-open: the one probe is in flight
    assert breaker.state == "half_open"
    breaker.record(False, slow, before)  # the old call answers 200 late: ignored
    assert breaker.state == "half_open"
    breaker.record(False, probe, breaker.generation)  # the probe decides
    assert breaker.state == "closed"
