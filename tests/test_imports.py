"""No import cycle in `course/` or `checks/`, and every module imports on its own.

The graph counts every import in a module, at the top or inside a function: a lazy import that
closes a loop (build → cli → build) still ties the two modules together, so it counts too. Only an
`if __name__ == "__main__":` block is left out: it runs when the file is a script, as `__main__`,
never while the package imports it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("course", "checks")


def modules(root: Path, packages=PACKAGES) -> dict[str, Path]:
    """Dotted name → file, for every module of the packages under root."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _main_guard(node: ast.stmt) -> bool:
    return isinstance(node, ast.If) and ast.unparse(node.test).replace("'", '"') == '__name__ == "__main__"'


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The known modules a module imports (`from p import x` is p.x when x is a module, else p)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    tree.body = [node for node in tree.body if not _main_guard(node)]
    edges = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            edges |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            base = base[: len(base) - node.level + 1] if node.level else []
            source = ".".join([*base, *([node.module] if node.module else [])])
            for alias in node.names:
                edges.add(f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source)
    return {e for e in edges if e in known and e != name}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def graph_of(root: Path, packages=PACKAGES) -> dict[str, set[str]]:
    known = modules(root, packages)
    return {name: imports_of(name, path, known) for name, path in known.items()}


def test_the_walker_finds_a_cycle_closed_by_a_lazy_import(tmp_path):
    pkg = tmp_path / "demo"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "paths.py").write_text("ROOT = 1\n")
    (pkg / "build.py").write_text("from .paths import ROOT\n\ndef main():\n    from .cli import main\n")
    (pkg / "cli.py").write_text("from . import build\n")
    (pkg / "progress.py").write_text("from demo.build import ROOT\n")
    (pkg / "script.py").write_text("import demo.paths\n\nif __name__ == '__main__':\n    from demo import progress\n")
    graph = graph_of(tmp_path, ("demo",))
    assert graph["demo.progress"] == {"demo.build"} and graph["demo.build"] == {"demo.paths", "demo.cli"}
    assert graph["demo.script"] == {"demo.paths"}  # a script's own entry point is not an import of the package
    assert cycles(graph) == [["demo.build", "demo.cli"]]


def test_no_import_cycle_in_course_or_checks():
    graph = graph_of(ROOT)
    assert "course.cli" in graph and "checks.harness" in graph
    assert cycles(graph) == []


def test_every_module_imports_first_in_a_fresh_interpreter():
    """Each module of course/ and checks/ imported first, with no other module of either package
    loaded before it (one interpreter, both packages dropped from sys.modules between modules:
    third-party imports stay cached, so this takes about a second)."""
    names = sorted(modules(ROOT))
    code = ("import importlib, sys\n"
            f"for name in {names!r}:\n"
            f"    for loaded in [m for m in sys.modules if m.split('.')[0] in {PACKAGES!r}]:\n"
            "        del sys.modules[loaded]\n"
            "    importlib.import_module(name)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_no_module_of_the_course_grows_past_800_lines():
    """Issue 18: a module holds one concern; a lesson's checks become a package (world, judge_*)."""
    long = {str(path.relative_to(ROOT)): n for package in PACKAGES for path in (ROOT / package).rglob("*.py")
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > 800}
    assert not long, f"split these by concern: {long}"
