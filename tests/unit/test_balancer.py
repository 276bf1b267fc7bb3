"""Choosing an upstream target: round_robin, weighted, least_requests, random, exclusions."""

from __future__ import annotations

from collections import Counter

import pytest

from gateway.errors import ServiceUnavailable
from gateway.upstream.balancer import Balancer

A, B, C = "http://a:1", "http://b:1", "http://c:1"


def picks(balancer: Balancer, n: int, exclude: frozenset[str] = frozenset()) -> list[str]:
    return [balancer.pick(exclude) for _ in range(n)]


def test_round_robin_cycles_in_order() -> None:
    assert picks(Balancer("round_robin", [A, B, C]), 7) == [A, B, C, A, B, C, A]


@pytest.mark.parametrize(
    ("weights", "order"),
    [
        ([1, 1], "abab"),
        ([2, 1], "aba"),  # smooth: not a, a, b
        ([1, 2], "bab"),
        ([3, 1], "aaba"),
        ([5, 1, 1], "aabacaa"),  # nginx's classic example
        ([1, 1, 1], "abc"),
    ],
)
def test_weighted_round_robin_is_smooth(weights: list[int], order: str) -> None:
    targets = {"a": A, "b": B, "c": C}
    balancer = Balancer("round_robin", [A, B, C][: len(weights)], weights)
    expected = [targets[letter] for letter in order]
    assert picks(balancer, len(order) * 2) == expected * 2


def test_weights_set_the_share_of_picks() -> None:
    counts = Counter(picks(Balancer("round_robin", [A, B, C], [5, 3, 2]), 100))
    assert counts == {A: 50, B: 30, C: 20}


def test_round_robin_skips_excluded_targets() -> None:
    balancer = Balancer("round_robin", [A, B, C])
    got = picks(balancer, 4, exclude=frozenset({B}))
    assert B not in got
    assert Counter(got) == {A: 2, C: 2}


def test_single_target_is_always_picked() -> None:
    assert picks(Balancer("least_requests", [A]), 3) == [A, A, A]


def test_least_requests_picks_the_least_loaded() -> None:
    balancer = Balancer("least_requests", [A, B, C])
    for target, calls in ((A, 3), (B, 1), (C, 2)):
        for _ in range(calls):
            balancer.acquire(target)
    assert balancer.pick() == B
    balancer.acquire(B)
    balancer.acquire(B)  # B: 3, C: 2
    assert balancer.pick() == C
    for _ in range(3):
        balancer.release(A)  # A: 0
    assert balancer.pick() == A
    assert balancer.pick(frozenset({A})) == C


def test_least_requests_divides_load_by_weight() -> None:
    balancer = Balancer("least_requests", [A, B], [4, 1])
    for _ in range(3):
        balancer.acquire(A)  # 3/4 per weight
    balancer.acquire(B)  # 1/1 per weight
    assert balancer.pick() == A


def test_acquire_and_release_track_inflight() -> None:
    balancer = Balancer("least_requests", [A, B])
    balancer.acquire(A)
    balancer.acquire(A)
    balancer.release(A)
    assert balancer.inflight == {A: 1, B: 0}


def test_random_only_picks_allowed_targets_and_all_of_them() -> None:
    balancer = Balancer("random", [A, B, C])
    assert set(picks(balancer, 300)) == {A, B, C}
    assert set(picks(balancer, 100, exclude=frozenset({A}))) == {B, C}


@pytest.mark.parametrize("policy", ["round_robin", "least_requests", "random"])
def test_exclude_leaves_the_only_remaining_target(policy: str) -> None:
    balancer = Balancer(policy, [A, B, C])
    assert picks(balancer, 5, exclude=frozenset({A, C})) == [B] * 5


@pytest.mark.parametrize("policy", ["round_robin", "least_requests", "random"])
@pytest.mark.parametrize("targets", [[A], [A, B, C]])
def test_all_excluded_is_service_unavailable(policy: str, targets: list[str]) -> None:
    balancer = Balancer(policy, targets)
    with pytest.raises(ServiceUnavailable) as caught:
        balancer.pick(frozenset(targets))
    assert caught.value.status == 503


@pytest.mark.parametrize("policy", ["round_robin", "least_requests", "random"])
def test_pick_avoiding_uses_the_first_exclusion_that_leaves_a_target(policy: str) -> None:
    balancer = Balancer(policy, [A, B, C])
    # tried {A, B} and down {C}: everything excluded, so the next set (down only) decides
    assert {balancer.pick_avoiding({A, B, C}, {C}) for _ in range(20)} <= {A, B}
    assert picks_avoiding(balancer, 10, {A}, set()) <= {B, C}
    assert picks_avoiding(balancer, 5, {A, C}) == {B}


def picks_avoiding(balancer: Balancer, n: int, *excludes: set[str]) -> set[str]:
    return {balancer.pick_avoiding(*excludes) for _ in range(n)}


def test_pick_avoiding_when_every_set_excludes_all_is_service_unavailable() -> None:
    balancer = Balancer("round_robin", [A, B])
    with pytest.raises(ServiceUnavailable):
        balancer.pick_avoiding({A, B}, {A, B})
    with pytest.raises(ServiceUnavailable):
        balancer.pick_avoiding()


def test_round_robin_keeps_its_order_when_a_retry_avoids_the_tried_target() -> None:
    balancer = Balancer("round_robin", [A, B, C])
    assert balancer.pick() == A
    assert balancer.pick_avoiding({A}) == B  # the retry goes on to the next target
    assert balancer.pick() == C
