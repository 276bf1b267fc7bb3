"""Target health (docs/resilience.md): active probes in the background, passive marking from real calls.

A target is marked down after ``unhealthy_after`` failures in a row — failed probes, or
real calls that could not connect or got a 5xx — and up again only by active probes, after
``healthy_after`` good ones in a row. The two failure streaks are kept apart so a good probe
does not hide a target that fails every real call. Without a ``health`` table nothing is
ever marked down (no probe could bring a target back).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import aiohttp

from gateway.config_model import HealthConfig

if TYPE_CHECKING:
    from gateway.clients import Clients

log = logging.getLogger("gateway.upstream.health")
PROBE_HEADERS = {"User-Agent": "gateway-health-check"}


class Health:
    """Up/down per target of one upstream; ``on_change(target, up)`` on every flip."""

    def __init__(self, targets: Iterable[str], config: HealthConfig) -> None:
        self.config = config
        self.targets = tuple(targets)
        self.down: set[str] = set()
        self.on_change: Callable[[str, bool], None] | None = None
        self._passive_failures = dict.fromkeys(self.targets, 0)
        self._probe_failures = dict.fromkeys(self.targets, 0)
        self._probe_successes = dict.fromkeys(self.targets, 0)

    def is_up(self, target: str) -> bool:
        return target not in self.down

    def all_down(self) -> bool:
        return len(self.down) == len(self.targets)

    def passive(self, target: str, ok: bool) -> None:
        """The result of a real call: connect error or 5xx is a failure."""
        if ok:
            self._passive_failures[target] = 0
            return
        failures = self._passive_failures[target] = self._passive_failures[target] + 1
        if failures >= self.config.unhealthy_after:
            self._mark(target, up=False)

    def probed(self, target: str, ok: bool) -> None:
        """The result of one active probe."""
        if ok:
            self._probe_failures[target] = 0
            successes = self._probe_successes[target] = self._probe_successes[target] + 1
            if successes >= self.config.healthy_after:
                self._mark(target, up=True)
        else:
            self._probe_successes[target] = 0
            failures = self._probe_failures[target] = self._probe_failures[target] + 1
            if failures >= self.config.unhealthy_after:
                self._mark(target, up=False)

    def _mark(self, target: str, *, up: bool) -> None:
        if up == (target not in self.down):
            return
        if up:
            self.down.discard(target)
            self._passive_failures[target] = 0
            log.warning("upstream target %s is up again", target)
        else:
            self.down.add(target)
            self._probe_successes[target] = 0  # coming back takes healthy_after fresh probes
            log.warning("upstream target %s is marked down", target)
        if self.on_change is not None:
            self.on_change(target, up)

    async def run(self, clients: Clients) -> None:
        """Probe every target each ``interval`` until cancelled."""
        limit = aiohttp.ClientTimeout(total=self.config.timeout)
        path = self.config.path if self.config.path.startswith("/") else "/" + self.config.path
        while True:
            try:
                session = clients.session
            except RuntimeError:  # between shutdown and a restart: nothing to probe with
                session = None
            if session is not None and not session.closed:
                try:
                    await asyncio.gather(*(self._probe(session, target + path, target, limit)
                                           for target in self.targets))
                except Exception:  # keep checking whatever one round did
                    log.exception("health check round failed")
            await asyncio.sleep(self.config.interval)

    async def _probe(self, session: aiohttp.ClientSession, url: str, target: str,
                     limit: aiohttp.ClientTimeout) -> None:
        try:
            async with session.get(url, timeout=limit, allow_redirects=False,
                                   headers=PROBE_HEADERS) as response:
                ok = 200 <= response.status < 400
        except (aiohttp.ClientError, OSError, TimeoutError):
            ok = False
        self.probed(target, ok)
