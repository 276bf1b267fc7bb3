"""Reading the header fields a cache decides by: Cache-Control (RFC 9111 §5.2), Expires and Date
(HTTP-date, RFC 9110 §5.6.7), Age (RFC 9111 §5.1) and Vary (RFC 9110 §12.5.5).

Forgiving by design: any text parses and nothing raises. Where a value cannot be read, the
reading is the one that caches less: an unreadable ``max-age`` is 0 (stale at once), an
unreadable ``Vary`` member is ``*`` (never stored), an invalid ``Expires`` is in the past, and a
restrictive directive (``no-store``, ``private``, ...) counts even when its element is malformed.
"""

from __future__ import annotations

import calendar
import datetime
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

# RFC 9111 §1.2.2: a delta-seconds too large to represent is read as 2^31.
MAX_DELTA = 2**31

_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
# One list element: token [ "=" ( token / quoted-string ) ], optional whitespace around it and
# around "=" (RFC 9110 §5.6.1 lists; the whitespace around "=" is tolerated, not required).
_ELEMENT = re.compile(
    rf'[ \t]*({_TOKEN})[ \t]*(?:=[ \t]*(?:"((?:[^"\\]|\\.)*)"|({_TOKEN})))?[ \t]*(?:,|\Z)', re.DOTALL
)
_EMPTY = re.compile(r"[ \t]*(?:,|\Z)")  # empty list elements are allowed and ignored (RFC 9110 §5.6.1)
_LEADING_NAME = re.compile(rf"[ \t]*({_TOKEN})")
_QUOTED_PAIR = re.compile(r"\\(.)", re.DOTALL)
_NAME = re.compile(_TOKEN)


class Directive(NamedTuple):
    """One Cache-Control element: the name lower-cased, its argument unquoted (None when it has
    none), and whether the element parsed (a malformed one keeps its leading name)."""

    name: str
    argument: str | None
    valid: bool = True


def directives(values: str | Iterable[str]) -> list[Directive]:
    """The elements of one or more Cache-Control field lines, in order.

    Each line is read on its own (an unclosed quote never swallows the next line); joining the
    lines with commas would give the same elements (RFC 9110 §5.3). A malformed element — junk
    after the argument, an unclosed quote, no ``=`` argument — becomes ``Directive(name, None,
    False)`` when it starts with a token, and is skipped otherwise.
    """
    lines = (values,) if isinstance(values, str) else values
    out: list[Directive] = []
    for text in lines:
        pos, end = 0, len(text)
        while pos < end:
            element = _ELEMENT.match(text, pos)
            if element is not None:
                name, quoted, token = element.groups()
                if token is not None:
                    argument: str | None = token
                elif quoted is not None:
                    argument = _QUOTED_PAIR.sub(r"\1", quoted) if "\\" in quoted else quoted
                else:
                    argument = None
                out.append(Directive(name.lower(), argument))
                pos = element.end()
                continue
            empty = _EMPTY.match(text, pos)
            if empty is not None:
                pos = empty.end()
                continue
            leading = _LEADING_NAME.match(text, pos)
            if leading is not None:
                out.append(Directive(leading.group(1).lower(), None, False))
            pos = _after_next_comma(text, pos)
    return out


def _after_next_comma(text: str, pos: int) -> int:
    """The position after the next comma outside a quoted string (or the end)."""
    quoted = False
    i, end = pos, len(text)
    while i < end:
        char = text[i]
        if quoted:
            if char == "\\":
                i += 1
            elif char == '"':
                quoted = False
        elif char == '"':
            quoted = True
        elif char == ",":
            return i + 1
        i += 1
    return end


@dataclass(frozen=True, slots=True, eq=False)
class CacheControl:
    """The directives of a request's or a response's Cache-Control, by name.

    ``arguments`` holds every directive seen (unknown ones too; they change nothing), with the
    argument of its first occurrence. RFC 9111 §4.2.1 says a directive given several values is
    read either by its first occurrence or as stale; the gateway takes the stale side: such a
    name is in ``conflicting`` and ``seconds()`` reads it as 0, so a doubled ``max-age`` or
    ``s-maxage`` makes the response stale at once, and a doubled ``stale-if-error`` or
    ``stale-while-revalidate`` allows no staleness.
    """

    arguments: Mapping[str, str | None] = field(default_factory=dict)
    conflicting: frozenset[str] = frozenset()
    malformed: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, values: str | Iterable[str]) -> CacheControl:
        """Read Cache-Control field lines (``headers.getall("Cache-Control", ())``)."""
        arguments: dict[str, str | None] = {}
        parsed: set[str] = set()
        conflicting: set[str] = set()
        malformed: set[str] = set()
        for name, argument, valid in directives(values):
            if not valid:
                malformed.add(name)
                arguments.setdefault(name, None)
            elif name not in parsed:
                parsed.add(name)
                arguments[name] = argument
            elif arguments[name] != argument:
                conflicting.add(name)
        return cls(arguments, frozenset(conflicting), frozenset(malformed))

    def __contains__(self, name: object) -> bool:
        return name in self.arguments

    def seconds(self, name: str) -> int | None:
        """A delta-seconds argument (RFC 9111 §1.2.2): None when the directive is absent, 0 when
        its argument is missing, not a non-negative integer, malformed or conflicting (RFC 9111
        §4.2.1: invalid freshness information is stale), at most ``MAX_DELTA``."""
        if name not in self.arguments:
            return None
        argument = self.arguments[name]
        if (argument is None or name in self.conflicting or name in self.malformed
                or not (argument.isascii() and argument.isdigit())):
            return 0
        if len(argument) > 10:  # also keeps int() away from very long digit strings
            return MAX_DELTA
        return min(int(argument), MAX_DELTA)

    # Restrictive directives count whenever they appear, even in a malformed element
    # (RFC 9111 §4.2.1: when directives conflict, the most restrictive one is honoured).

    @property
    def no_store(self) -> bool:
        return "no-store" in self.arguments

    @property
    def no_cache(self) -> bool:
        """Also the qualified form ``no-cache="Set-Cookie"``, read as the unqualified one
        (RFC 9111 §5.2.2.4 notes that caches commonly do)."""
        return "no-cache" in self.arguments

    @property
    def private(self) -> bool:
        """Also the qualified form ``private="X-User"``, read as the unqualified one (RFC 9111
        §5.2.2.7): a shared cache stores none of the response."""
        return "private" in self.arguments

    @property
    def must_revalidate(self) -> bool:
        return "must-revalidate" in self.arguments

    @property
    def proxy_revalidate(self) -> bool:
        return "proxy-revalidate" in self.arguments

    @property
    def must_understand(self) -> bool:
        return "must-understand" in self.arguments

    # A permissive directive counts only when its element parsed.

    @property
    def public(self) -> bool:
        return "public" in self.arguments and "public" not in self.malformed

    @property
    def max_age(self) -> int | None:
        return self.seconds("max-age")

    @property
    def s_maxage(self) -> int | None:
        return self.seconds("s-maxage")

    @property
    def min_fresh(self) -> int | None:
        return self.seconds("min-fresh")

    @property
    def stale_if_error(self) -> int | None:
        return self.seconds("stale-if-error")

    @property
    def stale_while_revalidate(self) -> int | None:
        return self.seconds("stale-while-revalidate")


EMPTY = CacheControl()

# --- HTTP-date (RFC 9110 §5.6.7): IMF-fixdate, and the obsolete RFC 850 and asctime forms ------

_MONTHS = {m: i for i, m in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1)}
_CLOCK = r"([0-9]{2}):([0-9]{2}):([0-9]{2})"
_IMF_FIXDATE = re.compile(
    rf"[ \t]*(?:[A-Za-z]{{3}},[ \t]*)?([0-9]{{1,2}})[ \t]+([A-Za-z]{{3}})[ \t]+([0-9]{{4}})[ \t]+{_CLOCK}"
    r"[ \t]+GMT[ \t]*", re.IGNORECASE)
_RFC850_DATE = re.compile(
    rf"[ \t]*[A-Za-z]+,[ \t]*([0-9]{{1,2}})-([A-Za-z]{{3}})-([0-9]{{2}})[ \t]+{_CLOCK}[ \t]+GMT[ \t]*",
    re.IGNORECASE)
_ASCTIME_DATE = re.compile(
    rf"[ \t]*[A-Za-z]{{3}}[ \t]+([A-Za-z]{{3}})[ \t]+([0-9]{{1,2}})[ \t]+{_CLOCK}[ \t]+([0-9]{{4}})[ \t]*")


def parse_http_date(value: str, now: float | None = None) -> int | None:
    """Seconds since the epoch for an HTTP-date, or None when ``value`` is not one.

    All three forms are accepted, as RFC 9110 §5.6.7 requires; month and day names in any case.
    An RFC 850 two-digit year more than 50 years after ``now`` is read in the past century
    (without ``now``: 00-69 are 20xx, 70-99 are 19xx). A leap second reads as :59.
    """
    if match := _IMF_FIXDATE.fullmatch(value):
        day, month, year, hour, minute, second = match.groups()
        full_year = int(year)
    elif match := _RFC850_DATE.fullmatch(value):
        day, month, year, hour, minute, second = match.groups()
        full_year = _two_digit_year(int(year), now)
    elif match := _ASCTIME_DATE.fullmatch(value):
        month, day, hour, minute, second, year = match.groups()
        full_year = int(year)
    else:
        return None
    month_number = _MONTHS.get(month.lower())
    if month_number is None:
        return None
    try:
        moment = datetime.datetime(full_year, month_number, int(day), int(hour), int(minute),
                                   min(int(second), 59))
    except ValueError:  # 31 February, hour 25, year 0
        return None
    return calendar.timegm(moment.timetuple())


def _two_digit_year(year: int, now: float | None) -> int:
    if now is None:
        return 2000 + year if year < 70 else 1900 + year
    try:
        current = datetime.datetime.fromtimestamp(now, datetime.UTC).year
    except (OverflowError, OSError, ValueError):
        current = 2000
    full = current - current % 100 + year
    return full - 100 if full > current + 50 else full


def parse_age(values: Iterable[str]) -> int | None:
    """The Age field (RFC 9111 §5.1): a non-negative integer, at most ``MAX_DELTA``; anything
    else is ignored. Of several values (lines or list members) the largest counts: the oldest
    claim is the safe one."""
    found: int | None = None
    for value in values:
        for member in value.split(","):
            member = member.strip(" \t")
            if member.isascii() and member.isdigit():
                seconds = MAX_DELTA if len(member) > 10 else min(int(member), MAX_DELTA)
                found = seconds if found is None else max(found, seconds)
    return found


def parse_vary(values: Iterable[str]) -> tuple[str, ...]:
    """The Vary field (RFC 9110 §12.5.5) as lower-cased field names, sorted and without repeats;
    ``("*",)`` when any member is ``*`` or is not a field name (then no request can be shown to
    match, so the response is never stored)."""
    names: set[str] = set()
    for value in values:
        for member in value.split(","):
            member = member.strip(" \t")
            if not member:
                continue
            if member == "*" or _NAME.fullmatch(member) is None:
                return ("*",)
            names.add(member.lower())
    return tuple(sorted(names))
