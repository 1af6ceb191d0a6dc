"""Hostile learner code, in real kernels: every check cell ends, explains, and the kernel lives on.

For each solution notebook, one kernel runs the whole notebook, then its check cells again in
reverse order (same verdicts), then, for every exercise, cells that redefine its routes with a
hostile body (a busy loop, an hour's `time.sleep`, an await that never ends) or give its app a
lifespan that hangs or raises, each followed by the exercise's check cell with a 1 s limit.
Each check must fail with `CheckFailed` saying what happened; the right answer, run again
afterwards, passes again; and a last cell still runs.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from checks.build import BEGIN, END

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))
LIMIT_S = 1.0
HARD_GRACE_S = 0.3  # the default (1 s) only adds waiting here

HOSTILE_BODIES = {
    "busy loop": ("while True:\n    pass", "stopped after 1 s: the event loop was blocked"),
    "time.sleep(3600)": ("import time\ntime.sleep(3600)", "stopped after 1 s: the event loop was blocked"),
    "await that never ends": ("import asyncio\nawait asyncio.Event().wait()", "still waiting after 1 s"),
}
HOSTILE_LIFESPANS = {
    "lifespan that hangs": (
        "    import asyncio\n    await asyncio.Event().wait()\n    yield", "still waiting after 1 s"),
    "lifespan that raises": (
        "    raise RuntimeError('no database')\n    yield", "the app could not start: its lifespan raised RuntimeError"),
}


def regions_of(source: str) -> tuple[str, str, str]:
    """(before, region, after) of a cell with one top-level solution region."""
    match = re.search(rf"^{re.escape(BEGIN)}\n(.*?)^{re.escape(END)}\n?", source, flags=re.S | re.M)
    assert match, "this test handles exercises whose region starts at the left margin"
    return source[: match.start()], match.group(1), source[match.end():]


def with_hostile_routes(region: str, body: str) -> str:
    """The region with every decorated function turned into an `async def` running `body`."""
    tree = ast.parse(region)
    routes = [node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.decorator_list]
    assert routes, "the region defines no route to make hostile"
    for index, node in enumerate(tree.body):
        if node in routes:
            fields = {field: getattr(node, field, None) for field in node._fields}
            tree.body[index] = ast.AsyncFunctionDef(**{**fields, "body": ast.parse(body).body, "returns": None})
    return ast.unparse(ast.fix_missing_locations(tree)) + "\n"


def exercises(notebook) -> list[tuple[str, str, str, str]]:
    """(exercise source, check source, check name, app name) for each exercise with a check cell."""
    found = []
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type == "code" and BEGIN in cell.source:
            check_cell = next(c for c in notebook.cells[index + 1:] if "check" in c.metadata.get("tags", []))
            call = next(node for node in ast.walk(ast.parse(check_cell.source, mode="exec"))
                        if isinstance(node, ast.Await))
            found.append((cell.source, check_cell.source, call.value.func.id, call.value.args[0].id))
    return found


def hostile_cells(notebook) -> list[tuple[str, str, str]]:
    """(what, source, expected message) for the cells appended after the notebook."""
    found = exercises(notebook)
    # Checks run again, in reverse order and twice, give the same (passing) verdicts.
    cells = [(f"{name}: run again, out of order", source, "") for _, source, name, _ in reversed(found) for _ in (1, 2)]
    for exercise, check_source, check_name, app_name in found:
        before, region, after = regions_of(exercise)
        cells.append(("shorten the limits", f"saved_limit = {check_name}.limit_s\n{check_name}.limit_s = {LIMIT_S}\n"
                      f"import checks.watchdog\nchecks.watchdog.HARD_GRACE_S = {HARD_GRACE_S}", ""))
        for what, (body, message) in HOSTILE_BODIES.items():
            cells.append((f"{check_name}: {what} (exercise)", before + with_hostile_routes(region, body) + after, ""))
            cells.append((f"{check_name}: {what}", check_source, message))
        for what, (body, message) in HOSTILE_LIFESPANS.items():
            lifespan = (f"from contextlib import asynccontextmanager\n@asynccontextmanager\nasync def hostile(app):\n"
                        f"{body}\n{app_name}.router.lifespan_context = hostile")
            cells.append((f"{check_name}: {what} (exercise)", exercise + "\n" + lifespan, ""))
            cells.append((f"{check_name}: {what}", check_source, message))
        # After all that, the right answer run again passes again.
        cells.append(("restore the limit", f"{check_name}.limit_s = saved_limit", ""))
        cells.append((f"{check_name}: the right answer again (exercise)", exercise, ""))
        cells.append((f"{check_name}: the right answer again", check_source, ""))
    cells.append(("still alive", "print('still alive', 6 * 7)", ""))
    return cells


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.stem)
def test_hostile_code_is_stopped_explained_and_the_kernel_lives_on(path):
    notebook = nbformat.read(path, as_version=4)
    appended = hostile_cells(notebook)
    first = len(notebook.cells)
    notebook.cells += [nbformat.v4.new_code_cell(source) for _, source, _ in appended]
    NotebookClient(notebook, timeout=30, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(path.parent)}}).execute()

    problems = []
    for (what, _, message), cell in zip(appended, notebook.cells[first:]):
        errors = [o for o in cell.outputs if o.output_type == "error"]
        if message:
            if len(errors) != 1 or errors[0].ename != "CheckFailed" or message not in errors[0].evalue:
                seen = [f"{e.ename}: {e.evalue[:300]}" for e in errors] or "no error"
                problems.append(f"{what}: expected CheckFailed with {message!r}, got {seen}")
        elif errors:
            problems.append(f"{what}: the cell raised {errors[0].ename}: {errors[0].evalue[:300]}")
    assert notebook.cells[-1].outputs and notebook.cells[-1].outputs[0].get("text") == "still alive 42\n"
    assert not problems, "\n".join(problems)
