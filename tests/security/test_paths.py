"""Path tricks against sibling routes: ``/public/...`` open, ``/private/...`` behind an API
key, on one recording upstream; optionally a public catch-all after the protected route.

Each request goes over a raw socket, so the gateway sees the request-target byte for byte;
the upstream records the request-target it was sent, so the checks are about the wire.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tests.security.recorder import KEY, Front, Recorder, assert_outcome, assert_refused, assert_upstream_clean


@dataclass(frozen=True)
class Outcome:
    """What the client gets and which request-targets the upstream receives."""

    status: int
    upstream: tuple[str, ...] = ()


AUTH = Outcome(401)  # landed on the protected route, no key: the upstream sees nothing
REFUSED = Outcome(400)
NOT_FOUND = Outcome(404)


def passed(target: str) -> Outcome:
    return Outcome(200, (target,))


@dataclass(frozen=True)
class Case:
    target: str
    without_catch_all: Outcome
    with_catch_all: Outcome | None = None  # None: the same as without

    def expected(self, catch_all: bool) -> Outcome:
        return self.with_catch_all if catch_all and self.with_catch_all is not None else self.without_catch_all


CASES = [
    # climbing from /public into /private, however the dots are spelled
    pytest.param(Case("/public/../private/x", AUTH), id="dotdot"),
    pytest.param(Case("/public/%2e%2e/private/x", AUTH), id="enc-dotdot-lower"),
    pytest.param(Case("/public/.%2e/private/x", AUTH), id="dot-enc-dot"),
    pytest.param(Case("/public/%2E%2E/private/x", AUTH), id="enc-dotdot-upper"),
    pytest.param(Case("/public/%2e%2E/private/x", AUTH), id="enc-dotdot-mixed-case"),
    pytest.param(Case("/public/x/../../private/x", AUTH), id="climb-two"),
    pytest.param(Case("/public//../private/x", AUTH), id="slash-run-then-dotdot"),
    pytest.param(Case("/%70rivate/x", AUTH), id="enc-unreserved-letter"),
    pytest.param(Case("/public/%2e%2e/%70rivate/x", AUTH), id="enc-dotdot-enc-letter"),
    pytest.param(Case("//private/x", AUTH), id="double-slash"),
    pytest.param(Case("/./private/x", AUTH), id="leading-dot-segment"),
    pytest.param(Case("/private/x/..", AUTH), id="private-trailing-dotdot"),
    pytest.param(Case("/private/x/%2e%2e", AUTH), id="private-trailing-enc-dotdot"),
    pytest.param(Case("/private/x/.", AUTH), id="private-trailing-dot"),
    pytest.param(Case("/private/%2e/x", AUTH), id="private-enc-dot-mid"),
    pytest.param(Case("/private/../private/x", AUTH), id="private-out-and-back"),
    pytest.param(Case("/private/x/../../private/y", AUTH), id="private-climb-and-back"),
    pytest.param(Case("/private/x/../..", NOT_FOUND, passed("/")), id="private-climb-to-root"),
    pytest.param(Case("/private/..", NOT_FOUND, passed("/")), id="private-dotdot-to-root"),
    # absolute-form: routed by its path, sent in origin-form
    pytest.param(Case("http://evil.example/private/x", AUTH), id="absolute-form-private"),
    pytest.param(Case("http://h/public/../private/x", AUTH), id="absolute-form-dotdot"),
    pytest.param(Case("HTTPS://h/private/x", AUTH), id="absolute-form-upper-scheme"),
    pytest.param(Case("http://h/public/x?a=b", passed("/public/x?a=b")), id="absolute-form-public"),
    pytest.param(Case("http://h/public/%2e%2e/public/y", passed("/public/y")), id="absolute-form-normalized"),
    pytest.param(Case("http://h", NOT_FOUND, passed("/")), id="absolute-form-no-path"),
    pytest.param(Case("ftp://h/private/x", REFUSED), id="absolute-form-other-scheme"),
    # refused outright
    pytest.param(Case("/public/..%2fprivate/x", REFUSED), id="enc-slash-lower"),
    pytest.param(Case("/public/..%2Fprivate/x", REFUSED), id="enc-slash-upper"),
    pytest.param(Case("/public/..%2F..%2Fprivate/x", REFUSED), id="enc-slash-twice"),
    pytest.param(Case("/public/..;/private/x", REFUSED), id="dotdot-semicolon"),
    pytest.param(Case("/public/..;jsessionid=x/private/x", REFUSED), id="dotdot-jsessionid"),
    pytest.param(Case("/public/.;/x", REFUSED), id="dot-semicolon"),
    pytest.param(Case("/public/%2e%2e;/private/x", REFUSED), id="enc-dotdot-semicolon"),
    pytest.param(Case("/public/..\\private\\x", REFUSED), id="raw-backslash"),
    pytest.param(Case("/public/..%5cprivate", REFUSED), id="enc-backslash-lower"),
    pytest.param(Case("/public/..%5Cprivate", REFUSED), id="enc-backslash-upper"),
    pytest.param(Case("/private%2Fx", REFUSED), id="private-enc-slash"),
    pytest.param(Case("/%2fprivate/x", REFUSED), id="leading-enc-slash"),
    pytest.param(Case("/..", REFUSED), id="root-dotdot"),
    pytest.param(Case("/%2e%2e/", REFUSED), id="root-enc-dotdot"),
    pytest.param(Case("/public/../../private/x", REFUSED), id="climb-above-root"),
    pytest.param(Case("/public/%00/x", REFUSED), id="enc-nul"),
    pytest.param(Case("/public/%u002e%u002e/private/x", REFUSED), id="iis-unicode-escape"),
    pytest.param(Case("/public/x#/../../private/x", REFUSED), id="fragment"),
    # passed unchanged: not a dot segment, not the protected route (the upstream's job)
    pytest.param(Case("/public/%252e%252e/private/x", passed("/public/%252e%252e/private/x")),
                 id="double-encoded-not-decoded-twice"),
    pytest.param(Case("/public/x?q=../../private", passed("/public/x?q=../../private")), id="query-untouched"),
    pytest.param(Case("/public/x/.", passed("/public/x/")), id="public-trailing-dot"),
    pytest.param(Case("/public/%c0%ae%c0%ae/private/x", passed("/public/%C0%AE%C0%AE/private/x")),
                 id="overlong-utf8-stays-encoded"),
    pytest.param(Case("/private./x", NOT_FOUND, passed("/private./x")), id="trailing-dot-name"),
    pytest.param(Case("/PRIVATE/x", NOT_FOUND, passed("/PRIVATE/x")), id="upper-case-name"),
    pytest.param(Case("/private;x=1/y", NOT_FOUND, passed("/private;x=1/y")), id="params-on-name"),
]


@pytest.mark.parametrize("catch_all", [False, True], ids=["siblings", "catch-all"])
@pytest.mark.parametrize("case", CASES)
async def test_path_trick(case: Case, catch_all: bool, front: Front, recorder: Recorder) -> None:
    await front.start(catch_all=catch_all)
    expected = case.expected(catch_all)
    assert_outcome(await front.send(case.target), recorder, expected.status, expected.upstream)


@pytest.mark.parametrize(
    "target",
    [
        pytest.param("/public/../private/x", id="dotdot"),
        pytest.param("/public/%2e%2e/private/x", id="enc-dotdot"),
        pytest.param("//private//x", id="slash-runs"),
        pytest.param("http://h/public/./../private/x", id="absolute-form"),
    ],
)
async def test_with_the_key_the_upstream_gets_the_normalized_path(
    target: str, front: Front, recorder: Recorder
) -> None:
    await front.start(catch_all=True)
    response = await front.send(target, headers=[("X-API-Key", KEY)])
    assert response.status == 200
    assert recorder.targets == ["/private/x"]
    assert recorder.requests[0].all("X-Consumer") == ["alice"]
    assert_upstream_clean(recorder)


# "..%3B" decodes to "..;": an upstream that decodes the path before splitting off
# ";parameters" reads it as "..", so it is refused like "..;" is.
@pytest.mark.parametrize(
    "target",
    [
        pytest.param("/public/..%3b/private/x", id="dotdot-enc-semicolon"),
        pytest.param("/public/%2e%2e%3B/private/x", id="enc-dotdot-enc-semicolon"),
        pytest.param("/public/.%3Bx/y", id="dot-enc-semicolon"),
    ],
)
async def test_dot_segment_with_encoded_semicolon_is_refused(target: str, front: Front, recorder: Recorder) -> None:
    assert_refused(await front.send(target), 400)
    assert recorder.requests == []
    assert_upstream_clean(recorder)
