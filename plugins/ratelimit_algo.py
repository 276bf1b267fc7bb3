"""Rate-limit arithmetic: GCRA (the generic cell rate algorithm) over one or more limits.

Pure functions of integers (microseconds), no clock and no I/O: the local store calls
``decide`` with its own clock, and the Redis store's Lua script is a line-by-line copy of it
that uses Redis ``TIME``. Both return the same thing, the *debt* of each limit after the
decision, and ``verdict`` turns debts into what the headers say.

GCRA, for ``limit`` requests per ``window``:

- ``interval`` T = window / limit (rounded down to a whole microsecond, at least 1 µs);
- per key, one number: the theoretical arrival time ``tat``; the debt is ``max(tat - now, 0)``;
- a request passes iff ``debt <= (limit - 1) * T``; when it passes, ``tat = now + debt + T``.

So a key that has been idle for a window gets exactly ``limit`` requests at once, and then
one more every T: the quota refills continuously instead of all at once at a window edge.
Accuracy: exact for that rule (integer microseconds, no drift, no approximation); over a long
run exactly ``limit`` per ``window``; a burst is never larger than ``limit``; any interval of
length ``window`` admits at most ``2 * limit - 1`` (a full burst, then the refill during the
window). Rounding T down makes the refill at most ``limit`` µs per window early.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

MICROS = 1_000_000


@dataclass(frozen=True, slots=True)
class Limit:
    """``limit`` requests per ``window_us`` microseconds, in GCRA terms."""

    limit: int
    window_us: int
    interval_us: int  # T: the time one request's quota takes to come back
    tolerance_us: int  # (limit - 1) * T: the largest debt that still lets a request pass

    @classmethod
    def of(cls, limit: int, window_seconds: float) -> Limit:
        """Build a limit; ValueError when it cannot be honoured to the microsecond."""
        window_us = round(window_seconds * MICROS)
        if limit < 1:
            raise ValueError(f"limit must be a positive integer, got {limit}")
        if window_us < limit:
            raise ValueError(f"{limit} requests per {window_seconds:g}s is finer than one per microsecond")
        interval = window_us // limit
        return cls(limit, window_us, interval, (limit - 1) * interval)

    @property
    def window_seconds(self) -> int:
        """The window in whole seconds, as the RateLimit headers state it."""
        return -(-self.window_us // MICROS)


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether the request passed, and each limit's debt (µs) after the decision."""

    allowed: bool
    debts: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Quota:
    """What the response headers say: the most restrictive limit's state."""

    index: int  # which limit (position in the configured list)
    limit: int
    window: int  # seconds
    remaining: int
    reset: int  # seconds until more quota is available (0: nothing used); on a denial, >= 1


def decide(limits: Sequence[Limit], tats: Sequence[int], now: int) -> Decision:
    """One GCRA decision over every limit: passes only if all pass; then every limit is charged.

    ``tats`` are the stored theoretical arrival times (0 for a key never seen).
    """
    if len(limits) == 1:  # the common case, without the loops
        lim, tat = limits[0], tats[0]
        debt = tat - now if tat > now else 0
        if debt <= lim.tolerance_us:
            return Decision(True, (debt + lim.interval_us,))
        return Decision(False, (debt,))
    debts = [tat - now if tat > now else 0 for tat in tats]
    allowed = all(debt <= lim.tolerance_us for debt, lim in zip(debts, limits, strict=True))
    if allowed:
        debts = [debt + lim.interval_us for debt, lim in zip(debts, limits, strict=True)]
    return Decision(allowed, tuple(debts))


def remaining(lim: Limit, debt: int) -> int:
    """Requests that would pass right now, given a limit's debt."""
    return max(0, lim.limit - ceil_div(debt, lim.interval_us))


def next_unit_us(lim: Limit, debt: int) -> int:
    """Microseconds until one more request's quota comes back (0 when nothing is used)."""
    if debt <= 0:
        return 0
    used = min(ceil_div(debt, lim.interval_us), lim.limit)
    return debt - (used - 1) * lim.interval_us


def verdict(limits: Sequence[Limit], decision: Decision) -> Quota:
    """The headers' view: on a denial the limit that makes the client wait longest, else the
    one with the fewest requests left (ties: the later reset)."""
    if len(limits) == 1:
        lim, debt = limits[0], decision.debts[0]
        if decision.allowed:
            return Quota(0, lim.limit, lim.window_seconds, remaining(lim, debt),
                         ceil_div(next_unit_us(lim, debt), MICROS))
        return Quota(0, lim.limit, lim.window_seconds, 0, max(ceil_div(debt - lim.tolerance_us, MICROS), 1))
    best: tuple[int, int, int] | None = None  # (index, remaining, reset µs)
    for index, (lim, debt) in enumerate(zip(limits, decision.debts, strict=True)):
        if decision.allowed:
            left, wait = remaining(lim, debt), next_unit_us(lim, debt)
            better = best is None or left < best[1] or (left == best[1] and wait > best[2])
        else:
            if debt <= lim.tolerance_us:
                continue
            left, wait = 0, debt - lim.tolerance_us
            better = best is None or wait > best[2]
        if better:
            best = (index, left, wait)
    if best is None:  # only when called with no limits at all
        raise ValueError("verdict needs at least one limit")
    index, left, wait = best
    lim = limits[index]
    reset = ceil_div(wait, MICROS)
    return Quota(index, lim.limit, lim.window_seconds, left, reset if decision.allowed else max(reset, 1))


def ceil_div(a: int, b: int) -> int:
    """Integer division rounding up (for non-negative ``a`` and positive ``b``)."""
    return -(-a // b)
