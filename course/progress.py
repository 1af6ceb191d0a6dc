"""Which exercises pass: recorded by every check cell as it runs, read by `course progress`.

Each check cell attaches its result as `course-check` data (contract 5) and, when it runs in
the learner's notebooks/ folder, also records it here, so progress survives kernel restarts.
The file is `.course/progress.json` in the course folder (or `$COURSE_PROGRESS_FILE`).
Recording never fails a check: a read-only folder (some Binder set-ups) just records nothing.

The list of exercises comes from the solution notebooks' check cells, so it is always the
course's own list, whatever a learner did to their copy.
"""

from __future__ import annotations

import html
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from .paths import NOTEBOOKS, ROOT, SOLUTIONS

CHECK_CALL = re.compile(r"await\s+(check_\w+)\s*\(")
CHECK_IMPORT = re.compile(r"from\s+checks\.(lesson\d+)\s+import")
TICK, CROSS, TODO = "✓", "✗", "·"


def progress_file() -> Path:
    return Path(os.environ.get("COURSE_PROGRESS_FILE") or ROOT / ".course" / "progress.json")


def should_record() -> bool:
    """Record only the learner's own runs: kernels working in notebooks/, or where a file is named."""
    if os.environ.get("COURSE_PROGRESS_FILE"):
        return True
    try:
        return Path.cwd().resolve() == NOTEBOOKS.resolve()
    except OSError:
        return False


def load() -> dict:
    try:
        data = json.loads(progress_file().read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def record(check_id: str, title: str, passed: bool, elapsed_s: float) -> bool:
    """Store one result; True when it was written. Never raises."""
    try:
        path = progress_file()
        data = load()
        data[check_id] = {"title": title, "passed": bool(passed), "elapsed_s": round(float(elapsed_s), 3),
                          "when": time.strftime("%Y-%m-%dT%H:%M:%S")}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
        tmp.replace(path)
        return True
    except Exception:  # a progress file must never break a check
        return False


@dataclass
class Lesson:
    number: str  # "01"
    notebook: str  # "01_event_loop.ipynb"
    title: str  # "The event loop: one thread, and how not to block it"
    checks: list[str]  # ["lesson01.check_forecast", ...], in the notebook's order


def lessons(solutions: Path = SOLUTIONS) -> list[Lesson]:
    found = []
    for path in sorted(solutions.glob("*.ipynb")):
        try:
            cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        except (OSError, ValueError, KeyError):
            continue
        text = lambda cell: "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]  # noqa: E731
        heading = next((text(c).splitlines()[0] for c in cells if c["cell_type"] == "markdown" and text(c).strip()), "")
        title = re.sub(r"^#+\s*(\d+\s*·\s*)?", "", heading).strip()
        checks: list[str] = []
        module = ""
        for cell in cells:
            if cell["cell_type"] != "code":
                continue
            module = (CHECK_IMPORT.findall(text(cell)) or [module])[-1]
            if "check" in cell.get("metadata", {}).get("tags", []):
                checks += [f"{module}.{name}" for name in CHECK_CALL.findall(text(cell)) if module]
        found.append(Lesson(path.name[:2], path.name, title, checks))
    return found


def _mark(result: dict | None) -> str:
    return TODO if result is None else (TICK if result.get("passed") else CROSS)


def _label(check_id: str, result: dict | None) -> str:
    if result and result.get("title"):
        return re.sub(r"^Lesson \d+\s*·\s*", "", result["title"])
    return check_id.split(".", 1)[-1].removeprefix("check_").replace("_", " ")


def table_text(only: str | None = None) -> str:
    """`course progress`: one line per lesson with a mark per exercise, then the totals."""
    data = load()
    lines, done, total = [], 0, 0
    for lesson in lessons():
        if only and lesson.number != only:
            continue
        marks = "".join(_mark(data.get(c)) for c in lesson.checks)
        passed = sum(bool(data.get(c, {}).get("passed")) for c in lesson.checks)
        done, total = done + passed, total + len(lesson.checks)
        lines.append(f"{lesson.number}  {marks:<8} {passed}/{len(lesson.checks)}  {lesson.title}")
        if only:
            lines += [f"      {_mark(data.get(c))} {_label(c, data.get(c))}" for c in lesson.checks]
    lines.append(f"{done} of {total} exercises pass   ({TICK} passed, {CROSS} failed last time, {TODO} not run yet)")
    return "\n".join(lines)


class ProgressView:
    """Displays as a table with links in JupyterLab, as text elsewhere (`show()` makes one)."""

    def __init__(self, only: str | None = None, link_prefix: str = ""):
        self.only, self.link_prefix = only, link_prefix

    def __repr__(self) -> str:
        return table_text(self.only)

    def _repr_html_(self) -> str:
        data = load()
        rows = []
        for lesson in lessons():
            if self.only and lesson.number != self.only:
                continue
            marks = " ".join(
                f'<span title="{html.escape(_label(c, data.get(c)))}" style="color:'
                f'{"#1a7f37" if _mark(data.get(c)) == TICK else "#cf222e" if _mark(data.get(c)) == CROSS else "#8c959f"}">'
                f"{_mark(data.get(c))}</span>"
                for c in lesson.checks
            )
            passed = sum(bool(data.get(c, {}).get("passed")) for c in lesson.checks)
            link = f'<a href="{self.link_prefix}{html.escape(lesson.notebook)}">{lesson.number} · {html.escape(lesson.title)}</a>'
            rows.append(f"<tr><td style='text-align:left'>{link}</td><td style='text-align:left'>{marks}</td>"
                        f"<td>{passed}/{len(lesson.checks)}</td></tr>")
            if self.only:
                rows += [f"<tr><td style='text-align:left;padding-left:2em' colspan=3>{_mark(data.get(c))} "
                         f"{html.escape(_label(c, data.get(c)))}</td></tr>" for c in lesson.checks]
        return ('<table class="course-progress"><tr><th style="text-align:left">lesson</th>'
                '<th style="text-align:left">exercises</th><th>passed</th></tr>' + "".join(rows) + "</table>")


def show(lesson: str | None = None) -> ProgressView:
    """In a notebook: `show()` is the course's contents with ticks; `show("01")` one lesson's summary."""
    return ProgressView(only=str(lesson).zfill(2) if lesson is not None else None)
