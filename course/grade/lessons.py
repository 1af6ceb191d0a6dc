"""The lessons as the solutions define them: check cells by id, the modules they import, and
the instructor's extra checks that join a course check of the same name."""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

CHECK_CALL = re.compile(r"await\s+(check_\w+)\s*\(")
CHECK_IMPORT = re.compile(r"from\s+checks\.(lesson\d+)\s+import")


def _source(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else str(source)


def _tags(cell: dict) -> list:
    tags = (cell.get("metadata") or {}).get("tags") or []
    return tags if isinstance(tags, list) else []


def _imported_modules(source: str) -> list[str]:
    """Absolute module names a cell imports (for pre-importing them in a warm kernel)."""
    try:
        tree = compile(source, "<cell>", "exec", flags=ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    except SyntaxError:
        return []
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append(node.module)
    return found


@dataclass
class CheckCell:
    id: str
    module: str  # "lesson01"
    names: list[str]  # ["check_forecast"]
    source: str  # the solution's source
    anchor: list[str]  # ids of the solution's cells before it, nearest first


@dataclass
class Lesson:
    number: str  # "01"
    stem: str  # "01_event_loop"
    title: str
    check_cells: dict[str, CheckCell]  # by cell id, in the notebook's order
    imports: list[str]  # modules its cells import
    extra: str | None = None  # the instructor's extra checks, compiled (base64 of marshal: no file, no source)
    extra_names: set[str] = field(default_factory=set)

    @property
    def exercises(self) -> list[str]:
        return [f"{c.module}.{name}" for c in self.check_cells.values() for name in c.names]


def _extra_check_names(path: Path) -> set[str]:
    """Names of the `@check`-decorated functions in an instructor's extra checks file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.AsyncFunctionDef, ast.FunctionDef)):
            for deco in node.decorator_list:
                target = deco.func if isinstance(deco, ast.Call) else deco
                if getattr(target, "id", getattr(target, "attr", "")) == "check":
                    names.add(node.name)
    return names


def _compiled(path: Path) -> str:
    """An extra checks file as the kernel gets it: compiled code (the same interpreter runs it),
    since the sandbox hides the extra-checks folder from learner code."""
    import base64
    import marshal

    code = compile(path.read_text(encoding="utf-8"), f"<instructor checks lesson {path.stem}>", "exec")
    return base64.b64encode(marshal.dumps(code)).decode("ascii")


def load_lessons(solutions: Path, extra_dir: Path | None = None) -> dict[str, Lesson]:
    lessons = {}
    for path in sorted(solutions.glob("*.ipynb")):
        notebook = json.loads(path.read_text(encoding="utf-8"))
        cells = notebook.get("cells", [])
        heading = next((_source(c).strip().splitlines()[0] for c in cells
                        if c.get("cell_type") == "markdown" and _source(c).strip()), path.stem)
        title = re.sub(r"^#+\s*(\d+\s*·\s*)?", "", heading).strip()
        module, check_cells, imports, seen = "", {}, [], []
        for cell in cells:
            if cell.get("cell_type") == "code":
                text = _source(cell)
                module = (CHECK_IMPORT.findall(text) or [module])[-1]
                imports += [m for m in _imported_modules(text) if m not in imports]
                if "check" in _tags(cell) and module and CHECK_CALL.search(text):
                    check_cells[cell["id"]] = CheckCell(cell["id"], module, CHECK_CALL.findall(text), text,
                                                        list(reversed(seen)))
            if cell.get("id"):
                seen.append(cell["id"])
        number = path.name[:2]
        lesson = Lesson(number, path.stem, title, check_cells, imports)
        if extra_dir is not None:
            extra = extra_dir / f"lesson{number}.py"
            if extra.exists():
                lesson.extra, lesson.extra_names = _compiled(extra), _extra_check_names(extra)
        lessons[number] = lesson
    return lessons
