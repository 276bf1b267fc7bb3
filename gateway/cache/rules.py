"""The response cache's decisions (RFC 9111, RFC 5861; docs/caching.md) as pure functions of the
request, the response, the route's options and the time. No I/O: the `cache` plugin and the
step cache act on what these return and log its ``reason``.

    check_request    may this request use the cache at all?               -> Decision
    storable         may this response be stored (RFC 9111 §3)?           -> Decision (+ its Freshness)
    freshness        lifetime, age and stale windows, fixed when stored   -> Freshness
    lookup           may a stored entry answer this request now?          -> Lookup (HIT, STALE, REFETCH)
    stored_headers   the response headers an entry keeps (§3.1)
    vary             the request headers a response varies on (§4.1); vary_values to match a variant
    allows_credentials  may a stored response answer a request with credentials (§3.5)?
    cache_key        where an entry lives; key_prefix for purge and invalidation
    invalidates      does an unsafe request's response invalidate its path (§4.4)?
    request_control  a request's Cache-Control, Pragma included (§5.4)

Times are seconds since the epoch (``time.time()``), durations seconds.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from hashlib import blake2b
from typing import TypeAlias

from multidict import CIMultiDict, CIMultiDictProxy

from gateway.cache.control import EMPTY, CacheControl, parse_age, parse_http_date, parse_vary
from gateway.forwarding import strip_hop_by_hop

Headers: TypeAlias = "CIMultiDict[str] | CIMultiDictProxy[str]"

# RFC 9110 §15.1: the statuses "heuristically cacheable" (cacheable by default).
DEFAULT_CACHEABLE = frozenset((200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501))
# The methods whose responses are stored: their answer does not depend on a request body, which
# is not part of the key. A HEAD is answered from the GET entry and never stored itself.
CACHED_METHODS = frozenset(("GET", "HEAD"))
# RFC 9110 §9.2.1; any other method, unknown ones included, invalidates (RFC 9111 §4.4).
SAFE_METHODS = frozenset(("GET", "HEAD", "OPTIONS", "TRACE"))
# RFC 5861 §4: the errors a stale-if-error entry may stand in for (also the gateway's own 502,
# 503 and 504 when the upstream cannot be reached).
ERROR_STATUSES = frozenset((500, 502, 503, 504))
# Statuses never stored: 1xx are not final; the gateway neither combines ranges (206) nor sends
# conditional requests of its own (304) (RFC 9111 §3, §3.3, §4.3.4).
_NOT_STORED = frozenset((206, 304))
_PRAGMA_NO_CACHE = CacheControl({"no-cache": None})


@dataclass(frozen=True, slots=True)
class Policy:
    """The options of a route's `cache` plugin or a step's ``cache = {...}`` that the rules read,
    durations in seconds (docs/caching.md). ``max_ttl = None`` caps nothing."""

    ttl: float = 0.0
    max_ttl: float | None = None
    methods: frozenset[str] = frozenset(("GET", "HEAD"))
    key_headers: tuple[str, ...] = ()
    stale_if_error: float = 0.0
    stale_while_revalidate: float = 0.0


@dataclass(frozen=True, slots=True)
class Freshness:
    """What a stored response allows, fixed when it is stored; plain numbers, so an entry can
    carry it anywhere (``dataclasses.asdict`` / ``Freshness(**fields)``).

    ``lifetime`` is the freshness lifetime (RFC 9111 §4.2.1) after the route's ``max_ttl``;
    ``initial_age`` the corrected initial age (§4.2.3) at ``response_time``; the stale windows
    are how long past its lifetime the entry may still answer (RFC 5861); ``shared`` says it may
    answer a request carrying credentials (§3.5).
    """

    lifetime: float
    initial_age: float
    response_time: float
    stale_while_revalidate: float = 0.0
    stale_if_error: float = 0.0
    shared: bool = False

    def age(self, now: float) -> float:
        """The current age (RFC 9111 §4.2.3): never negative, even when the clock went back."""
        return self.initial_age + max(0.0, now - self.response_time)

    @property
    def stale_at(self) -> float:
        """When the entry stops being fresh."""
        return self.response_time + self.lifetime - self.initial_age

    @property
    def keep_until(self) -> float:
        """When the entry can no longer answer anything, stale windows included (a store's TTL)."""
        return self.stale_at + max(self.stale_while_revalidate, self.stale_if_error)


@dataclass(frozen=True, slots=True)
class Decision:
    """A yes or no, and a short reason to log (``"no-store"``, ``"authorization"``, ...).
    ``storable`` says yes with the response's ``freshness``, for the entry to keep."""

    ok: bool
    reason: str
    freshness: Freshness | None = None


class Action(enum.Enum):
    """What to do with a stored entry for one request."""

    HIT = "hit"  # fresh: answer from the cache
    STALE = "stale"  # within stale-while-revalidate: answer from the cache, refresh in the background
    REFETCH = "refetch"  # go upstream; ``Lookup.fallback`` says whether the entry may stand in for an error


@dataclass(frozen=True, slots=True)
class Lookup:
    """The verdict on a stored entry: the action, its ``age`` for the Age header (whole
    seconds), whether it may answer when the upstream fails (``fallback``), and why."""

    action: Action
    age: int
    fallback: bool
    reason: str


def request_control(headers: Headers) -> CacheControl:
    """The request's Cache-Control; without one, ``Pragma: no-cache`` reads as ``no-cache``
    (RFC 9111 §5.4)."""
    values = headers.getall("Cache-Control", ())
    if values:
        return CacheControl.parse(values)
    pragma = headers.getall("Pragma", ())
    if pragma and "no-cache" in CacheControl.parse(pragma):
        return _PRAGMA_NO_CACHE
    return EMPTY


def check_request(method: str, headers: Headers, policy: Policy) -> Decision:
    """Whether the cache takes part in this request at all. No: a method the route does not
    cache, or one other than GET and HEAD (the key has no body); a request ``no-store``
    (RFC 9111 §5.2.1.5: neither answered from nor stored in the cache)."""
    if method not in policy.methods or method not in CACHED_METHODS:
        return Decision(False, f"method {method}")
    if request_control(headers).no_store:
        return Decision(False, "request no-store")
    return Decision(True, "cacheable request")


def storable(
    method: str,
    request_headers: Headers,
    status: int,
    response_headers: Headers,
    policy: Policy,
    now: float,
    *,
    request_time: float | None = None,
    authenticated: bool = False,
) -> Decision:
    """Whether this response may be stored (RFC 9111 §3, and docs/caching.md for each rule).

    ``now`` is when the response arrived, ``request_time`` when its request was sent (default
    ``now``). ``authenticated``: the request carried credentials the gateway consumed (an auth
    plugin set a consumer), treated like an ``Authorization`` header.
    """
    if method == "HEAD":
        return Decision(False, "HEAD (answered from the GET entry)")
    refused = check_request(method, request_headers, policy)
    if not refused.ok:
        return refused
    if status < 200:
        return Decision(False, f"status {status} is not final")
    if status in _NOT_STORED:
        return Decision(False, f"status {status}")
    control = CacheControl.parse(response_headers.getall("Cache-Control", ()))
    if control.no_store:
        return Decision(False, "no-store")
    if control.private:
        return Decision(False, "private")
    if control.no_cache:  # may be stored, but only used after a revalidation the gateway never makes
        return Decision(False, "no-cache")
    if "Set-Cookie" in response_headers:
        return Decision(False, "set-cookie")
    if vary(response_headers) == ("*",):
        return Decision(False, "vary *")
    if (authenticated or "Authorization" in request_headers) and not _shares_credentials(control):
        return Decision(False, "authorization")
    if control.must_understand and status not in DEFAULT_CACHEABLE:
        return Decision(False, f"must-understand with status {status}")
    if status not in DEFAULT_CACHEABLE and _explicit_lifetime(control, response_headers, now) is None:
        return Decision(False, f"status {status} without explicit freshness")
    entry = _freshness(control, status, response_headers, policy, now, now if request_time is None else request_time)
    if entry.keep_until <= now:
        return Decision(False, "stale on arrival" if entry.lifetime > 0 else "no freshness")
    return Decision(True, "storable", entry)


def freshness(
    status: int, response_headers: Headers, policy: Policy, now: float, *, request_time: float | None = None
) -> Freshness:
    """The freshness of a response being stored (``now``: when it arrived; ``request_time``: when
    its request was sent, default ``now``).

    Lifetime (RFC 9111 §4.2.1): ``s-maxage``, else ``max-age``, else ``Expires - Date``; when the
    upstream gives none, the route's ``ttl`` for a status cacheable by default (0 otherwise);
    never above ``max_ttl``. No heuristic from Last-Modified (§4.2.2 allows one; the route's
    ``ttl`` is the operator's explicit heuristic instead).

    Stale windows (RFC 5861): the response's own ``stale-while-revalidate`` / ``stale-if-error``
    win over the route's options, which apply when the response names none. ``must-revalidate``,
    ``proxy-revalidate`` and ``no-cache`` forbid any stale use (RFC 9111 §4.2.4), and so does
    ``s-maxage`` for the route's options (it implies ``proxy-revalidate``, §5.2.2.10).
    """
    control = CacheControl.parse(response_headers.getall("Cache-Control", ()))
    return _freshness(control, status, response_headers, policy, now, now if request_time is None else request_time)


def lookup(entry: Freshness, request_headers: Headers, now: float, *, authenticated: bool = False) -> Lookup:
    """May this stored entry answer this request (RFC 9111 §4, §4.2.4; RFC 5861)?

    A request with credentials is answered only by an entry that allows it (§3.5). The
    request's ``no-cache`` (or ``Pragma: no-cache``), ``max-age=0``, a ``max-age`` the entry is
    older than, or a ``min-fresh`` it cannot meet, send the request upstream (a revalidation
    is a full request: the gateway does not send conditional requests). ``max-stale`` and
    ``only-if-cached`` are not acted on.
    """
    age = entry.age(now)
    whole = int(age)
    if (authenticated or "Authorization" in request_headers) and not entry.shared:
        return Lookup(Action.REFETCH, whole, False, "authorization")
    request = request_control(request_headers)
    if request.no_store:
        return Lookup(Action.REFETCH, whole, False, "request no-store")
    stale_for = age - entry.lifetime
    fallback = stale_for < 0 or stale_for < entry.stale_if_error
    if request.no_cache:
        return Lookup(Action.REFETCH, whole, fallback, "request no-cache")
    max_age = request.max_age
    if max_age is not None and (max_age == 0 or age > max_age):
        return Lookup(Action.REFETCH, whole, fallback, "request max-age")
    min_fresh = request.min_fresh
    if min_fresh is not None and entry.lifetime - age < min_fresh:
        return Lookup(Action.REFETCH, whole, fallback, "request min-fresh")
    if stale_for < 0:
        return Lookup(Action.HIT, whole, True, "fresh")
    if stale_for < entry.stale_while_revalidate:
        return Lookup(Action.STALE, whole, True, "stale-while-revalidate")
    return Lookup(Action.REFETCH, whole, fallback, "stale")


def stored_headers(headers: Headers) -> CIMultiDict[str]:
    """The response headers an entry keeps (RFC 9111 §3.1): without hop-by-hop headers (and
    those Connection names), ``Set-Cookie`` (one client's cookie is never another's) and
    ``Age`` (the entry's ``Freshness`` accounts for it; the cache sends its own on each hit)."""
    kept = strip_hop_by_hop(headers, request=False)
    kept.popall("Set-Cookie", None)
    kept.popall("Age", None)
    return kept


def vary(response_headers: Headers) -> tuple[str, ...]:
    """The request headers a response varies on, lower-cased and sorted; ``("*",)`` when it
    cannot be matched (then it is never stored)."""
    return parse_vary(response_headers.getall("Vary", ()))


def vary_values(vary_names: Sequence[str], request_headers: Headers) -> tuple[str | None, ...]:
    """The request's value for each of ``vary_names``, normalized as in ``cache_key`` (None when
    absent). A stored variant answers a request whose values equal those stored with it (RFC 9111
    §4.1), so entries kept side by side under one key are told apart the same way."""
    return tuple(_normalized(request_headers, name) for name in vary_names)


def allows_credentials(response_headers: Headers) -> bool:
    """Whether a stored response may answer a request carrying credentials (RFC 9111 §3.5), read
    from its stored headers: what ``Freshness.shared`` records when it is stored."""
    return _shares_credentials(CacheControl.parse(response_headers.getall("Cache-Control", ())))


def cache_key(
    route: str,
    method: str,
    path: str,
    query: str,
    headers: Headers,
    key_headers: Sequence[str] = (),
    vary_names: Sequence[str] = (),
) -> str:
    """Where the response to this request is stored (RFC 9111 §4.1; docs/caching.md).

    The route name, then digests of the normalized path and of the rest: the method (HEAD is
    looked up as GET), the query string as given, the values of ``key_headers`` and, for an
    entry that varies, of its ``vary_names`` (``vary(response_headers)``). A header's lines are
    joined and the whitespace around its list members dropped; an absent header differs from an
    empty one. Digests keep credentials sent in a query or a key header out of the store and
    bound the key's length.
    """
    rest = f"{_field('GET' if method == 'HEAD' else method)} {_field(query)}"
    for section, names in (("h", key_headers), ("v", vary_names)):
        if names:
            for name, value in zip(names, vary_values(names, headers), strict=True):
                rest += f" {section}{_field(name.lower())}{'!' if value is None else '=' + _field(value)}"
    return key_prefix(route, path) + _digest(rest)


def key_prefix(route: str, path: str | None = None) -> str:
    """The start shared by every key of a route, or of one path on a route (for purge and for
    invalidation). Keys of different routes never share it, whatever their names."""
    prefix = f"{_field(route)} "
    return prefix if path is None else f"{prefix}{_digest(path)} "


def invalidates(method: str, status: int) -> Decision:
    """Whether this response to an unsafe request invalidates the stored entries for its path
    (RFC 9111 §4.4): any method but GET, HEAD, OPTIONS and TRACE, answered with a non-error
    status (2xx or 3xx). All entries under ``key_prefix(route, path)`` go: every query,
    method and variant of that path."""
    if method in SAFE_METHODS:
        return Decision(False, f"safe method {method}")
    if not 200 <= status < 400:
        return Decision(False, f"status {status}")
    return Decision(True, f"{method} answered {status}")


# --- the arithmetic ------------------------------------------------------------------------------


def _freshness(
    control: CacheControl, status: int, headers: Headers, policy: Policy, response_time: float, request_time: float
) -> Freshness:
    lifetime = _explicit_lifetime(control, headers, response_time)
    if lifetime is None:  # the upstream gives none: the route's ttl, for a status cacheable by default
        lifetime = policy.ttl if status in DEFAULT_CACHEABLE else 0.0
    if policy.max_ttl is not None:
        lifetime = min(lifetime, policy.max_ttl)
    stale_while_revalidate, stale_if_error = _stale_windows(control, policy)
    return Freshness(
        lifetime=max(0.0, lifetime),
        initial_age=_initial_age(headers, request_time, response_time),
        response_time=response_time,
        stale_while_revalidate=stale_while_revalidate,
        stale_if_error=stale_if_error,
        shared=_shares_credentials(control),
    )


def _explicit_lifetime(control: CacheControl, headers: Headers, response_time: float) -> float | None:
    """s-maxage, max-age, or Expires - Date (RFC 9111 §4.2.1); None when the upstream gives none."""
    seconds = control.s_maxage
    if seconds is None:
        seconds = control.max_age
    if seconds is not None:
        return float(seconds)
    expires = headers.getall("Expires", ())
    if not expires:
        return None
    if len({value.strip() for value in expires}) > 1:
        return 0.0  # §4.2.1: several different Expires values read as stale
    expires_at = parse_http_date(expires[0], response_time)
    if expires_at is None:
        return 0.0  # §5.3: an invalid Expires ("0", "-1") is already expired
    return max(0.0, expires_at - _date(headers, response_time))


def _date(headers: Headers, response_time: float) -> float:
    """The Date value, or the response time when it is missing or invalid (RFC 9110 §6.6.1)."""
    value = headers.get("Date")
    date = None if value is None else parse_http_date(value, response_time)
    return response_time if date is None else float(date)


def _initial_age(headers: Headers, request_time: float, response_time: float) -> float:
    """corrected_initial_age (RFC 9111 §4.2.3) from Date, Age and the request/response times."""
    apparent_age = max(0.0, response_time - _date(headers, response_time))
    response_delay = max(0.0, response_time - request_time)
    corrected_age_value = (parse_age(headers.getall("Age", ())) or 0) + response_delay
    return max(apparent_age, corrected_age_value)


def _stale_windows(control: CacheControl, policy: Policy) -> tuple[float, float]:
    """(stale-while-revalidate, stale-if-error) in seconds; see ``freshness``."""
    if control.must_revalidate or control.proxy_revalidate or control.no_cache:
        return 0.0, 0.0
    options_apply = "s-maxage" not in control
    while_revalidate, if_error = control.stale_while_revalidate, control.stale_if_error
    return (
        float(while_revalidate) if while_revalidate is not None
        else policy.stale_while_revalidate if options_apply else 0.0,
        float(if_error) if if_error is not None else policy.stale_if_error if options_apply else 0.0,
    )


def _shares_credentials(control: CacheControl) -> bool:
    """RFC 9111 §3.5: a response to a request with Authorization may be stored by a shared
    cache only with ``public``, ``s-maxage`` or ``must-revalidate`` (well-formed ones)."""
    return control.public or any(
        name in control and name not in control.malformed for name in ("s-maxage", "must-revalidate")
    )


def _normalized(headers: Headers, name: str) -> str | None:
    """A header's lines joined, list members stripped of whitespace, empty ones dropped (RFC
    9111 §4.1's normalizations that hold for any field); None when absent."""
    values = headers.getall(name, ())
    if not values:
        return None
    if len(values) == 1 and "," not in values[0]:
        return values[0].strip(" \t")
    return ",".join(member for value in values for part in value.split(",") if (member := part.strip(" \t")))


def _field(value: str) -> str:
    """A length-prefixed field: fields joined with spaces stay unambiguous whatever they hold."""
    return f"{len(value)}:{value}"


def _digest(text: str) -> str:
    return blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
