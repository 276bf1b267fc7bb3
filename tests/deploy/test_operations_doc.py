"""docs/operations.md says what the commands really print, and renders as written: its
`console` examples are run here and compared line by line, its tables and links are checked
the way GitHub renders them."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.deploy.markdown_doc import (
    ConsoleExample,
    anchors,
    console_examples,
    links,
    table_problems,
    tokens_of,
)
from tests.deploy.tools import DEPLOY, OPERATIONS_MD, ROOT, find_tool

# Programs whose examples can run on any machine with the dev install; the doc's other commands
# (curl against a running gateway, kubectl against a cluster, docker) are not examples here.
RUNNABLE = {
    "gateway": "pip install -e . installs the console script",
    "promtool": "make promtool installs Debian's prometheus package",
}
# Variables the examples must not inherit from whoever runs the tests.
CONFIG_VARIABLES = ("UPSTREAM_TOKEN", "REDIS_URL", "USERS_URL", "ORDERS_URL", "RECOMMENDATIONS_URL", "ADMIN_TOKEN")
SUMMARY = re.compile(r"ok: \d+ routes, \d+ upstreams, \d+ plugins")


def run_example(example: ConsoleExample) -> tuple[int, list[str]]:
    """Run one example from the repository root: exit status and output lines, blank ones dropped."""
    words = shlex.split(example.command)
    env = {k: v for k, v in os.environ.items() if k not in CONFIG_VARIABLES}
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    words[0] = find_tool(words[0], RUNNABLE[words[0]])
    done = subprocess.run(words, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=60, check=False)
    return done.returncode, [line.rstrip() for line in done.stdout.splitlines() if line.strip()]


def runnable_examples() -> list[ConsoleExample]:
    found = []
    for example in console_examples(OPERATIONS_MD):
        words = shlex.split(example.command)
        program = next(w for w in words if "=" not in w)
        if program in RUNNABLE:
            found.append(example)
    return found


EXAMPLES = runnable_examples()


def test_the_doc_shows_gateway_check_passing_and_failing() -> None:
    checks = [e for e in EXAMPLES if " check " in f" {e.command} " and "gateway" in e.command]
    assert any(e.command == "gateway check routes.toml" for e in checks), checks
    assert any(e.exit_code == 0 for e in checks) and any(e.exit_code == 1 for e in checks), checks
    assert any(e.command.startswith("promtool test rules") for e in EXAMPLES), EXAMPLES


@pytest.mark.parametrize("example", EXAMPLES, ids=[f"line{e.line}:{e.command}" for e in EXAMPLES])
def test_console_example_prints_what_the_doc_shows(example: ConsoleExample) -> None:
    exit_code, output = run_example(example)
    expected = [line.rstrip() for line in example.expected if line.strip()]
    assert output == expected, f"operations.md:{example.line}: `{example.command}` printed {output}"
    assert exit_code == example.exit_code, f"operations.md:{example.line}: `{example.command}` exited {exit_code}"


def stale_summaries(doc: Path, actual: str) -> list[str]:
    """Summaries quoted outside the examples (tables, prose) that differ from ``actual``: there
    a quoted summary can only mean the repository's routes.toml."""
    lines = doc.read_text(encoding="utf-8").splitlines()
    fenced = {n for t in tokens_of(doc) if t.type == "fence" and t.map for n in range(*t.map)}
    return [f"{doc.name}:{n + 1}: {q}" for n, line in enumerate(lines) if n not in fenced
            for q in SUMMARY.findall(line) if q != actual]


@pytest.fixture(scope="module")
def routes_toml_summary() -> str:
    _, output = run_example(ConsoleExample("gateway check routes.toml", (), 0, 0))
    assert len(output) == 1 and SUMMARY.fullmatch(output[0]), output
    return output[0]


def test_a_summary_quoted_in_the_prose_is_todays(routes_toml_summary: str) -> None:
    assert stale_summaries(OPERATIONS_MD, routes_toml_summary) == []


def test_a_stale_summary_in_a_table_is_caught(routes_toml_summary: str, tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text("| command | what |\n|---|---|\n"
                   "| `gateway check CONFIG` | exit 0 with `ok: 4 routes, 3 upstreams, 3 plugins` |\n"
                   f"\n```console\n$ gateway check routes.toml\n{routes_toml_summary}\n```\n", encoding="utf-8")
    assert stale_summaries(doc, routes_toml_summary) == ["doc.md:3: ok: 4 routes, 3 upstreams, 3 plugins"]


@pytest.mark.parametrize("doc", [OPERATIONS_MD, DEPLOY / "README.md"], ids=lambda p: p.name)
def test_every_table_row_renders(doc: Path) -> None:
    assert table_problems(doc) == []


def test_a_row_cut_off_from_its_table_or_split_by_a_pipe_is_caught(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text("| signal | effect |\n|---|---|\n| `SIGHUP` | Reload. |\n\nA paragraph.\n"
                   "| `POST /reload` | Reload. |\n\n| option | what |\n|---|---|\n"
                   "| `--log-format text|json` | the format |\n| `--log-level a\\|b` | fine |\n", encoding="utf-8")
    problems = table_problems(doc)
    assert len(problems) == 2, problems
    assert problems[0].startswith("doc.md:10: 3 cells where the header has 2")
    assert problems[1].startswith("doc.md:6: a table row outside any table")


@pytest.mark.parametrize("doc", [OPERATIONS_MD, DEPLOY / "README.md"], ids=lambda p: p.name)
def test_links_reach_files_and_headings_that_exist(doc: Path) -> None:
    broken = []
    for href, line in links(doc):
        if re.match(r"[a-z]+://", href) or href.startswith("mailto:"):
            continue
        path, _, fragment = href.partition("#")
        target = (doc.parent / path).resolve() if path else doc
        if not target.exists():
            broken.append(f"{doc.name}:{line}: {href}: no such file")
        elif fragment and target.suffix == ".md" and fragment not in anchors(target):
            broken.append(f"{doc.name}:{line}: {href}: no heading with that anchor")
    assert broken == []
