"""Reading the docs the way GitHub renders them: headings and their anchors, tables, links and
the `console` examples (markdown-it-py with GFM tables, GitHub's anchor rules)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from markdown_it import MarkdownIt
from markdown_it.token import Token


@dataclass(frozen=True)
class Heading:
    level: int
    text: str
    anchor: str
    line: int  # 1-based


@dataclass(frozen=True)
class ConsoleExample:
    command: str
    expected: tuple[str, ...]
    exit_code: int
    line: int  # 1-based, of the `$ ` line


def _parser() -> MarkdownIt:
    return MarkdownIt("commonmark").enable("table")


@cache
def tokens_of(path: Path) -> tuple[Token, ...]:
    return tuple(_parser().parse(path.read_text(encoding="utf-8")))


def github_anchor(text: str) -> str:
    """GitHub's slug of a heading's text: lower case, punctuation dropped (``-`` and ``_``
    kept), each space a ``-``. Duplicates get ``-1``, ``-2``, ... (see :func:`headings`)."""
    kept = "".join(c for c in text.lower() if c.isalnum() or c in "-_ ")
    return kept.replace(" ", "-")


def _inline_text(token: Token) -> str:
    parts: list[str] = []
    for child in token.children or []:
        if child.type in ("text", "code_inline"):
            parts.append(child.content)
        elif child.type in ("softbreak", "hardbreak"):
            parts.append(" ")
    return "".join(parts)


def headings(path: Path) -> list[Heading]:
    """Every heading as rendered, with the anchor GitHub gives it."""
    found: list[Heading] = []
    seen: dict[str, int] = {}
    toks = tokens_of(path)
    for i, token in enumerate(toks):
        if token.type != "heading_open":
            continue
        text = _inline_text(toks[i + 1])
        slug = github_anchor(text)
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchor = slug if count == 0 else f"{slug}-{count}"
        found.append(Heading(int(token.tag[1]), text, anchor, (token.map or [0])[0] + 1))
    return found


def anchors(path: Path) -> set[str]:
    return {h.anchor for h in headings(path)}


def links(path: Path) -> list[tuple[str, int]]:
    """``(href, line)`` of every Markdown link."""
    found: list[tuple[str, int]] = []
    for token in tokens_of(path):
        if token.type != "inline":
            continue
        for child in token.children or []:
            if child.type == "link_open":
                found.append((str(child.attrs["href"]), (token.map or [0])[0] + 1))
    return found


def _cells(row: str) -> list[str]:
    """A table row split as GFM does: on every ``|`` not escaped as ``\\|`` (code spans too)."""
    row = row.strip()
    row = row.removeprefix("|")
    if row.endswith("|") and not row.endswith("\\|"):
        row = row[:-1]
    return re.split(r"(?<!\\)\|", row)


def table_problems(path: Path) -> list[str]:
    """Table rows that would not render as the author meant: a ``|`` line outside any table
    (it shows as a paragraph of pipes), or a row with more or fewer cells than its header."""
    lines = path.read_text(encoding="utf-8").splitlines()
    toks = tokens_of(path)
    in_table: set[int] = set()
    in_code: set[int] = set()
    problems: list[str] = []
    for i, token in enumerate(toks):
        if token.type in ("fence", "code_block") and token.map:
            in_code.update(range(*token.map))
        if token.type != "table_open" or not token.map:
            continue
        start, end = token.map
        in_table.update(range(start, end))
        header = len(_cells(lines[start]))
        for j in range(i, len(toks)):
            if toks[j].type == "table_close":
                break
            row = toks[j]
            if row.type == "tr_open" and row.map:
                n = len(_cells(lines[row.map[0]]))
                if n != header:
                    problems.append(f"{path.name}:{row.map[0] + 1}: {n} cells where the header has {header} "
                                    "(an unescaped | inside a cell?)")
    for number, line in enumerate(lines):
        if line.lstrip().startswith("|") and number not in in_table and number not in in_code:
            problems.append(f"{path.name}:{number + 1}: a table row outside any table renders as text: {line[:60]}")
    return problems


_EXIT = re.compile(r"\s+#\s*exits?\s+(\d+)\s*$")


def console_examples(path: Path) -> list[ConsoleExample]:
    """The ``$ command`` lines of every ```console block, each with the output shown under it
    and the exit status a trailing ``# exits N`` announces (0 when none does)."""
    found: list[ConsoleExample] = []
    for token in tokens_of(path):
        if token.type != "fence" or token.info.strip() != "console" or not token.map:
            continue
        first_line = token.map[0] + 2  # the line after the opening fence, 1-based
        current: tuple[str, int, int] | None = None
        output: list[str] = []
        for offset, line in enumerate(token.content.splitlines()):
            if line.startswith("$ "):
                if current is not None:
                    found.append(ConsoleExample(current[0], tuple(output), current[1], current[2]))
                command = line[2:]
                exit_code = 0
                match = _EXIT.search(command)
                if match:
                    exit_code = int(match.group(1))
                    command = command[: match.start()]
                current, output = (command.strip(), exit_code, first_line + offset), []
            elif current is not None:
                output.append(line)
        if current is not None:
            found.append(ConsoleExample(current[0], tuple(output), current[1], current[2]))
    return found
