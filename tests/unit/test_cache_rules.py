"""The cache's decisions (gateway/cache/rules.py): example tables citing RFC 9111 / RFC 5861 and
the product contract, and hypothesis properties (bounded in ``make test``, long under
HYPOTHESIS_PROFILE=fuzz, see tests/conftest.py)."""

from __future__ import annotations

import math
from email.utils import formatdate

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.cache.rules import (
    Action,
    Decision,
    Freshness,
    Policy,
    allows_credentials,
    cache_key,
    check_request,
    freshness,
    invalidates,
    key_prefix,
    lookup,
    storable,
    stored_headers,
    vary,
    vary_values,
)

NOW = 1_750_000_000.0
DEFAULT = Policy()


def h(*pairs: tuple[str, str]) -> CIMultiDict[str]:
    return CIMultiDict(pairs)


def date(offset: float = 0.0) -> str:
    return formatdate(NOW + offset, usegmt=True)


# --- may the request use the cache at all ----------------------------------------------------------

@pytest.mark.parametrize(("method", "headers", "policy", "ok", "reason"), [
    ("GET", h(), DEFAULT, True, "cacheable request"),
    ("HEAD", h(), DEFAULT, True, "cacheable request"),
    ("POST", h(), Policy(methods=frozenset({"GET", "POST"})), False, "method POST"),  # the key has no body
    ("GET", h(), Policy(methods=frozenset({"HEAD"})), False, "method GET"),
    ("get", h(), DEFAULT, False, "method get"),  # methods are case-sensitive (RFC 9110 §9.1)
    ("GET", h(("Cache-Control", "no-store")), DEFAULT, False, "request no-store"),  # RFC 9111 §5.2.1.5
    ("GET", h(("Cache-Control", "max-age=0")), DEFAULT, True, "cacheable request"),
])
def test_check_request(method: str, headers: CIMultiDict[str], policy: Policy, ok: bool, reason: str) -> None:
    assert check_request(method, headers, policy) == Decision(ok, reason)


# --- may the response be stored (RFC 9111 §3) ---------------------------------------------------

FRESH = ("Cache-Control", "max-age=60")

STORABLE = [
    # (why, method, request headers, status, response headers, policy, reason or "storable")
    ("max-age", "GET", h(), 200, h(FRESH), DEFAULT, "storable"),
    ("no freshness and ttl 0: only what the upstream allows", "GET", h(), 200, h(), DEFAULT, "no freshness"),
    ("the route's ttl when the upstream gives none", "GET", h(), 200, h(), Policy(ttl=30), "storable"),
    ("404 is cacheable by default (RFC 9110 §15.1)", "GET", h(), 404, h(), Policy(ttl=30), "storable"),
    ("500 with explicit freshness (§3)", "GET", h(), 500, h(FRESH), DEFAULT, "storable"),
    ("500 without: ttl does not apply", "GET", h(), 500, h(), Policy(ttl=30), "status 500 without explicit freshness"),
    ("302 + public is still not explicit freshness", "GET", h(), 302, h(("Cache-Control", "public")), Policy(ttl=30),
     "status 302 without explicit freshness"),
    ("302 with Expires", "GET", h(), 302, h(("Date", date()), ("Expires", date(60))), DEFAULT, "storable"),
    ("1xx is not final", "GET", h(), 103, h(FRESH), DEFAULT, "status 103 is not final"),
    ("206: no range support (§3.3)", "GET", h(), 206, h(FRESH), DEFAULT, "status 206"),
    ("304 (§4.3.4)", "GET", h(), 304, h(FRESH), DEFAULT, "status 304"),
    ("no-store (§5.2.2.5)", "GET", h(), 200, h(("Cache-Control", "max-age=60, no-store")), DEFAULT, "no-store"),
    ("private (§5.2.2.7)", "GET", h(), 200, h(("Cache-Control", "private, max-age=60")), DEFAULT, "private"),
    ("qualified private", "GET", h(), 200, h(("Cache-Control", 'private="X-User", max-age=60')), DEFAULT, "private"),
    ("no-cache: never revalidated by the gateway", "GET", h(), 200, h(("Cache-Control", "no-cache, max-age=60")),
     DEFAULT, "no-cache"),
    ("Set-Cookie", "GET", h(), 200, h(FRESH, ("Set-Cookie", "s=1")), DEFAULT, "set-cookie"),
    ("Vary: * (§4.1)", "GET", h(), 200, h(FRESH, ("Vary", "Accept, *")), DEFAULT, "vary *"),
    ("Vary on a header is fine", "GET", h(), 200, h(FRESH, ("Vary", "Accept")), DEFAULT, "storable"),
    ("Authorization without permission (§3.5)", "GET", h(("Authorization", "Bearer t")), 200, h(FRESH), DEFAULT,
     "authorization"),
    ("Authorization + public", "GET", h(("Authorization", "Bearer t")), 200,
     h(("Cache-Control", "public, max-age=60")), DEFAULT, "storable"),
    ("Authorization + s-maxage", "GET", h(("Authorization", "Bearer t")), 200, h(("Cache-Control", "s-maxage=60")),
     DEFAULT, "storable"),
    ("Authorization + must-revalidate", "GET", h(("Authorization", "Bearer t")), 200,
     h(("Cache-Control", "max-age=60, must-revalidate")), DEFAULT, "storable"),
    ("Authorization + malformed public", "GET", h(("Authorization", "Bearer t")), 200,
     h(("Cache-Control", "max-age=60, public junk")), DEFAULT, "authorization"),
    ("request no-store (§5.2.1.5)", "GET", h(("Cache-Control", "no-store")), 200, h(FRESH), DEFAULT,
     "request no-store"),
    ("POST is never stored", "POST", h(), 200, h(FRESH), Policy(methods=frozenset({"POST"})), "method POST"),
    ("a HEAD response is never stored", "HEAD", h(), 200, h(FRESH), DEFAULT, "HEAD (answered from the GET entry)"),
    ("must-understand, status understood", "GET", h(), 200, h(("Cache-Control", "must-understand, max-age=60")),
     DEFAULT, "storable"),
    ("must-understand, status not understood (§5.2.2.3)", "GET", h(), 500,
     h(("Cache-Control", "must-understand, max-age=60")), DEFAULT, "must-understand with status 500"),
    ("must-understand does not lift no-store", "GET", h(), 200, h(("Cache-Control", "must-understand, no-store")),
     DEFAULT, "no-store"),
    ("older than its lifetime on arrival", "GET", h(), 200, h(FRESH, ("Age", "120")), DEFAULT, "stale on arrival"),
    ("invalid Expires is already expired (§5.3)", "GET", h(), 200, h(("Expires", "0")), Policy(ttl=30),
     "no freshness"),
    ("max-age=0 kept for stale-if-error (RFC 5861 §4)", "GET", h(), 200,
     h(("Cache-Control", "max-age=0, stale-if-error=60")), DEFAULT, "storable"),
    ("the route's stale_if_error keeps a last good copy", "GET", h(), 200, h(), Policy(stale_if_error=60),
     "storable"),
    ("doubled max-age is stale (§4.2.1)", "GET", h(), 200, h(("Cache-Control", "max-age=60, max-age=600")),
     Policy(ttl=30), "no freshness"),
]


@pytest.mark.parametrize(("why", "method", "request_headers", "status", "response_headers", "policy", "reason"),
                         STORABLE, ids=[case[0] for case in STORABLE])
def test_storable(why: str, method: str, request_headers: CIMultiDict[str], status: int,
                  response_headers: CIMultiDict[str], policy: Policy, reason: str) -> None:
    decision = storable(method, request_headers, status, response_headers, policy, NOW)
    assert (decision.ok, decision.reason) == (reason == "storable", reason)
    assert (decision.freshness is not None) == decision.ok


def test_consumed_credentials_count_like_an_authorization_header() -> None:
    assert storable("GET", h(), 200, h(FRESH), DEFAULT, NOW, authenticated=True) == Decision(False, "authorization")
    assert storable("GET", h(), 200, h(("Cache-Control", "public, max-age=60")), DEFAULT, NOW, authenticated=True).ok


def test_read_only_header_views_are_accepted() -> None:
    headers = CIMultiDictProxy(h(FRESH))
    assert storable("GET", CIMultiDictProxy(h()), 200, headers, DEFAULT, NOW).ok


# --- freshness lifetime (RFC 9111 §4.2.1), capped by max_ttl ---------------------------------------

LIFETIMES = [
    (h(("Cache-Control", "max-age=60, s-maxage=600")), DEFAULT, 600.0),  # s-maxage first (shared cache)
    (h(("Cache-Control", "max-age=60"), ("Expires", date(600)), ("Date", date())), DEFAULT, 60.0),
    (h(("Expires", date(300)), ("Date", date(-100))), DEFAULT, 400.0),  # Expires - Date
    (h(("Expires", date(300))), DEFAULT, 300.0),  # no Date: the response time stands in (RFC 9110 §6.6.1)
    (h(("Expires", date(300)), ("Date", "garbage")), DEFAULT, 300.0),
    (h(("Expires", date(-300)), ("Date", date())), DEFAULT, 0.0),
    (h(("Expires", "0")), Policy(ttl=30), 0.0),  # §5.3
    (h(("Expires", date(300)), ("Expires", date(600))), DEFAULT, 0.0),  # §4.2.1: two values read as stale
    (h(("Expires", date(300)), ("Expires", date(300))), DEFAULT, 300.0),
    (h(), Policy(ttl=30), 30.0),
    (h(("Cache-Control", "max-age=0")), Policy(ttl=30), 0.0),  # the upstream said 0: ttl does not override
    (h(("Cache-Control", "max-age=600")), Policy(max_ttl=120), 120.0),
    (h(("Cache-Control", "s-maxage=600")), Policy(max_ttl=120), 120.0),
    (h(), Policy(ttl=600, max_ttl=120), 120.0),
    (h(("Last-Modified", date(-86400 * 365))), DEFAULT, 0.0),  # no heuristic freshness
]


@pytest.mark.parametrize(("headers", "policy", "lifetime"), LIFETIMES)
def test_freshness_lifetime(headers: CIMultiDict[str], policy: Policy, lifetime: float) -> None:
    assert freshness(200, headers, policy, NOW).lifetime == lifetime


def test_route_ttl_only_for_statuses_cacheable_by_default() -> None:
    assert freshness(500, h(), Policy(ttl=30), NOW).lifetime == 0.0
    assert freshness(410, h(), Policy(ttl=30), NOW).lifetime == 30.0


# --- age (RFC 9111 §4.2.3) ---------------------------------------------------------------------------

AGES = [
    # (response headers, request sent this long before the response, initial age)
    (h(("Date", date(-10))), 0.0, 10.0),  # apparent age
    (h(("Date", date()), ("Age", "30")), 0.0, 30.0),  # the Age header
    (h(("Date", date()), ("Age", "5")), 2.0, 7.0),  # + response delay
    (h(("Date", date(-10)), ("Age", "5")), 2.0, 10.0),  # the larger of the two estimates
    (h(("Date", date(3600))), 0.0, 0.0),  # a Date in the future: no negative age
    (h(("Age", "-5")), 0.0, 0.0),  # invalid Age ignored (§5.1)
    (h(), 0.0, 0.0),
]


@pytest.mark.parametrize(("headers", "delay", "initial_age"), AGES)
def test_corrected_initial_age(headers: CIMultiDict[str], delay: float, initial_age: float) -> None:
    entry = freshness(200, headers, DEFAULT, NOW, request_time=NOW - delay)
    assert entry.initial_age == initial_age
    assert entry.age(NOW + 100) == initial_age + 100  # + resident time
    assert entry.age(NOW - 100) == initial_age  # a clock that went back adds nothing


# --- stale windows (RFC 5861; RFC 9111 §4.2.4) --------------------------------------------------

ROUTE_STALE = Policy(stale_while_revalidate=30, stale_if_error=600)

WINDOWS = [
    # (response Cache-Control, policy, (stale-while-revalidate, stale-if-error))
    ("max-age=60", ROUTE_STALE, (30.0, 600.0)),  # the route's options when the response is silent
    ("max-age=60, stale-while-revalidate=5, stale-if-error=9000", ROUTE_STALE, (5.0, 9000.0)),  # the response wins
    ("max-age=60, stale-if-error=0", ROUTE_STALE, (30.0, 0.0)),  # ... also to switch one off
    ("max-age=60, stale-if-error=10", DEFAULT, (0.0, 10.0)),
    ("max-age=60, stale-if-error=10, stale-if-error=20", ROUTE_STALE, (30.0, 0.0)),  # conflicting: none
    ("max-age=60, must-revalidate, stale-if-error=60", ROUTE_STALE, (0.0, 0.0)),  # §5.2.2.2
    ("max-age=60, proxy-revalidate", ROUTE_STALE, (0.0, 0.0)),  # §5.2.2.8
    ("s-maxage=60", ROUTE_STALE, (0.0, 0.0)),  # §5.2.2.10: s-maxage implies proxy-revalidate
    ("s-maxage=60, stale-while-revalidate=10", ROUTE_STALE, (10.0, 0.0)),  # the upstream's own permission
]


@pytest.mark.parametrize(("control", "policy", "windows"), WINDOWS)
def test_stale_windows(control: str, policy: Policy, windows: tuple[float, float]) -> None:
    entry = freshness(200, h(("Cache-Control", control)), policy, NOW)
    assert (entry.stale_while_revalidate, entry.stale_if_error) == windows


# --- may a stored entry answer this request (RFC 9111 §4) ---------------------------------------

ENTRY = Freshness(lifetime=60, initial_age=0, response_time=NOW, stale_while_revalidate=30, stale_if_error=600)
LOOKUPS = [
    # (entry, request headers, seconds after storing, action, fallback, reason)
    (ENTRY, h(), 10, Action.HIT, True, "fresh"),
    (ENTRY, h(), 70, Action.STALE, True, "stale-while-revalidate"),
    (ENTRY, h(), 100, Action.REFETCH, True, "stale"),  # within stale-if-error
    (ENTRY, h(), 700, Action.REFETCH, False, "stale"),
    (ENTRY, h(("Cache-Control", "no-cache")), 10, Action.REFETCH, True, "request no-cache"),  # §5.2.1.4
    (ENTRY, h(("Pragma", "no-cache")), 10, Action.REFETCH, True, "request no-cache"),  # §5.4
    (ENTRY, h(("Pragma", "no-cache"), ("Cache-Control", "max-age=60")), 10, Action.HIT, True, "fresh"),
    (ENTRY, h(("Cache-Control", "max-age=0")), 0, Action.REFETCH, True, "request max-age"),
    (ENTRY, h(("Cache-Control", "max-age=5")), 10, Action.REFETCH, True, "request max-age"),  # §5.2.1.1
    (ENTRY, h(("Cache-Control", "max-age=50")), 10, Action.HIT, True, "fresh"),
    (ENTRY, h(("Cache-Control", "min-fresh=55")), 10, Action.REFETCH, True, "request min-fresh"),  # §5.2.1.3
    (ENTRY, h(("Cache-Control", "no-store")), 10, Action.REFETCH, False, "request no-store"),
    (ENTRY, h(("Authorization", "Basic eA==")), 10, Action.REFETCH, False, "authorization"),  # §3.5
    (Freshness(60, 0, NOW, shared=True), h(("Authorization", "Basic eA==")), 10, Action.HIT, True, "fresh"),
    (Freshness(60, 0, NOW), h(), 60, Action.REFETCH, False, "stale"),  # fresh means age < lifetime
    (Freshness(60, 50, NOW), h(), 10, Action.REFETCH, False, "stale"),  # the initial age counts
]


@pytest.mark.parametrize(("entry", "headers", "after", "action", "fallback", "reason"), LOOKUPS)
def test_lookup(entry: Freshness, headers: CIMultiDict[str], after: float, action: Action, fallback: bool,
                reason: str) -> None:
    verdict = lookup(entry, headers, NOW + after)
    assert (verdict.action, verdict.fallback, verdict.reason) == (action, fallback, reason)
    assert verdict.age == int(entry.initial_age + after)


def test_consumed_credentials_need_a_shared_entry() -> None:
    assert lookup(ENTRY, h(), NOW, authenticated=True).reason == "authorization"
    assert lookup(Freshness(60, 0, NOW, shared=True), h(), NOW, authenticated=True).action is Action.HIT


def test_an_entry_is_kept_until_its_last_window_closes() -> None:
    entry = Freshness(lifetime=60, initial_age=10, response_time=NOW, stale_while_revalidate=30, stale_if_error=600)
    assert (entry.stale_at, entry.keep_until) == (NOW + 50, NOW + 650)


# --- stored headers (RFC 9111 §3.1), Vary -------------------------------------------------------

def test_stored_headers_drop_hop_by_hop_cookies_and_age() -> None:
    headers = h(("Content-Type", "application/json"), ("Connection", "keep-alive, X-Hop"), ("Keep-Alive", "5"),
                ("X-Hop", "1"), ("Transfer-Encoding", "chunked"), ("Proxy-Authenticate", "Basic"),
                ("Set-Cookie", "a=1"), ("Age", "3"), ("Link", "</a>"), ("Link", "</b>"), ("ETag", '"x"'))
    assert list(stored_headers(headers).items()) == [
        ("Content-Type", "application/json"), ("Link", "</a>"), ("Link", "</b>"), ("ETag", '"x"')]


def test_vary_names_come_lower_cased_and_sorted() -> None:
    assert vary(h(("Vary", "Accept-Language, ACCEPT"), ("Vary", "accept"))) == ("accept", "accept-language")


# --- the cache key (RFC 9111 §4.1) --------------------------------------------------------------

def key(route: str = "users", method: str = "GET", path: str = "/u/1", query: str = "",
        headers: CIMultiDict[str] | None = None, key_headers: tuple[str, ...] = (),
        varies: tuple[str, ...] = ()) -> str:
    return cache_key(route, method, path, query, headers if headers is not None else h(), key_headers, varies)


def test_head_is_answered_from_the_get_entry() -> None:
    assert key(method="HEAD") == key(method="GET")


@pytest.mark.parametrize("other", [
    key(route="orders"), key(method="OPTIONS"), key(path="/u/2"), key(query="a=1"), key(query="b=1&a=1"),
    key(headers=h(("Accept", "x")), key_headers=("accept",)), key(headers=h(("Accept", "x")), varies=("accept",)),
])
def test_each_part_of_the_key_matters(other: str) -> None:
    assert other != key()


def test_query_strings_are_not_reordered() -> None:
    assert key(query="a=1&b=2") != key(query="b=2&a=1")


def test_header_values_are_normalized_for_the_key() -> None:
    same = [h(("Accept-Language", "en, fr")), h(("Accept-Language", "en,fr ")),
            h(("Accept-Language", "en"), ("Accept-Language", "fr")), h(("accept-language", " en ,, fr"))]
    as_key_header = {key(headers=headers, key_headers=(name,)) for headers in same
                     for name in ("Accept-Language", "accept-language")}
    assert len(as_key_header) == 1
    assert len({key(headers=headers, varies=("accept-language",)) for headers in same}) == 1
    assert key(headers=h(("Accept-Language", "fr, en")), key_headers=("accept-language",)) not in as_key_header


def test_a_variant_is_matched_by_normalized_values() -> None:
    stored = vary_values(("accept-language", "origin"), h(("Accept-Language", "en, fr")))
    assert stored == ("en,fr", None)
    assert vary_values(("accept-language", "origin"), h(("accept-language", "en"), ("Accept-Language", "fr"))) == stored
    assert vary_values(("accept-language", "origin"), h(("Accept-Language", "en, fr"), ("Origin", ""))) != stored


@pytest.mark.parametrize(("control", "allowed"), [
    ("public, max-age=60", True), ("s-maxage=60", True), ("max-age=60, must-revalidate", True),
    ("max-age=60", False), ("public=", False), ("s-maxage=60 junk", False),
])
def test_a_stored_response_says_whether_it_may_answer_credentials(control: str, allowed: bool) -> None:
    headers = h(("Cache-Control", control))
    assert allows_credentials(headers) is allowed
    assert freshness(200, headers, DEFAULT, NOW).shared is allowed


def test_an_absent_header_differs_from_an_empty_one() -> None:
    assert key(headers=h(), key_headers=("x-tenant",)) != key(headers=h(("X-Tenant", "")), key_headers=("x-tenant",))


def test_keys_hold_no_credentials() -> None:
    secret = "sk_live_0123456789"
    made = key(path=f"/reset/{secret}", query=f"api_key={secret}", headers=h(("X-API-Key", secret)),
               key_headers=("x-api-key",))
    assert secret not in made


def test_prefixes_select_a_route_or_one_path_of_it() -> None:
    made = key(query="a=1", headers=h(("Accept", "x")), varies=("accept",))
    assert made.startswith(key_prefix("users")) and made.startswith(key_prefix("users", "/u/1"))
    assert not made.startswith(key_prefix("users", "/u/10"))
    assert not made.startswith(key_prefix("user"))
    assert not key(route="users 1").startswith(key_prefix("users"))


# --- invalidation (RFC 9111 §4.4) ----------------------------------------------------------------

@pytest.mark.parametrize(("method", "status", "ok"), [
    ("POST", 201, True), ("PUT", 204, True), ("PATCH", 302, True), ("DELETE", 200, True),
    ("PURGE", 200, True),  # a method whose safety is unknown
    ("POST", 404, False), ("DELETE", 500, False), ("POST", 100, False),
    ("GET", 200, False), ("HEAD", 200, False), ("OPTIONS", 204, False), ("TRACE", 200, False),
])
def test_unsafe_requests_invalidate_their_path(method: str, status: int, ok: bool) -> None:
    assert invalidates(method, status).ok is ok


# --- properties ------------------------------------------------------------------------------------

TIMES = st.floats(min_value=0, max_value=4e9, allow_nan=False)
DIRECTIVES = st.lists(st.tuples(
    st.sampled_from(["public", "max-age", "s-maxage", "must-revalidate", "proxy-revalidate", "immutable",
                     "stale-if-error", "stale-while-revalidate", "must-understand", "x-ext"]),
    st.none() | st.integers(0, 10**7).map(str) | st.sampled_from(["-1", "abc", "", '"60"'])), max_size=6)
POLICIES = st.builds(Policy, ttl=st.floats(0, 1e6), max_ttl=st.none() | st.floats(0, 1e6),
                     stale_if_error=st.floats(0, 1e6), stale_while_revalidate=st.floats(0, 1e6))
STATUSES = st.sampled_from([200, 203, 204, 300, 301, 302, 308, 404, 410, 500, 503])


def http_date(seconds: float) -> str:
    return formatdate(seconds, usegmt=True)


def render(directives: list[tuple[str, str | None]]) -> str:
    return ", ".join(name if argument is None else f"{name}={argument}" for name, argument in directives)


@st.composite
def responses(draw: st.DrawFn, directives: list[tuple[str, str | None]] | None = None) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict()
    headers.add("Cache-Control", render(draw(DIRECTIVES) if directives is None else directives))
    if draw(st.booleans()):
        headers.add("Date", http_date(draw(TIMES)))
    if draw(st.booleans()):
        headers.add("Expires", draw(st.sampled_from(["0", "garbage"]) | TIMES.map(http_date)))
    if draw(st.booleans()):
        headers.add("Age", draw(st.integers(-5, 10**6).map(str) | st.text(max_size=5)))
    if draw(st.booleans()):
        headers.add("Vary", draw(st.sampled_from(["Accept", "Accept-Encoding, Origin"])))
    return headers


REQUESTS = st.sampled_from([h(), h(("Authorization", "Bearer t")), h(("Cache-Control", "max-age=0")),
                            h(("Accept", "text/html"))])


@st.composite
def poisoned(draw: st.DrawFn) -> CIMultiDict[str]:
    """A response that also says no-store or private, or sets a cookie, or varies on *."""
    listed = draw(DIRECTIVES)
    poison = draw(st.sampled_from(["no-store", "private", 'private="X-User"', "set-cookie", "vary"]))
    if poison in ("set-cookie", "vary"):
        headers = draw(responses(listed))
        if poison == "set-cookie":
            headers.add("Set-Cookie", "session=abc")
        else:
            headers.add("Vary", draw(st.sampled_from(["*", "Accept, *", " *"])))
        return headers
    listed.insert(draw(st.integers(0, len(listed))), (poison, None))
    return draw(responses(listed))


@given(poisoned(), REQUESTS, STATUSES, POLICIES, TIMES, st.booleans())
def test_no_store_private_cookies_and_vary_star_are_never_stored(
    headers: CIMultiDict[str], request_headers: CIMultiDict[str], status: int, policy: Policy, now: float,
    authenticated: bool,
) -> None:
    assert not storable("GET", request_headers, status, headers, policy, now, authenticated=authenticated).ok


@given(responses(), STATUSES, POLICIES, TIMES, TIMES)
def test_freshness_never_exceeds_max_ttl_and_age_is_never_negative(
    headers: CIMultiDict[str], status: int, policy: Policy, request_time: float, response_time: float
) -> None:
    entry = freshness(status, headers, policy, response_time, request_time=request_time)
    assert entry.lifetime >= 0
    assert policy.max_ttl is None or entry.lifetime <= policy.max_ttl
    assert entry.initial_age >= 0 and entry.stale_if_error >= 0 and entry.stale_while_revalidate >= 0
    for later in (response_time - 1e6, response_time, response_time + 1, response_time + 1e6):
        assert entry.age(later) >= 0
        assert lookup(entry, h(), later).age >= 0


@given(responses(), REQUESTS, STATUSES, POLICIES, TIMES, st.floats(0, 1e7))
def test_a_stored_entry_is_served_only_as_the_rules_allow(
    headers: CIMultiDict[str], request_headers: CIMultiDict[str], status: int, policy: Policy, now: float,
    after: float,
) -> None:
    decision = storable("GET", request_headers, status, headers, policy, now)
    entry = decision.freshness
    assume(entry is not None)
    assert entry is not None and decision.ok
    verdict = lookup(entry, request_headers, now + after)
    age = entry.age(now + after)
    if verdict.action is Action.HIT:
        assert age < entry.lifetime
    if verdict.action is Action.STALE:
        assert 0 <= age - entry.lifetime < entry.stale_while_revalidate
    revalidate = any(d in headers["Cache-Control"] for d in ("must-revalidate", "proxy-revalidate"))
    if revalidate and verdict.action is not Action.REFETCH:
        assert verdict.action is Action.HIT
    if "Authorization" in request_headers and verdict.action is not Action.REFETCH:
        assert any(d in headers["Cache-Control"] for d in ("public", "s-maxage", "must-revalidate"))
    assert math.isfinite(entry.keep_until)


PATHS = st.from_regex(r"/[a-z0-9/%.~-]{0,20}", fullmatch=True)
VALUES = st.from_regex(r"[!-+\--~]{1,12}", fullmatch=True)  # visible ASCII without ","
PARTS = st.tuples(st.sampled_from(["users", "orders", "users "]), st.sampled_from(["GET", "OPTIONS", "PROPFIND"]),
                  PATHS, st.text(max_size=12), st.none() | VALUES)


@given(PARTS, PARTS)
def test_a_key_differs_whenever_route_method_path_query_or_a_key_header_differs(
    one: tuple[str, str, str, str, str | None], two: tuple[str, str, str, str, str | None]
) -> None:
    def made(parts: tuple[str, str, str, str, str | None]) -> str:
        route, method, path, query, tenant = parts
        headers = h() if tenant is None else h(("X-Tenant", tenant))
        return cache_key(route, method, path, query, headers, ("X-Tenant",))

    assert (made(one) == made(two)) == (one == two)
    assert made(one).startswith(key_prefix(one[0], one[2]))
    assert made(one).startswith(key_prefix(two[0], two[2])) == (one[0] == two[0] and one[2] == two[2])


@given(st.lists(VALUES, min_size=1, max_size=4), st.lists(st.sampled_from(["", " ", "\t", " ,"]), min_size=8,
                                                          max_size=8), st.integers(0, 4))
def test_a_key_ignores_whitespace_and_line_splits_in_header_values(
    members: list[str], spaces: list[str], cut: int
) -> None:
    def line(part: list[str]) -> str:
        return ",".join(f"{spaces[i % 8]}{m}{spaces[(i + 3) % 8]}" for i, m in enumerate(part))

    plain = h(("Accept-Language", ",".join(members)))
    split = h(*[("accept-language", line(part)) for part in (members[:cut], members[cut:]) if part])
    assert key(headers=plain, varies=("accept-language",)) == key(headers=split, varies=("accept-language",))
