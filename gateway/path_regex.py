"""Route path regexes that match in linear time, or a reason to refuse them at load time.

aiohttp's router compiles a route path such as ``/files/{name:[a-z]+}/{rest:.*}`` into one
Python ``re`` pattern and calls ``fullmatch`` on every request path it may serve. ``re`` is a
backtracking matcher: ``(a+)+b`` takes exponential time on ``aaaa…a!`` (27 characters block
the event loop for seconds) and ``{name}.{ext}`` takes quadratic time on ``a.a.a.…`` (a
quarter of a second for an 8 KiB path). Two ways out were possible:

- compile route patterns with RE2 (google-re2), which never backtracks. But the router is
  aiohttp's ``UrlDispatcher``, which compiles with ``re`` itself: using RE2 would mean a
  router of our own, and only checking that a pattern *also* compiles under RE2 proves
  nothing about how ``re`` runs it.
- prove, before the config is accepted, that ``re`` runs the pattern in linear time, and
  refuse it otherwise. That is what this module does, so the router stays aiohttp's.

The proof follows the known characterisation of backtracking matchers (Weideman, van der
Merwe, Berglund, Watson: "Analyzing matching time behavior of backtracking regular expression
matchers by using ambiguity of NFA", 2016): on an input it rejects, a backtracking matcher
walks every path of the pattern's automaton that reads a prefix of the input. It runs in
linear time exactly when the number of such paths is bounded, that is when the automaton is
neither exponentially ambiguous (a state with two different loops on the same text: ``(a+)+``,
``(a|a)*``, ``(\\w+\\s?)+``) nor polynomially ambiguous (two loops, one after the other, that can
read the same text: ``\\d+\\d+``, ``[^/]+\\.[^/]+``).

The automaton is the position automaton (Glushkov) of the pattern, built from ``re``'s own
parse tree with edge multiplicities, so that the two ways ``(a+)+`` has of reading ``a`` again
stay two edges. Characters are grouped by which positions accept them, so ``\\w``, ``\\d``,
``[^/]`` and literals are compared exactly (Unicode included). Counted repeats ``x{2,5}`` are
unrolled when small and otherwise read as ``x+`` (which has at least the same ambiguity), case
folding only ever widens a class: every simplification errs on the side of refusing.
Backreferences and lookaround assertions are refused outright: no automaton describes them.
"""

from __future__ import annotations

import bisect
import functools
import importlib
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.charsets import ALL, Intervals, charset, complement, flag, literal

_parser: Any = importlib.import_module("re._parser")
_constants: Any = importlib.import_module("re._constants")

MAX_AMBIGUITY = 128  # paths that may read the same text (alternatives sharing a prefix): at most this many
_MAX_POSITIONS = 2000  # positions of the automaton; a longer pattern is refused as too complex
_MAX_UNROLLED = 64  # positions a counted repeat may unroll to before it is read as x+
_BUDGET = 200_000  # states the checks may visit in all
_CAP = 1 << 20  # path counts saturate here

_NONE: Intervals = ()


class _Refused(Exception):
    def __init__(self, kind: str, params: Iterable[str | None] = ()) -> None:
        super().__init__(kind)
        self.kind = kind
        self.params = tuple(params)


@dataclass(frozen=True)
class Verdict:
    """Why a pattern is refused: ``kind`` is one of ``exponential``, ``polynomial``,
    ``ambiguous``, ``backreference``, ``lookaround``, ``complex``; ``params`` names the groups
    (route parameters) involved, None for text outside any group."""

    kind: str
    params: tuple[str | None, ...]


def check(pattern: str) -> Verdict | None:
    """None when ``re`` matches ``pattern`` in time linear in the subject; else why not.
    ``pattern`` must compile (aiohttp has compiled it already)."""
    try:
        parsed = _parser.parse(pattern)
        groups = {index: name for name, index in parsed.state.groupdict.items()}
        automaton = _Automaton()
        whole = automaton.build(parsed, parsed.state.flags, None, groups)
        automaton.link(((_INIT, 1),), whole.first)
        automaton.finish()
        automaton.check_exponential()
        automaton.check_polynomial()
        automaton.check_bounded()
    except _Refused as refused:
        return Verdict(refused.kind, refused.params)
    except (RecursionError, re.error):
        return Verdict("complex", ())
    return None


# --- the position automaton -------------------------------------------------------------

_INIT = -1
Counts = tuple[tuple[int, int], ...]  # (position, number of ways), positions distinct


@dataclass(frozen=True)
class _Fragment:
    nullable: int  # ways of matching the empty string
    first: Counts
    last: Counts


_EMPTY = _Fragment(1, (), ())


def _add(*parts: Iterable[tuple[int, int]]) -> Counts:
    total: dict[int, int] = {}
    for part in parts:
        for position, ways in part:
            total[position] = min(_CAP, total.get(position, 0) + ways)
    return tuple(total.items())


def _times(counts: Counts, factor: int) -> Counts:
    return tuple((p, min(_CAP, ways * factor)) for p, ways in counts) if factor else ()


class _Automaton:
    def __init__(self) -> None:
        self.sets: list[Intervals] = []
        self.params: list[str | None] = []
        self.follow: dict[int, dict[int, int]] = {_INIT: {}}
        self.visited = 0
        self.masks: list[int] = []  # per position: the character groups it accepts, as bits
        self._reach: dict[int, frozenset[int]] = {}
        self.groups: list[tuple[int, ...]] = []  # per character group: the positions accepting it

    # -- construction ------------------------------------------------------------------

    def position(self, ranges: Intervals, param: str | None) -> _Fragment:
        index = len(self.sets)
        if index >= _MAX_POSITIONS:
            raise _Refused("complex", (param,))
        self.sets.append(ranges)
        self.params.append(param)
        self.follow[index] = {}
        return _Fragment(0, ((index, 1),), ((index, 1),))

    def link(self, last: Iterable[tuple[int, int]], first: Iterable[tuple[int, int]]) -> None:
        first = tuple(first)
        for source, ways in last:
            row = self.follow[source]
            for target, more in first:
                row[target] = min(_CAP, row.get(target, 0) + ways * more)

    def concat(self, left: _Fragment, right: _Fragment) -> _Fragment:
        self.link(left.last, right.first)
        return _Fragment(
            min(_CAP, left.nullable * right.nullable),
            _add(left.first, _times(right.first, left.nullable)),
            _add(right.last, _times(left.last, right.nullable)),
        )

    @staticmethod
    def union(left: _Fragment, right: _Fragment) -> _Fragment:
        return _Fragment(min(_CAP, left.nullable + right.nullable), _add(left.first, right.first),
                         _add(left.last, right.last))

    def loop(self, body: _Fragment, at_least_once: bool) -> _Fragment:
        self.link(body.last, body.first)
        return _Fragment(body.nullable if at_least_once else 1, body.first, body.last)

    def repeat(self, low: int, high: int | None, make: Callable[[], _Fragment], size: int) -> _Fragment:
        """``x{low,high}`` (``high`` None: unbounded); ``make`` builds a fresh copy of x."""
        if high == 0:
            return _EMPTY
        copies = low + (1 if high is None else high - low)
        if copies * max(size, 1) > _MAX_UNROLLED:
            # x{low,high} reads a text in at most as many ways as x+ (or x*): check that.
            return self.loop(make(), at_least_once=low > 0)
        result = _EMPTY
        for _ in range(low):
            result = self.concat(result, make())
        if high is None:
            return self.concat(result, self.loop(make(), at_least_once=False))
        tail = _EMPTY
        for _ in range(high - low):  # x(x(x)?)? : one way to read each count
            tail = self.union(self.concat(make(), tail), _EMPTY)
        return self.concat(result, tail)

    def build(self, items: Any, flags: int, param: str | None, groups: Mapping[int, str]) -> _Fragment:
        result = _EMPTY
        for op, arg in items:
            result = self.concat(result, self.node(str(op), arg, flags, param, groups))
        return result

    def node(self, name: str, arg: Any, flags: int, param: str | None, groups: Mapping[int, str]) -> _Fragment:
        if name == "LITERAL":
            return self.position(literal(arg, flags), param)
        if name == "NOT_LITERAL":
            return self.position(complement(((arg, arg),)), param)
        if name == "ANY":
            dotall = flag(flags, "SRE_FLAG_DOTALL")
            return self.position(ALL if dotall else complement(((10, 10),)), param)
        if name == "IN":
            return self.position(charset(arg, flags), param)
        if name == "BRANCH":
            result: _Fragment | None = None
            for branch in arg[1]:
                fragment = self.build(branch, flags, param, groups)
                result = fragment if result is None else self.union(result, fragment)
            return result or _EMPTY
        if name == "SUBPATTERN":
            group, add_flags, del_flags, inner = arg
            named = groups.get(group) if group is not None else None
            return self.build(inner, (flags | add_flags) & ~del_flags, named or param, groups)
        if name == "ATOMIC_GROUP":  # read as an ordinary group: at least as many paths
            return self.build(arg, flags, param, groups)
        if name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            low, high, inner = arg
            unbounded = high is _constants.MAXREPEAT or high >= _constants.MAXREPEAT
            size = _size(inner)
            return self.repeat(int(low), None if unbounded else int(high),
                               lambda: self.build(inner, flags, param, groups), size)
        if name == "AT":  # ^ $ \b \A \Z: ignoring an assertion only adds paths
            return _EMPTY
        if name in ("GROUPREF", "GROUPREF_EXISTS"):
            raise _Refused("backreference", (param,))
        if name in ("ASSERT", "ASSERT_NOT"):
            raise _Refused("lookaround", (param,))
        raise _Refused("complex", (param,))

    # -- analysis ----------------------------------------------------------------------

    def finish(self) -> None:
        """Group the characters by the positions that accept them."""
        bounds = {0}
        for ranges in self.sets:
            for lo, hi in ranges:
                bounds.add(lo)
                bounds.add(hi + 1)
        starts = sorted(b for b in bounds if b <= sys.maxunicode)  # each starts a run of alike characters
        accepting = [0] * len(starts)  # per run: the positions accepting it, as bits
        for position, ranges in enumerate(self.sets):
            for lo, hi in ranges:
                first = bisect.bisect_left(starts, lo)
                last = bisect.bisect_right(starts, hi)
                self.spend(last - first)
                for run in range(first, last):
                    accepting[run] |= 1 << position
        signatures = dict.fromkeys(bits for bits in accepting if bits)
        self.masks = [0] * len(self.sets)
        for group, bits in enumerate(signatures):
            members = tuple(p for p in range(len(self.sets)) if bits >> p & 1)
            self.groups.append(members)
            for position in members:
                self.masks[position] |= 1 << group

    def spend(self, amount: int = 1) -> None:
        self.visited += amount
        if self.visited > _BUDGET:
            raise _Refused("complex", tuple(dict.fromkeys(self.params)))

    def components(self) -> list[list[int]]:
        """Strongly connected components of the positions that lie on a loop."""
        edges = {p: [q for q in row if q != _INIT] for p, row in self.follow.items() if p != _INIT}
        found = _strongly_connected(list(edges), lambda p: edges[p])
        return [c for c in found if len(c) > 1 or c[0] in self.follow[c[0]]]

    def check_exponential(self) -> None:
        """Two different paths from a position back to itself that read the same text."""
        for component in self.components():
            inside = set(component)
            for p in component:
                for q, ways in self.follow[p].items():
                    if q in inside and ways > 1:
                        raise _Refused("exponential", (self.params[p],))

            start = [(p, p) for p in component]
            for product in _strongly_connected(start, functools.partial(self.pairs, inside)):
                diagonal = [a for a, b in product if a == b]
                if diagonal and len(diagonal) < len(product):
                    raise _Refused("exponential", (self.params[diagonal[0]],))

    def pairs(self, inside: set[int], node: tuple[int, int]) -> list[tuple[int, int]]:
        """Successors of a pair of positions in the product automaton (both read one character)."""
        a, b = node
        self.spend()
        return [(x, y) for x in self.follow[a] if x in inside
                for y in self.follow[b] if y in inside and self.masks[x] & self.masks[y]]

    def check_polynomial(self) -> None:
        """Positions p != q with a text that loops on p, leads from p to q and loops on q."""
        components = self.components()
        for first in components:
            for second in components:
                if second[0] not in self.reachable(first[0]):
                    continue
                one, three = set(first), set(second)
                for p in first:
                    for q in second:
                        if p == q:
                            continue
                        middle = {x for x in self.reachable(p) if q in self.reachable(x)}
                        if self.triple_path(p, q, one, middle, three):
                            raise _Refused("polynomial", (self.params[p], self.params[q]))

    def reachable(self, start: int) -> frozenset[int]:
        """The positions reachable from ``start`` (itself included)."""
        if start in self._reach:
            return self._reach[start]
        seen = {start}
        todo = [start]
        while todo:
            for nxt in self.follow[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        self.spend(len(seen))
        self._reach[start] = frozenset(seen)
        return self._reach[start]

    def triple_path(self, p: int, q: int, one: set[int], middle: set[int], three: set[int]) -> bool:
        """Whether one text reads p→p (within ``one``), p→q (within ``middle``), q→q."""
        start = (p, p, q)
        seen = {start}
        todo = [start]
        while todo:
            a, b, c = todo.pop()
            self.spend()
            for x in self.follow[a]:
                if x not in one:
                    continue
                for y in self.follow[b]:
                    if y not in middle or not self.masks[x] & self.masks[y]:
                        continue
                    for z in self.follow[c]:
                        if z in three and self.masks[x] & self.masks[y] & self.masks[z]:
                            node = (x, y, z)
                            if node == (p, q, q):
                                return True
                            if node not in seen:
                                seen.add(node)
                                todo.append(node)
        return False

    def check_bounded(self) -> None:
        """With no loop ambiguous, a text can still be read in many ways (``a?a?a?…aaa``):
        count the paths per text, over every text, up to MAX_AMBIGUITY."""
        start: Counts = ((_INIT, 1),)
        seen = {start}
        todo = [start]
        while todo:
            counts = todo.pop()
            for members in self.groups:
                self.spend(len(counts))
                step: dict[int, int] = {}
                for source, ways in counts:
                    row = self.follow[source]
                    for target in members:
                        more = row.get(target)
                        if more:
                            step[target] = min(_CAP, step.get(target, 0) + ways * more)
                if not step:
                    continue
                if sum(step.values()) > MAX_AMBIGUITY:
                    raise _Refused("ambiguous", tuple(dict.fromkeys(self.params[p] for p in step)))
                key = tuple(sorted(step.items()))
                if key not in seen:
                    seen.add(key)
                    todo.append(key)


def _size(items: Any) -> int:
    """Positions a subpattern makes (before unrolling inner repeats)."""
    total = 0
    for op, arg in items:
        name = str(op)
        if name in ("LITERAL", "NOT_LITERAL", "ANY", "IN"):
            total += 1
        elif name == "BRANCH":
            total += sum(_size(branch) for branch in arg[1])
        elif name == "SUBPATTERN":
            total += _size(arg[3])
        elif name == "ATOMIC_GROUP":
            total += _size(arg)
        elif name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            total += _size(arg[2]) * max(1, min(int(arg[0]), _MAX_UNROLLED) + 1)
    return total


def _strongly_connected(roots: list[Any], successors: Callable[[Any], list[Any]]) -> list[list[Any]]:
    """Tarjan's algorithm without recursion, over the nodes reachable from ``roots``."""
    index: dict[Any, int] = {}
    low: dict[Any, int] = {}
    on_stack: set[Any] = set()
    stack: list[Any] = []
    out: list[list[Any]] = []
    for root in roots:
        if root in index:
            continue
        work = [(root, iter(successors(root)))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(successors(child))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                out.append(component)
    return out


# --- messages ---------------------------------------------------------------------------

# A parameter of an aiohttp path template, as aiohttp finds them ({id}, {id:\d{2}}).
_TEMPLATE_PARAM = re.compile(r"\{(?P<name>[_a-zA-Z][_a-zA-Z0-9]*)(?::[^{}]*(?:\{[^{}]*\}[^{}]*)*)?\}")

_WHY = "a crafted request path would take {speed} time to match, blocking the gateway meanwhile"


def route_path_problem(path: str, pattern: str) -> str | None:
    """Why the route ``path`` (compiled by aiohttp to ``pattern``) is refused, or None."""
    verdict = check(pattern)
    if verdict is None:
        return None
    written = {m.group("name"): m.group(0) for m in _TEMPLATE_PARAM.finditer(path)}
    params = [p for p in dict.fromkeys(verdict.params) if p]
    named = [written.get(p, "{" + p + "}") for p in params] or [repr(path)]
    what = named[0]
    if verdict.kind == "exponential":
        return (f"{what} can match the same text in more than one way, over and over (a repetition inside a "
                f"repetition, or overlapping alternatives, as in (a+)+ (a|a)* (\\w+\\s?)+): "
                f"{_WHY.format(speed='exponential')}; write it so that each character can be matched one way only")
    if verdict.kind == "polynomial":
        if len(named) > 1:
            where = f"{named[0]} and {named[1]} can match the same text one after the other"
        else:
            where = f"{what} has two repetitions that can match the same text one after the other (as in \\d+\\d+)"
        return (f"{where}: {_WHY.format(speed='quadratic')}; make the first one stop where the next part begins, "
                "e.g. {name:[^/.]+}.{ext} rather than {name}.{ext}")
    if verdict.kind == "ambiguous":
        return (f"{what} can match the same text in more than {MAX_AMBIGUITY} ways (as in a?a?a?aaa): "
                f"{_WHY.format(speed='a long')}; simplify it")
    if verdict.kind == "backreference":
        return (f"{what} uses a backreference or a conditional group: route paths refuse them "
                f"({_WHY.format(speed='exponential')})")
    if verdict.kind == "lookaround":
        return f"{what} uses a lookahead or lookbehind assertion: route paths refuse them (no linear-time guarantee)"
    return f"{what} is too complex to prove that it matches in linear time; simplify it"
