"""Path normalization at the edge: table-driven cases and hypothesis properties.

The properties run with a bounded number of examples in ``make test`` and with many more
under ``make fuzz`` (HYPOTHESIS_PROFILE=fuzz, see tests/conftest.py).
"""

from __future__ import annotations

import re
from urllib.parse import unquote

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from gateway.normalize import (
    UNRESERVED,
    PathRefused,
    has_dot_segment,
    normalize_path,
    routing_form,
    split_target,
)

# --- the table: what the edge makes of hostile and ordinary paths --------------------------

NORMAL = [
    ("/", "/"),
    ("/api/users/42", "/api/users/42"),
    ("/a/b/", "/a/b/"),
    ("/public/../private/x", "/private/x"),
    ("/public/%2e%2e/private/x", "/private/x"),
    ("/public/%2E%2E/private/x", "/private/x"),
    ("/public/.%2e/private/x", "/private/x"),
    ("/public/%2e./private/x", "/private/x"),
    ("/public/./x", "/public/x"),
    ("/public/%2e/x", "/public/x"),
    ("//private/x", "/private/x"),
    ("/./private/x", "/private/x"),
    ("/a//b///c", "/a/b/c"),
    ("/a/b/.", "/a/b/"),
    ("/a/b/..", "/a/"),
    ("/a/..", "/"),
    ("/a/b/../../c", "/c"),
    ("/a/./b/./", "/a/b/"),
    ("/%41%62%63", "/Abc"),
    ("/%7e%7E%2D%5f", "/~~-_"),
    ("/a%3ab", "/a%3Ab"),
    ("/a%3Ab", "/a%3Ab"),
    ("/caf%c3%a9", "/caf%C3%A9"),
    ("/%252e%252e/private", "/%252e%252e/private"),  # decoded once only: a literal "%2e%2e"
    ("/x<y>", "/x%3Cy%3E"),
    ('/q"{}|^`', "/q%22%7B%7D%7C%5E%60"),
    ("/café", "/caf%C3%A9"),
    ("/a;b=c/d", "/a;b=c/d"),
    ("/private./x", "/private./x"),  # a trailing dot is a different name (docs/security.md)
    ("/.well-known/x", "/.well-known/x"),
    ("/...", "/..."),
    ("/a/.../b", "/a/.../b"),
    ("/a/.b/c", "/a/.b/c"),
    ("/a/b.", "/a/b."),
]


@pytest.mark.parametrize(("raw", "expected"), NORMAL)
def test_paths_are_normalized(raw: str, expected: str) -> None:
    assert normalize_path(raw) == expected


# why a path is refused -> the paths refused for it
REFUSED_BECAUSE = {
    "climbs above the root": ["/..", "/../x", "/a/../../x", "/%2e%2e/x", "/a/%2e%2e/%2e%2e/etc/passwd"],
    "encoded slash": ["/private%2Fx", "/private%2fx", "/public/..%2Fprivate", "/a%5Cb", "/a%5cb"],
    "backslash": ["/a\\b", "/public\\..\\private"],
    "control character": ["/a%00b", "/a%0Ab", "/a%0d%0aX-Injected:%201", "/a%7F", "/a\x01b"],
    "malformed percent-escape": ["/a%zz", "/a%4", "/a%"],
    "dot segment with parameters": ["/public/..;/private/x", "/public/.;x/private",
                                    "/public/%2e%2e;jsessionid=1/private", "/public/..%3b/private",
                                    "/public/%2e%2e%3Bx/private", "/public/.%3B/private"],
    "absolute path": ["relative/path", "*", ""],
}
REFUSED = [(raw, reason) for reason, raws in REFUSED_BECAUSE.items() for raw in raws]


@pytest.mark.parametrize(("raw", "reason"), REFUSED)
def test_unsafe_paths_are_refused(raw: str, reason: str) -> None:
    with pytest.raises(PathRefused, match=reason):
        normalize_path(raw)


def test_an_encoded_semicolon_elsewhere_is_part_of_the_name() -> None:
    assert normalize_path("/public/a..%3b/b%3bc") == "/public/a..%3B/b%3Bc"


def test_merge_slashes_off_keeps_empty_segments() -> None:
    assert normalize_path("//a//b/", merge_slashes=False) == "//a//b/"
    assert normalize_path("/a//../b", merge_slashes=False) == "/a/b"
    assert normalize_path("/a//../b", merge_slashes=True) == "/b"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("/files/a%2Fb", "/files/a%2Fb"), ("/files/a%2fb%5c", "/files/a%2Fb%5C"), ("/x/%2e%2e%2fy", None),
     ("/x/a%2F..%2Fy", None), ("/x/a%2F.", None), ("/x/..%5Cy", None), ("/x/%2F%2F", "/x/%2F%2F")],
)
def test_encoded_slashes_kept_never_separate_segments(raw: str, expected: str | None) -> None:
    if expected is None:
        with pytest.raises(PathRefused, match="dot segment between encoded slashes"):
            normalize_path(raw, keep_encoded_slashes=True)
    else:
        assert normalize_path(raw, keep_encoded_slashes=True) == expected


def test_keep_mode_still_refuses_a_raw_backslash_and_nul() -> None:
    for raw in ("/a\\b", "/a%00b"):
        with pytest.raises(PathRefused):
            normalize_path(raw, keep_encoded_slashes=True)


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/p?q=1", ("/p", "q=1", None)),
        ("/p", ("/p", "", None)),
        ("/p?", ("/p", "", None)),
        ("/p?a=%2e%2e/../x", ("/p", "a=%2e%2e/../x", None)),  # the query passes unchanged
        ("http://evil.example/private/x?k=v", ("/private/x", "k=v", "evil.example")),
        ("HTTP://EVIL:80/p", ("/p", "", "EVIL:80")),
        ("http://[::1]:8080/a", ("/a", "", "[::1]:8080")),
        ("https://h", ("/", "", "h")),
        ("http://h?x=1", ("/", "x=1", "h")),
    ],
)
def test_split_target_gives_origin_form(target: str, expected: tuple[str, str, str | None]) -> None:
    assert split_target(target) == expected


@pytest.mark.parametrize("target", ["/a#frag", "/a?x=1#f", "ftp://h/x", "h/x", "*"])
def test_split_target_refuses_fragments_and_other_forms(target: str) -> None:
    with pytest.raises(PathRefused):
        split_target(target)


def test_routing_form_decodes_all_but_slash_and_percent() -> None:
    assert routing_form("/a%2Fb%25c%20d%C3%A9") == "/a%2Fb%25c dé"
    assert routing_form("/plain") == "/plain"


@pytest.mark.parametrize(
    "value",
    ["..", ".", "../x", "x/..", "a/./b", "..\\x", "x\\.", "..;", "..;x=1/y", "%2e%2e", "%2E%2e%2Fx", ".%2e",
     "%252e%252e", "%25252e%25252e%2f", "..%2F", "..%5cadmin", "%2e"],
)
def test_dot_segment_guard_catches_every_spelling(value: str) -> None:
    assert has_dot_segment(value)


@pytest.mark.parametrize("value", ["", "42", "a.b", "...", "a..b", "..a", "v1.2.3", "x/y", "%41", "1.5", ".hidden"])
def test_dot_segment_guard_lets_ordinary_values_pass(value: str) -> None:
    assert not has_dot_segment(value)


# --- properties -----------------------------------------------------------------------------


def reference_remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4, written as the RFC states it (input buffer, rules A to E)."""
    inp, out = path, ""
    while inp:
        if inp.startswith("../"):
            inp = inp[3:]
        elif inp.startswith("./"):
            inp = inp[2:]
        elif inp.startswith("/./"):
            inp = "/" + inp[3:]
        elif inp == "/.":
            inp = "/"
        elif inp.startswith("/../"):
            inp = "/" + inp[4:]
            out = out[: out.rfind("/")] if "/" in out else ""
        elif inp == "/..":
            inp = "/"
            out = out[: out.rfind("/")] if "/" in out else ""
        elif inp in (".", ".."):
            inp = ""
        else:
            start = 1 if inp.startswith("/") else 0
            end = inp.find("/", start)
            end = len(inp) if end < 0 else end
            out += inp[:end]
            inp = inp[end:]
    return out


def climbs_above_root(path: str) -> bool:
    depth = 0
    segments = path[1:].split("/")
    for index, segment in enumerate(segments):
        if segment == "..":
            if depth == 0:
                return True
            depth -= 1
        elif segment != "." and not (segment == "" and index == len(segments) - 1):
            depth += 1
    return False


def decode_unreserved(path: str) -> str:
    """§6.2.2.2 and the upper-casing of §6.2.2.1, as a plain regex substitution."""
    def one(match: re.Match[str]) -> str:
        char = chr(int(match.group(1), 16))
        return char if char in UNRESERVED else match.group(0).upper()

    return re.sub(r"%([0-9A-Fa-f]{2})", one, path)


def upstream_view(path: str) -> str:
    """What an RFC-following upstream makes of a path: unreserved escapes decoded, dot
    segments resolved."""
    return reference_remove_dot_segments(decode_unreserved(path))


# Segments built from pieces an attacker likes: dots in every spelling, slashes, escapes.
PIECES = st.sampled_from(
    [".", "..", "%2e", "%2E", "%2e%2e", ".%2e", "a", "B", "private", "x~", "%41", "%7e", "%20", "%3a", "%3A", ";",
     ";p=1", "..;", "%3b", "%3B", "%252e", "%25", "é", "<", "@", ":", "-", "_", "%c3%a9", "..."]
)
SEGMENT = st.lists(PIECES, min_size=0, max_size=3).map("".join)
SAFE_PATH = st.lists(SEGMENT, min_size=1, max_size=8).map(lambda parts: "/" + "/".join(parts))
ANY_PATH = st.one_of(
    SAFE_PATH,
    st.text(alphabet=st.sampled_from(list("/.%2eEfF5cC0a;\\?#")), max_size=24).map(lambda s: "/" + s),
    st.text(max_size=30).map(lambda s: "/" + s),
)


def _normalized(path: str, **options: bool) -> str | None:
    try:
        return normalize_path(path, **options)
    except PathRefused:
        return None


@given(ANY_PATH, st.booleans(), st.booleans())
@example("/a/%2e%2e/%2e%2e/b", True, False)
def test_normalizing_twice_changes_nothing(path: str, merge: bool, keep: bool) -> None:
    once = _normalized(path, merge_slashes=merge, keep_encoded_slashes=keep)
    assume(once is not None)
    assert once is not None
    assert normalize_path(once, merge_slashes=merge, keep_encoded_slashes=keep) == once


@given(ANY_PATH, st.booleans())
def test_output_has_no_dot_segment_no_empty_run_and_only_path_characters(path: str, keep: bool) -> None:
    out = _normalized(path, keep_encoded_slashes=keep)
    assume(out is not None)
    assert out is not None
    assert out.startswith("/")
    assert "//" not in out
    segments = out[1:].split("/")
    assert all(re.split(";|%3B", s, maxsplit=1)[0] not in (".", "..") for s in segments)
    assert re.fullmatch(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/]|%[0-9A-F]{2})*", out)
    escapes = {chr(int(h, 16)) for h in re.findall(r"%([0-9A-F]{2})", out)}
    assert not escapes & UNRESERVED
    assert "\x00" not in escapes and (keep or not escapes & {"/", "\\"})


@given(ANY_PATH)
def test_the_upstream_resolves_exactly_what_the_router_matched(path: str) -> None:
    out = _normalized(path)
    assume(out is not None)
    assert out is not None
    assert upstream_view(out) == out
    assert has_dot_segment(unquote(out)) is False or "%25" in out  # only a literal %2e may remain


@given(SAFE_PATH, st.booleans())
def test_agrees_with_the_rfc_reference(path: str, merge: bool) -> None:
    assume("%25" not in path)
    out = _normalized(path, merge_slashes=merge)
    candidate = decode_unreserved(path)
    if merge:
        candidate = re.sub("/{2,}", "/", candidate)
    if any(re.split(";|%3B", s, maxsplit=1)[0] in (".", "..") and s not in (".", "..") for s in candidate.split("/")):
        assert out is None  # "..;" and "..%3B" are refused, not resolved
        return
    if climbs_above_root(candidate):
        assert out is None
        return
    expected = reference_remove_dot_segments(candidate)
    assert out is not None
    assert decode_unreserved(out) == decode_unreserved(re.sub(r"[^A-Za-z0-9\-._~!$&'()*+,;=:@/%]",
                                                              lambda m: "".join(f"%{b:02X}" for b in
                                                                                m.group().encode()), expected))


PREFIX = st.lists(st.sampled_from(["public", "api", "v1", "a.b", "x~y"]), min_size=1, max_size=3).map(
    lambda parts: "/" + "/".join(parts)
)
PLAIN_SEGMENT = SEGMENT.filter(lambda s: decode_unreserved(s).partition(";")[0] not in (".", ".."))


@given(PREFIX, st.lists(PLAIN_SEGMENT, max_size=5))
def test_output_never_escapes_its_route_prefix(prefix: str, tail: list[str]) -> None:
    path = prefix + "/" + "/".join(tail)
    out = _normalized(path)
    assume(out is not None)
    assert out is not None
    assert out == prefix or out.startswith(prefix + "/")
    assert upstream_view(out).startswith(prefix)


@given(PREFIX, SEGMENT)
def test_a_path_that_leaves_its_prefix_is_routed_by_where_it_lands(prefix: str, tail: str) -> None:
    """Whatever the tail does, the router and the upstream agree on the prefix."""
    out = _normalized(prefix + "/" + tail)
    assume(out is not None)
    assert out is not None
    assert out.startswith(prefix + "/") == upstream_view(out).startswith(prefix + "/")


@given(st.text(max_size=20))
def test_the_dot_guard_agrees_with_decoding(value: str) -> None:
    decoded = value
    for _ in range(5):
        decoded = unquote(decoded)
    pieces = re.split(r"[/\\]", decoded)
    if any(p.partition(";")[0] in (".", "..") for p in pieces):
        assert has_dot_segment(value)
