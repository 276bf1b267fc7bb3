"""Reading Cache-Control, HTTP-dates, Age and Vary (gateway/cache/control.py): example tables
citing RFC 9111 / RFC 9110, and hypothesis properties (bounded in ``make test``, long under
HYPOTHESIS_PROFILE=fuzz, see tests/conftest.py)."""

from __future__ import annotations

import calendar
import datetime
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.cache.control import MAX_DELTA, CacheControl, Directive, directives, parse_age, parse_http_date, parse_vary

# --- Cache-Control, element by element (RFC 9111 §5.2, RFC 9110 §5.6) ---------------------------

PARSED = [
    # (field lines, arguments, conflicting, malformed)
    ("max-age=60", {"max-age": "60"}, set(), set()),
    ("Public, MAX-AGE=60", {"public": None, "max-age": "60"}, set(), set()),  # §5.2: names are case-insensitive
    ('max-age="60"', {"max-age": "60"}, set(), set()),  # §5.2: token or quoted-string arguments
    ('no-cache="Set-Cookie, X-Foo"', {"no-cache": "Set-Cookie, X-Foo"}, set(), set()),  # comma inside quotes
    (r'ext="a \"b\" \\c", max-age=5', {"ext": 'a "b" \\c', "max-age": "5"}, set(), set()),  # §5.6.4 quoted-pair
    (" , ,max-age=5,,\t", {"max-age": "5"}, set(), set()),  # RFC 9110 §5.6.1: empty elements ignored
    (["max-age=5", "no-store"], {"max-age": "5", "no-store": None}, set(), set()),  # several field lines
    ("max-age = 5 ,no-store", {"max-age": "5", "no-store": None}, set(), set()),  # whitespace tolerated
    ("max-age=5, max-age=6", {"max-age": "5"}, {"max-age"}, set()),  # RFC 9111 §4.2.1: conflicting
    (["max-age=5", 'max-age="5"'], {"max-age": "5"}, set(), set()),  # same value twice is no conflict
    ("private, private", {"private": None}, set(), set()),
    ("no-store junk", {"no-store": None}, set(), {"no-store"}),
    ('max-age="5', {"max-age": None}, set(), {"max-age"}),  # unclosed quote
    ('max-age=5"x", public', {"max-age": None, "public": None}, set(), {"max-age"}),
    (r'junk"a\",b", max-age=5', {"junk": None, "max-age": "5"}, set(), {"junk"}),  # skipped past its quoted comma
    ("=5, max-age=1", {"max-age": "1"}, set(), set()),  # an element without a name is dropped
    ("foo-bar=baz, x", {"foo-bar": "baz", "x": None}, set(), set()),  # unknown directives are kept, and inert
    (["private=\"a", "max-age=9"], {"private": None, "max-age": "9"}, set(), {"private"}),  # a line's quote ends there
    ("", {}, set(), set()),
]


@pytest.mark.parametrize(("lines", "arguments", "conflicting", "malformed"), PARSED)
def test_cache_control_is_read_directive_by_directive(
    lines: str | list[str], arguments: dict[str, str | None], conflicting: set[str], malformed: set[str]
) -> None:
    control = CacheControl.parse(lines)
    assert dict(control.arguments) == arguments
    assert control.conflicting == conflicting
    assert control.malformed == malformed


SECONDS = [
    # RFC 9111 §1.2.2 delta-seconds; §4.2.1: invalid or conflicting freshness is stale (0)
    ("max-age=60", 60),
    ("max-age=0", 0),
    ('max-age="120"', 120),
    ("max-age=-1", 0),
    ("max-age=abc", 0),
    ("max-age=1.5", 0),
    ("max-age", 0),
    ("max-age=", 0),
    ("max-age=99999999999999999999", MAX_DELTA),
    ("max-age=" + "9" * 5000, MAX_DELTA),
    ("max-age=60, max-age=61", 0),
    ("max-age=60, max-age=60", 60),
    ("no-store", None),
]


@pytest.mark.parametrize(("line", "seconds"), SECONDS)
def test_max_age_reads_as_delta_seconds_and_invalid_values_as_stale(line: str, seconds: int | None) -> None:
    assert CacheControl.parse(line).max_age == seconds


def test_restrictive_directives_count_even_when_malformed_permissive_ones_do_not() -> None:
    control = CacheControl.parse("no-store;, private x, public=\"yes, must-revalidate")
    assert control.no_store and control.private
    assert not control.public  # the unclosed quote swallowed the rest of the line: public is malformed
    assert not control.must_revalidate
    assert CacheControl.parse("public x").public is False
    assert CacheControl.parse("public").public is True


def test_qualified_private_and_no_cache_read_as_unqualified() -> None:
    # RFC 9111 §5.2.2.4 and §5.2.2.7: a shared cache may treat the qualified forms as unqualified
    assert CacheControl.parse('private="X-User"').private
    assert CacheControl.parse('no-cache="Set-Cookie"').no_cache


def test_stale_extensions_and_request_directives() -> None:
    control = CacheControl.parse("stale-while-revalidate=30, stale-if-error=600, min-fresh=5, s-maxage=10")
    assert (control.stale_while_revalidate, control.stale_if_error, control.min_fresh, control.s_maxage) == (
        30, 600, 5, 10)
    assert CacheControl.parse("max-age=60").stale_if_error is None


# --- HTTP-date (RFC 9110 §5.6.7) ------------------------------------------------------------------

NOV_6_1994 = 784111777  # the RFC's own example, Sun, 06 Nov 1994 08:49:37 GMT

DATES = [
    ("Sun, 06 Nov 1994 08:49:37 GMT", NOV_6_1994),  # IMF-fixdate
    ("Sunday, 06-Nov-94 08:49:37 GMT", NOV_6_1994),  # obsolete RFC 850
    ("Sun Nov  6 08:49:37 1994", NOV_6_1994),  # obsolete asctime
    ("sun, 06 NOV 1994 08:49:37 gmt", NOV_6_1994),
    ("Sun, 06 Nov 1994 08:49:60 GMT", NOV_6_1994 + 22),  # a leap second reads as :59
    ("0", None),  # RFC 9111 §5.3: "0" is an invalid date
    ("-1", None),
    ("", None),
    ("Sun, 31 Feb 1994 08:49:37 GMT", None),
    ("Sun, 06 Nov 1994 08:49:37 PST", None),
    ("Sun, 06 Foo 1994 08:49:37 GMT", None),
    ("Sun, 06 Nov 0000 08:49:37 GMT", None),
    ("Sun, 06 Nov 1994 24:49:37 GMT", None),
    ("Sun, ٠٦ Nov 1994 08:49:37 GMT", None),  # Arabic-Indic digits are not DIGIT
]


@pytest.mark.parametrize(("value", "seconds"), DATES)
def test_http_dates_in_all_three_forms(value: str, seconds: int | None) -> None:
    assert parse_http_date(value) == seconds


def test_rfc850_two_digit_years_are_never_more_than_50_years_ahead() -> None:
    in_2026 = calendar.timegm((2026, 6, 1, 0, 0, 0))
    assert parse_http_date("Monday, 01-Jan-76 00:00:00 GMT", in_2026) == calendar.timegm((2076, 1, 1, 0, 0, 0))
    assert parse_http_date("Monday, 01-Jan-77 00:00:00 GMT", in_2026) == calendar.timegm((1977, 1, 1, 0, 0, 0))
    assert parse_http_date("Monday, 01-Jan-77 00:00:00 GMT", 1e300) is not None  # an absurd clock never raises


# --- Age (RFC 9111 §5.1) and Vary (RFC 9110 §12.5.5) -------------------------------------------

AGES = [
    (["60"], 60),
    (["0"], 0),
    ([" 7 "], 7),
    (["-1"], None),
    (["1.5"], None),
    (["abc"], None),
    ([""], None),
    ([], None),
    (["5", "9"], 9),
    (["5, 3"], 5),
    (["abc", "4"], 4),
    (["9" * 40], MAX_DELTA),
]


@pytest.mark.parametrize(("values", "age"), AGES)
def test_age_is_a_non_negative_integer_or_ignored(values: list[str], age: int | None) -> None:
    assert parse_age(values) == age


VARIES = [
    (["Accept-Encoding"], ("accept-encoding",)),
    (["Accept-Language, accept-encoding"], ("accept-encoding", "accept-language")),
    (["Accept", "ACCEPT, Origin"], ("accept", "origin")),
    (["*"], ("*",)),
    (["Accept, *"], ("*",)),
    (["Accept", "*"], ("*",)),
    (["Accept Encoding"], ("*",)),  # not a field name: cannot be matched
    ([" , "], ()),
    ([], ()),
]


@pytest.mark.parametrize(("values", "names"), VARIES)
def test_vary_names_are_case_insensitive_and_star_wins(values: list[str], names: tuple[str, ...]) -> None:
    assert parse_vary(values) == names


# --- properties ------------------------------------------------------------------------------------

TOKEN = st.from_regex(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,12}", fullmatch=True)
TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
OWS = st.sampled_from(["", " ", "  ", "\t", " \t"])
LINES = st.lists(st.text(max_size=60), max_size=4)


@given(LINES)
def test_reading_any_text_never_raises(lines: list[str]) -> None:
    control = CacheControl.parse(lines)
    for name in control.arguments:
        seconds = control.seconds(name)
        assert seconds is not None and 0 <= seconds <= MAX_DELTA
    for line in lines:
        parse_http_date(line)
        parse_http_date(line, 0.0)
    age = parse_age(lines)
    assert age is None or 0 <= age <= MAX_DELTA
    parse_vary(lines)


@st.composite
def rendered_directives(draw: st.DrawFn) -> tuple[list[str], list[tuple[str, str | None]]]:
    """Directive lists (duplicates likely) rendered in odd case, with spaces, empty elements,
    quoted or token arguments, split over several lines; and what was rendered."""
    names = draw(st.lists(st.sampled_from(["max-age", "no-cache", "private", "x-ext"]) | TOKEN, min_size=1,
                          max_size=8))
    elements: list[str] = []
    expected: list[tuple[str, str | None]] = []
    for name in names:
        argument = draw(st.none() | TOKEN | st.text(max_size=10))
        odd_case = "".join(c.upper() if draw(st.booleans()) else c.lower() for c in name)
        if argument is None:
            element = odd_case
        elif draw(st.booleans()) and TOKEN_RE.fullmatch(argument):
            element = f"{odd_case}{draw(OWS)}={draw(OWS)}{argument}"
        else:
            quoted = argument.replace("\\", "\\\\").replace('"', '\\"')
            element = f'{odd_case}={draw(OWS)}"{quoted}"'
        elements.append(draw(OWS) + element + draw(OWS) + "," * draw(st.integers(0, 2)))
        expected.append((name.lower(), argument))
    cut = draw(st.integers(0, len(elements)))
    lines = [",".join(elements[:cut]), ",".join(elements[cut:])]
    return [line for line in lines if line or draw(st.booleans())], expected


@given(rendered_directives())
def test_generated_directive_lists_round_trip(case: tuple[list[str], list[tuple[str, str | None]]]) -> None:
    lines, expected = case
    assert [(d.name, d.argument) for d in directives(lines)] == expected
    control = CacheControl.parse(lines)
    first: dict[str, str | None] = {}
    for name, argument in expected:
        first.setdefault(name, argument)
    assert dict(control.arguments) == first
    assert control.conflicting == {n for n in first if len({a for m, a in expected if m == n}) > 1}
    assert control.malformed == set()


@given(LINES, st.sampled_from(["no-store", "private", "no-cache", "must-revalidate"]),
       st.from_regex(r"[^!#$%&'*+\-.^_`|~0-9A-Za-z]", fullmatch=True), st.text(max_size=20))
def test_a_restrictive_directive_counts_whatever_surrounds_it(
    before: list[str], name: str, stop: str, junk: str
) -> None:
    control = CacheControl.parse([*before, name + stop + junk])
    assert name in control


@given(st.lists(TOKEN, max_size=6), st.lists(st.booleans(), min_size=6, max_size=6))
def test_vary_reads_the_same_in_any_case(names: list[str], upper: list[bool]) -> None:
    odd = [n.upper() if u else n.lower() for n, u in zip(names, upper, strict=False)]
    expected = ("*",) if "*" in names else tuple(sorted({n.lower() for n in names}))
    assert parse_vary([", ".join(odd)]) == expected


@given(st.datetimes(min_value=datetime.datetime(1900, 1, 1), max_value=datetime.datetime(9999, 12, 31)))
def test_http_dates_round_trip_in_every_form(moment: datetime.datetime) -> None:
    moment = moment.replace(microsecond=0)
    seconds = calendar.timegm(moment.timetuple())
    assert parse_http_date(moment.strftime("%a, %d %b %Y %H:%M:%S GMT")) == seconds
    assert parse_http_date(moment.strftime("%a %b ") + f"{moment.day:>2}" + moment.strftime(" %H:%M:%S %Y")) == seconds
    assert parse_http_date(moment.strftime("%A, %d-%b-%y %H:%M:%S GMT"), float(seconds)) == seconds


def test_directives_keep_their_order_and_validity() -> None:
    assert directives(["a, b=1", "c=\"x"]) == [Directive("a", None), Directive("b", "1"), Directive("c", None, False)]
