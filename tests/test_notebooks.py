"""Learner copies, as generated, fail each check cell with CheckFailed and nothing else.

nbval cannot test this direction (its raises-exception mark also passes cells that do not
raise, nbval #108), so the notebooks run here through nbclient in real kernels. The
solution notebooks are run by nbval in the same test command.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
LEARNER_NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT_S = 60  # a check's own limit is far below this: hitting it is a bug in a check


def execute(notebook) -> None:
    client = NotebookClient(
        notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3", allow_errors=True,
        resources={"metadata": {"path": str(ROOT / "notebooks")}},
    )
    client.execute()


def tags(cell) -> list[str]:
    return cell.get("metadata", {}).get("tags", [])


def errors(cell) -> list:
    return [output for output in cell.get("outputs", []) if output["output_type"] == "error"]


@pytest.mark.parametrize("path", LEARNER_NOTEBOOKS, ids=lambda p: p.stem)
def test_learner_copy_fails_every_check_cell_with_check_failed_only(path):
    notebook = nbformat.read(path, as_version=4)
    execute(notebook)
    checked = 0
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code":
            continue
        found = [f"{e['ename']}: {e['evalue']}" for e in errors(cell)]
        if "check" in tags(cell):
            checked += 1
            assert len(found) == 1 and found[0].startswith("CheckFailed: "), f"check cell {index}: {found}"
            assert "Traceback" not in "".join(errors(cell)[0]["traceback"])
        elif "raises-exception" not in tags(cell):
            assert not found, f"cell {index} of the learner copy raised: {found}"
    assert checked, f"{path.name} has no check cell"


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
