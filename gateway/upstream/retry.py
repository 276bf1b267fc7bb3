"""Retries (docs/resilience.md): which failures are retried, when, how often, and the loop itself.

aiohttp-retry's ``ExponentialRetry`` gives the backoff ceiling; the loop is ours because its
RetryClient is unsafe here (docs/resilience.md): every failed response is released before the
sleep, only replayable bodies are sent again, and the route deadline and a retry budget
bound the whole thing.

    retryable?  status in ``on`` or "timeout"/"reset" in ``on``  → idempotent methods only
                "connect" in ``on`` (nothing was sent)          → any method
                an error's kind is read off its upstream outcome (``KINDS``); an error
                without one (the client's body, no usable target) is never retried
    body        bytes or buffered → replayable; a Content-Length ≤ REPLAY_LIMIT is buffered
                first (idempotent methods); a streamed body is sent again only when the
                failed attempt never started reading it (a connect error)
    wait        full jitter: uniform(0, min(max_backoff, backoff · 2^(n-1))); an upstream
                Retry-After ≤ max_backoff is waited for, a longer one ends the retries
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING

from aiohttp_retry import ExponentialRetry

from gateway.compose import Layer
from gateway.config_model import RetryConfig
from gateway.errors import GatewayError, UpstreamOutcome
from gateway.http import Body, Response
from gateway.upstream.request import IDEMPOTENT, UpstreamRequest

if TYPE_CHECKING:  # prometheus_client must not be imported before multiprocess mode is set up
    from prometheus_client import Counter

# Retried by default: the idempotent methods a route proxies (TRACE is answered 405 unless named).
RETRY_METHODS = IDEMPOTENT - {"TRACE"}
REPLAY_LIMIT = 64 * 1024  # request bodies up to this Content-Length are buffered so they can be replayed
ATTEMPT_HEADER = "X-Gateway-Attempt"

# An error's upstream outcome → the ``on`` entry it matches (the retry metric's reason).
# Outcomes not listed (circuit_open) are never retried.
KINDS: Mapping[UpstreamOutcome, str] = {"connect_error": "connect", "timeout": "timeout", "reset": "reset"}


def retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds asked for by a ``Retry-After`` header (delta-seconds or HTTP-date), else None."""
    value = headers.get("Retry-After")
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def failure_kind(error: BaseException) -> str | None:
    """``connect``, ``timeout`` or ``reset`` for a failed upstream call; None for other errors."""
    outcome = error.outcome if isinstance(error, GatewayError) else None
    return KINDS.get(outcome) if outcome is not None else None


class RetryPolicy:
    """One upstream's ``retry`` table, made ready to answer per attempt."""

    def __init__(self, config: RetryConfig, rng: random.Random | None = None) -> None:
        self.attempts = config.attempts
        self.methods = frozenset(m.upper() for m in config.methods) if config.methods is not None else RETRY_METHODS
        self.statuses = frozenset(x for x in config.on if isinstance(x, int))
        self.kinds = frozenset(x for x in config.on if isinstance(x, str))
        self.max_backoff = config.max_backoff
        self._schedule = ExponentialRetry(attempts=config.attempts, start_timeout=config.backoff,
                                          max_timeout=config.max_backoff, factor=2.0)
        self._uniform = (rng or random.Random()).uniform

    def reason(self, response: Response | None, error: BaseException | None) -> str | None:
        """The entry of ``on`` this outcome matches (the metric's reason label), else None."""
        if error is not None:
            kind = failure_kind(error)
            return kind if kind in self.kinds else None
        if response is not None and response.status in self.statuses:
            return str(response.status)
        return None

    def may_retry(self, method: str, reason: str, *, replayable: bool, unsent: bool) -> bool:
        """Whether an attempt that failed for ``reason`` may be sent again."""
        if reason == "connect":
            return replayable or unsent
        return replayable and method in self.methods

    def ceiling(self, retry: int) -> float:
        """The longest wait before retry number ``retry`` (1 for the first retry)."""
        return float(self._schedule.get_timeout(retry - 1))

    def delay(self, retry: int, response: Response | None) -> float | None:
        """The wait before retry ``retry``; None when the upstream asked for more than max_backoff."""
        wait = self._uniform(0.0, self.ceiling(retry))
        asked = retry_after(response.headers) if response is not None else None
        if asked is None:
            return wait
        return max(wait, asked) if asked <= self.max_backoff else None


class RetryBudget:
    """Retries in flight for one upstream stay ≤ max(minimum, ratio * requests in flight)."""

    __slots__ = ("requests", "retries", "ratio", "minimum")

    def __init__(self, ratio: float = 0.2, minimum: int = 3) -> None:
        self.requests = 0
        self.retries = 0
        self.ratio = ratio
        self.minimum = minimum

    def acquire(self) -> bool:
        if self.retries >= max(self.minimum, self.requests * self.ratio):
            return False
        self.retries += 1
        return True

    def release(self) -> None:
        self.retries -= 1


def retry_layer(policy: RetryPolicy, budget: RetryBudget, available: Callable[[], bool],
                counter: Counter, route: str, upstream: str) -> Layer[UpstreamRequest, Response]:
    """The retry loop around breaker → balancer → client. ``available()`` says whether any
    target could take a call now (healthy, breaker not open); no retry is made otherwise."""
    counts: dict[str, Counter] = {}

    def count(reason: str) -> None:
        child = counts.get(reason)
        if child is None:
            child = counts[reason] = counter.labels(route, upstream, reason)
        child.inc()

    async def retry(request: UpstreamRequest, call_next: Callable[[UpstreamRequest], Awaitable[Response]]
                    ) -> Response:
        body = request.body
        if (isinstance(body, Body) and not body.buffered and request.method in policy.methods
                and body.length is not None and body.length <= REPLAY_LIMIT):
            await body.read()  # a broken upload raises its own 413/408 here
        replayable = not isinstance(body, Body) or body.buffered
        loop = asyncio.get_running_loop()
        tried = request.tried = set()
        budget.requests += 1
        holding = False
        try:
            attempt = 1
            while True:
                request.attempt = attempt
                request.headers[ATTEMPT_HEADER] = str(attempt)
                response: Response | None = None
                error: GatewayError | None = None
                try:
                    response = await call_next(request)
                except GatewayError as exc:
                    error = exc
                finally:
                    if holding:
                        budget.release()
                        holding = False
                reason = policy.reason(response, error)
                if reason is None or attempt >= policy.attempts:
                    break
                unsent = isinstance(body, Body) and not body.buffered  # the stream was never started
                if not policy.may_retry(request.method, reason, replayable=replayable, unsent=unsent):
                    break
                delay = policy.delay(attempt, response)
                if delay is None or loop.time() + delay >= request.deadline or not available():
                    break
                if not budget.acquire():
                    break
                holding = True
                count(reason)
                tried.add(request.target)
                if response is not None:
                    response.release()  # give the connection back before sleeping
                await asyncio.sleep(delay)
                attempt += 1
        finally:
            budget.requests -= 1
            if holding:
                budget.release()
        if error is not None:
            raise error
        if response is None:  # pragma: no cover - one of the two is always set
            raise RuntimeError("retry loop ended without an answer")
        return response

    return retry
