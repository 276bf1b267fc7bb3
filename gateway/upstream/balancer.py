"""Choosing a target of an upstream: round_robin, least_requests, random (weights optional)."""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence

from gateway.errors import ServiceUnavailable


class Balancer:
    """Picks one of an upstream's targets per call and tracks calls in flight per target.

    ``pick`` skips targets in ``exclude`` (e.g. already tried, or marked down);
    ``pick_avoiding`` relaxes a list of exclusions until one leaves a target.
    """

    def __init__(self, policy: str, targets: Sequence[str], weights: Sequence[int] | None = None) -> None:
        self.policy = policy
        self.targets = tuple(targets)
        self.weights = tuple(weights) if weights else tuple(1 for _ in targets)
        self.inflight = dict.fromkeys(self.targets, 0)
        # A weighted round robin is a cycle over targets repeated by weight, interleaved.
        ring = _interleave(self.targets, self.weights)
        self._ring = ring
        self._cycle = itertools.cycle(range(len(ring)))
        self._rng = random.Random()

    def pick(self, exclude: frozenset[str] | set[str] = frozenset()) -> str:
        candidates = self.targets if not exclude else tuple(t for t in self.targets if t not in exclude)
        if not candidates:
            raise ServiceUnavailable("no healthy target is available for this upstream")
        if len(self.targets) == 1:
            return candidates[0]
        if self.policy == "least_requests":
            return min(candidates, key=self._load)
        if self.policy == "random":
            weights = [self.weights[self.targets.index(t)] for t in candidates]
            return self._rng.choices(candidates, weights)[0]
        for _ in range(len(self._ring)):
            target = self._ring[next(self._cycle)]
            if target in candidates:
                return target
        return candidates[0]

    def pick_avoiding(self, *excludes: frozenset[str] | set[str]) -> str:
        """Pick with the first exclusion set that leaves a target (most avoided first)."""
        for exclude in excludes:
            if any(t not in exclude for t in self.targets):
                return self.pick(exclude)
        raise ServiceUnavailable("no healthy target is available for this upstream")

    def _load(self, target: str) -> float:
        return self.inflight[target] / self.weights[self.targets.index(target)]

    def acquire(self, target: str) -> None:
        self.inflight[target] += 1

    def release(self, target: str) -> None:
        self.inflight[target] -= 1


def _interleave(targets: Sequence[str], weights: Sequence[int]) -> tuple[str, ...]:
    """Smooth weighted order: for weights 2,1 → a, b, a (not a, a, b)."""
    current = [0] * len(targets)
    total = sum(weights)
    out = []
    for _ in range(total):
        for i, weight in enumerate(weights):
            current[i] += weight
        best = max(range(len(targets)), key=current.__getitem__)
        current[best] -= total
        out.append(targets[best])
    return tuple(out)
