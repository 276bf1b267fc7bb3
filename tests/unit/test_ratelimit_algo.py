"""GCRA arithmetic (plugins.ratelimit_algo), table-driven, no clock and no I/O."""

from __future__ import annotations

import pytest

from plugins.ratelimit_algo import MICROS, Decision, Limit, Quota, ceil_div, decide, next_unit_us, remaining, verdict

S = MICROS  # one second in µs


@pytest.mark.parametrize(
    ("limit", "window", "interval", "tolerance", "seconds"),
    [
        (1, 1, S, 0, 1),
        (5, 60, 12 * S, 48 * S, 60),
        (3, 1, 333_333, 666_666, 1),  # T rounded down to a whole µs
        (1000, 3600, 3_600_000, 999 * 3_600_000, 3600),
        (1_000_000, 1, 1, 999_999, 1),
    ],
)
def test_limit_of(limit: int, window: float, interval: int, tolerance: int, seconds: int) -> None:
    lim = Limit.of(limit, window)
    assert (lim.limit, lim.window_us, lim.interval_us, lim.tolerance_us, lim.window_seconds) == (
        limit, round(window * S), interval, tolerance, seconds)


@pytest.mark.parametrize(("limit", "window"), [(0, 1), (-1, 1), (1_000_001, 1), (2, 0.000001)])
def test_limit_of_rejects_what_cannot_be_honoured(limit: int, window: float) -> None:
    with pytest.raises(ValueError):
        Limit.of(limit, window)


FIVE_PER_MINUTE = Limit.of(5, 60)


@pytest.mark.parametrize(
    ("tats", "now", "expected"),
    [
        ((0,), 1000 * S, Decision(True, (12 * S,))),  # never seen: a full bucket
        ((999 * S,), 1000 * S, Decision(True, (12 * S,))),  # an expired tat counts as none
        ((1000 * S + 12 * S,), 1000 * S, Decision(True, (24 * S,))),
        ((1000 * S + 48 * S,), 1000 * S, Decision(True, (60 * S,))),  # the 5th of a burst: debt == tolerance
        ((1000 * S + 48 * S + 1,), 1000 * S, Decision(False, (48 * S + 1,))),  # 1 µs too early
        ((1000 * S + 60 * S,), 1000 * S, Decision(False, (60 * S,))),
        ((1000 * S + 60 * S,), 1012 * S, Decision(True, (60 * S,))),  # one interval later: one more
    ],
)
def test_decide_one_limit(tats: tuple[int, ...], now: int, expected: Decision) -> None:
    assert decide([FIVE_PER_MINUTE], tats, now) == expected


def test_decide_several_limits_charges_all_or_none() -> None:
    per_second, per_hour = Limit.of(2, 1), Limit.of(3, 3600)
    limits = [per_second, per_hour]
    now = 10 * S
    # The hourly limit is spent: the per-second one passes alone, yet nothing is charged.
    spent = (0, now + 3 * 1200 * S)
    assert decide(limits, spent, now) == Decision(False, (0, 3600 * S))
    # Both pass: both are charged.
    assert decide(limits, (0, 0), now) == Decision(True, (S // 2, 1200 * S))
    # The per-second limit is spent: denied although the hourly one has room.
    assert decide(limits, (now + S, 0), now) == Decision(False, (S, 0))


def test_a_burst_at_one_instant_passes_exactly_limit() -> None:
    for limit in (1, 2, 7, 10, 100):
        lim, tat, passed = Limit.of(limit, 60), 0, 0
        for _ in range(limit * 3):
            decision = decide([lim], (tat,), 5 * S)
            if decision.allowed:
                passed += 1
                tat = 5 * S + decision.debts[0]
        assert passed == limit


def test_steady_traffic_gets_the_rate_and_no_window_gets_more_than_twice_the_limit() -> None:
    lim = Limit.of(10, 1)  # T = 100 ms
    tat, times = 0, []
    for step in range(3000):  # a request every millisecond for 3 s
        now = step * 1000
        decision = decide([lim], (tat,), now)
        if decision.allowed:
            tat = now + decision.debts[0]
            times.append(now)
    assert len(times) == 10 + 29  # the burst, then one per 100 ms
    for i, start in enumerate(times):
        in_window = sum(1 for t in times[i:] if t < start + S)
        assert in_window <= 2 * 10 - 1


@pytest.mark.parametrize(
    ("debt", "left", "wait"),
    [
        (0, 5, 0),
        (1, 4, 1),
        (12 * S, 4, 12 * S),
        (12 * S + 1, 3, 1),
        (24 * S - 500_000, 3, 12 * S - 500_000),
        (60 * S, 0, 12 * S),
        (60 * S - 1, 0, 12 * S - 1),
        (70 * S, 0, 22 * S),  # a clock that went back: never a negative or short wait
    ],
)
def test_remaining_and_next_unit(debt: int, left: int, wait: int) -> None:
    assert remaining(FIVE_PER_MINUTE, debt) == left
    assert next_unit_us(FIVE_PER_MINUTE, debt) == wait


@pytest.mark.parametrize(
    ("decision", "expected"),
    [
        # One limit.
        (Decision(True, (12 * S,)), Quota(0, 5, 60, 4, 12)),
        (Decision(True, (60 * S - 1,)), Quota(0, 5, 60, 0, 12)),
        (Decision(False, (48 * S + 1,)), Quota(0, 5, 60, 0, 1)),  # 1 µs to wait: still 1 s, never 0
        (Decision(False, (59 * S + 400_000,)), Quota(0, 5, 60, 0, 12)),
    ],
)
def test_verdict_one_limit(decision: Decision, expected: Quota) -> None:
    assert verdict([FIVE_PER_MINUTE], decision) == expected


def test_verdict_several_limits_describes_the_most_restrictive() -> None:
    per_second, per_hour = Limit.of(2, 1), Limit.of(3, 3600)
    limits = [per_second, per_hour]
    # Fewest left wins.
    assert verdict(limits, Decision(True, (S // 2, 1200 * S))) == Quota(0, 2, 1, 1, 1)
    assert verdict(limits, Decision(True, (S // 2, 3 * 1200 * S))) == Quota(1, 3, 3600, 0, 1200)
    # Equal remaining: the later reset wins.
    assert verdict(limits, Decision(True, (S // 2, 2400 * S))) == Quota(1, 3, 3600, 1, 1200)
    # Denied: only denying limits count, the longest wait wins.
    assert verdict(limits, Decision(False, (S, 2000 * S))) == Quota(0, 2, 1, 0, 1)  # hourly: not denying
    assert verdict(limits, Decision(False, (S, 3 * 1200 * S))) == Quota(1, 3, 3600, 0, 1200)
    with pytest.raises(ValueError):
        verdict([], Decision(True, ()))


@pytest.mark.parametrize(("a", "b", "expected"), [(0, 5, 0), (1, 5, 1), (5, 5, 1), (6, 5, 2), (10, 5, 2)])
def test_ceil_div(a: int, b: int, expected: int) -> None:
    assert ceil_div(a, b) == expected
