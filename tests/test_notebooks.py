"""Learner copies, as generated, fail each check cell with CheckFailed and nothing else; both
copies answer every cell when JupyterLab's Run All queues them all at once.

nbval cannot test the learner direction (its raises-exception mark also passes cells that do
not raise, nbval #108), so the notebooks run here in real kernels. Instructors' CI also runs the
solutions under nbval (.github/workflows/course.yml), one cell at a time.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from run_all import run_all

ROOT = Path(__file__).resolve().parent.parent
LEARNER_NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
SOLUTION_NOTEBOOKS = sorted((ROOT / "solutions").glob("*.ipynb"))
CELL_TIMEOUT_S = 60  # a check's own limit is far below this: hitting it is a bug in a check
RUN_ALL_TIMEOUT_S = 180  # a whole notebook; the slowest takes under 10 s


def execute(notebook) -> None:
    client = NotebookClient(
        notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3", allow_errors=True,
        resources={"metadata": {"path": str(ROOT / "notebooks")}},
    )
    client.execute()


def errors(cell) -> list:
    return [output for output in cell.get("outputs", []) if output["output_type"] == "error"]


def answered_all(path: Path, runs) -> None:
    unanswered = [run.index for run in runs if run.status is None]
    assert not unanswered, f"{path.name}: cells {unanswered} never answered with every cell queued (Run All)"


# JupyterLab's Run All queues every cell at once; nbclient and nbval send one at a time. Both
# copies of every lesson are run the Run All way here (tests/run_all.py), so code that disturbs
# the kernel's queued requests fails a test.
@pytest.mark.parametrize("path", LEARNER_NOTEBOOKS, ids=lambda p: p.stem)
def test_learner_copy_fails_every_check_cell_with_check_failed_only(path):
    runs = run_all(nbformat.read(path, as_version=4).cells, path.parent, RUN_ALL_TIMEOUT_S)
    answered_all(path, runs)
    checked = 0
    for run in runs:
        found = [f"{name}: {value}" for name, value in run.errors]
        if "check" in run.tags:
            checked += 1
            assert len(found) == 1 and found[0].startswith("CheckFailed: "), f"check cell {run.index}: {found}"
            assert "Traceback" not in found[0]
            assert [data["passed"] for data in run.course_checks] == [False], f"check cell {run.index}"
        elif "raises-exception" not in run.tags:
            assert not found, f"cell {run.index} of the learner copy raised: {found}"
    assert checked, f"{path.name} has no check cell"


@pytest.mark.parametrize("path", SOLUTION_NOTEBOOKS, ids=lambda p: p.stem)
def test_solution_answers_every_cell_when_run_all_queues_them(path):
    runs = run_all(nbformat.read(path, as_version=4).cells, path.parent, RUN_ALL_TIMEOUT_S)
    answered_all(path, runs)
    for run in runs:
        if "raises-exception" not in run.tags:
            assert not run.errors, f"cell {run.index} of the solution raised: {run.errors}"
        if "check" in run.tags:
            assert [data["passed"] for data in run.course_checks] == [True], f"check cell {run.index}"


def test_a_loop_blocked_forever_is_stopped_and_the_kernel_lives_on():
    """`while True: pass` in an async route: the kernel's interrupt cannot stop it, our watchdog does."""
    cells = [
        "import asyncio\nfrom fastapi import FastAPI\nfrom checks.lesson01 import check_forecast\n"
        "check_forecast.limit_s = 1  # shortened for this test",
        "app = FastAPI()\n\n@app.get('/forecast/{city}')\nasync def forecast(city: str):\n    while True:\n        pass",
        "await check_forecast(app)",
        "print('still alive', 6 * 7)",
    ]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in cells])
    execute(notebook)
    (error,) = errors(notebook.cells[2])
    assert error["ename"] == "CheckFailed"
    assert "stopped after 1 s: the event loop was blocked" in error["evalue"]
    assert "busy `while` loop" in error["evalue"]
    assert notebook.cells[3].outputs[0]["text"] == "still alive 42\n"
    html = [o for o in notebook.cells[2].outputs if o["output_type"] == "display_data"]
    assert 'data-passed="false"' in html[0]["data"]["text/html"]
