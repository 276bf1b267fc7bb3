"""The check every security test ends with catches what it claims to catch."""

from __future__ import annotations

import contextlib

import pytest

from tests.security.recorder import Received, Recorder, assert_no_private, assert_upstream_clean


def _recorded(target: str, headers: list[tuple[str, str]] | None = None) -> Recorder:
    recorder = Recorder()
    recorder.requests.append(Received(f"GET {target} HTTP/1.1", headers or [("Host", "up")]))
    return recorder


@pytest.mark.parametrize(
    ("target", "clean"),
    [
        # dirty: the check fails
        pytest.param("/public/../private/x", False, id="dotdot"),
        pytest.param("/public/./x", False, id="dot"),
        pytest.param("/public/%2e%2E/x", False, id="enc-dotdot"),
        pytest.param("/public/..;/x", False, id="dotdot-semicolon"),
        pytest.param("/public/..%3B/x", False, id="dotdot-enc-semicolon"),
        pytest.param("/public/..%2Fx", False, id="dotdot-enc-slash"),
        pytest.param("/public/x%5C..%5Cy", False, id="enc-backslash-dotdot"),
        pytest.param("/public/x\\..\\y", False, id="backslash-dotdot"),
        pytest.param("/private/x", False, id="private-without-consumer"),
        pytest.param("/%70rivate/x", False, id="enc-private-without-consumer"),
        pytest.param("http://h/public/x", False, id="absolute-form"),
        pytest.param("//private/x", False, id="double-slash"),
        # clean: the check passes
        pytest.param("/public/%252e%252e/private/x", True, id="double-encoded"),
        pytest.param("/private./x", True, id="trailing-dot-name"),
        pytest.param("/public/a.b/...", True, id="dots-in-names"),
        pytest.param("/public/x?q=../..", True, id="dots-in-query"),
        pytest.param("/", True, id="root"),
    ],
)
def test_the_check_on_targets(target: str, clean: bool) -> None:
    with contextlib.nullcontext() if clean else pytest.raises(AssertionError):
        assert_upstream_clean(_recorded(target))


def test_private_needs_the_gateways_consumer_header() -> None:
    assert_upstream_clean(_recorded("/private/x", [("X-Consumer", "alice")]))
    with pytest.raises(AssertionError):
        assert_upstream_clean(_recorded("/private/x", [("X-Consumer", "admin")]))
    with pytest.raises(AssertionError):
        assert_no_private(_recorded("/private/x", [("X-Consumer", "alice")]))


def test_underscore_header_names_are_caught_unless_allowed() -> None:
    recorder = _recorded("/public/x", [("X_Foo", "1")])
    with pytest.raises(AssertionError):
        assert_upstream_clean(recorder)
    assert_upstream_clean(recorder, underscores_allowed=True)
