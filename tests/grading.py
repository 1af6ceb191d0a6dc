"""What the tests of `course grade` share (tests/test_grade_*.py): the lessons, a learner's copy,
answers to lesson 00, an instructor's extra check, and reading a gradebook."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from course.build import ROOT, dumps, learner_notebook
from course.grade.lessons import load_lessons

LESSONS = load_lessons(ROOT / "solutions")
HELLO = 'app = FastAPI()\n\n@app.get("/hello")\n'
RIGHT = HELLO + 'async def hello(name: str = "world"):\n    return {"message": f"Hello, {name}!"}\n'
# Passes the course's check (one-word names) but not the instructor's extra probe (a name with a space).
FIRST_WORD = HELLO + 'async def hello(name: str = "world"):\n    return {"message": f"Hello, {name.split()[0]}!"}\n'
WRONG = HELLO + 'async def hello(name: str = "world"):\n    return {"message": "Hello, world!"}\n'
EXTRA_CHECKS = '''
from checks import check, serve


@check("Lesson 00 · a name with a space and an accent", limit_s=5)
async def check_hello(report, app):
    async with serve(app) as client:
        response = await client.get("/hello", params={"name": "Zoë Ann"})
    report.add("GET /hello?name=Zoë Ann", response.json() == {"message": "Hello, Zoë Ann!"},
               observed=response.text, hint="Use the whole name.")
'''


def learner_copy(stem: str = "00_welcome") -> dict:
    solution = json.loads((ROOT / "solutions" / f"{stem}.ipynb").read_text(encoding="utf-8"))
    return learner_notebook(solution, f"{stem}.ipynb")


def with_cells(notebook: dict, changes: dict[str, str | None]) -> dict:
    """Set the source of cells by id (None deletes the cell)."""
    cells = []
    for cell in notebook["cells"]:
        if cell.get("id") in changes:
            if changes[cell["id"]] is None:
                continue
            cell = dict(cell, source=changes[cell["id"]])
        cells.append(cell)
    return dict(notebook, cells=cells)


def write(path: Path, notebook: dict | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(notebook if isinstance(notebook, str) else dumps(notebook), encoding="utf-8")


def rows(path: Path) -> dict[str, dict]:
    with path.open(newline="", encoding="utf-8") as f:
        return {row["file"]: row for row in csv.DictReader(f)}


def marked(marker: str) -> list[int]:
    """Processes whose command line holds `marker` (sandboxed kernels' pids are not the grader's)."""
    import os

    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        found.append(int(entry.name))
            except OSError:
                pass
    return found
