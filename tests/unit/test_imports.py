"""The package's import structure: no cycles between modules, and the orchestration engine
usable without the proxy's resilience machinery (no breaker, Redis client or health checks)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("gateway", "plugins")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level_imports(path: Path, known: set[str]) -> set[str]:
    """Modules of this repo imported when ``path`` is imported: module level only, outside
    ``if TYPE_CHECKING:`` (imports inside functions run later and cannot form a load cycle)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for inner in ast.walk(node) if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                ast.ClassDef)) else ():
            if isinstance(inner, ast.ImportFrom) and inner.module and inner.level == 0:
                names = [f"{inner.module}.{alias.name}" for alias in inner.names] + [inner.module]
                found.update(name for name in names if name in known)
            elif isinstance(inner, ast.Import):
                found.update(alias.name for alias in inner.names if alias.name in known)
    return found


def import_graph() -> dict[str, set[str]]:
    files = [p for package in PACKAGES for p in (ROOT / package).rglob("*.py")]
    known = {_module_name(p) for p in files}
    graph = {}
    for path in files:
        name = _module_name(path)
        # importing a package imports its parents' __init__ too; a package's own
        # __init__ importing its submodules is not a cycle with them
        graph[name] = {m for m in _top_level_imports(path, known) if not name.startswith(m + ".")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*stack[stack.index(target):], target]
            if target not in state and (cycle := visit(target)) is not None:
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_no_module_imports_itself_in_a_circle() -> None:
    assert find_cycle(import_graph()) is None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_orchestration_imports_no_breaker_redis_or_health_checks() -> None:
    code = ("import sys, gateway.orchestration; "
            "print(sorted(m for m in ('pybreaker', 'redis', 'gateway.upstream.breaker', 'gateway.upstream.health', "
            "'gateway.upstream.stack') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"



def test_every_module_is_under_500_lines() -> None:
    long = {str(p.relative_to(ROOT)): n for package in (*PACKAGES, "bench") for p in (ROOT / package).rglob("*.py")
            if (n := len(p.read_text().splitlines())) >= 500}
    assert long == {}
