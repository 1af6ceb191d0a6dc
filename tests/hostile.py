"""Hostile learner code, in real kernels (run by test_hostile_*.py, half the lessons each, so
the two xdist workers share the work): every check cell ends, explains, and the kernel lives on.

For each solution notebook, one kernel runs the whole notebook (demos included), then its check
cells again in reverse order (same verdicts), then, for every exercise:
- the exercise with a hostile body (a busy loop, an hour's `time.sleep`, an await that never
  ends) in place of its solution: in each region inside an `async def`, in each route or
  exception handler a region defines, and as a validator added to each model a region defines;
  then every later demo cell that uses a name the exercise defines (a demo runs learner code
  too), which must end by itself or with `DemoStopped`, within the demos' shortened limit;
- its check, with every app it is given started by a lifespan that hangs or raises;
each followed by the exercise's check cell with a 1 s limit. Each check must fail with
`CheckFailed` saying what happened; the right answer, run again afterwards, passes again; and a
last cell still runs.
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from course.build import BEGIN, END, _enclosing
from conftest import awaits_at_top_level

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))
# Every hostile check waits out its limit: most of this test's time. Half a second is still 50x
# the slowest check's own work on a stub, and the verdict says which of the two limits was met.
LIMIT_S = 0.5
HARD_GRACE_S = 0.2  # the default (1 s) only adds waiting here
ROUTE_METHODS = {"get", "post", "put", "patch", "delete", "api_route", "exception_handler"}

HOSTILE_BODIES = {
    "busy loop": ("while True:\n    pass", f"stopped after {LIMIT_S:g} s: the event loop was blocked"),
    "time.sleep(3600)": ("import time\ntime.sleep(3600)", f"stopped after {LIMIT_S:g} s: the event loop was blocked"),
    "await that never ends": ("import asyncio\nawait asyncio.Event().wait()", f"still waiting after {LIMIT_S:g} s"),
}
DEMO = "<demo>"  # a demo after a hostile exercise: it ends, by itself or with DemoStopped / CheckFailed
DEMO_ERRORS = {"DemoStopped", "CheckFailed"}
HOSTILE_LIFESPANS = {
    "lifespan that hangs": ("import asyncio\nawait asyncio.Event().wait()\nyield", f"still waiting after {LIMIT_S:g} s"),
    "lifespan that raises": ("raise RuntimeError('no database')\nyield",
                             "the app could not start: its lifespan raised RuntimeError"),
}
HELPERS = '''
from contextlib import asynccontextmanager as _acm
_replaced = []

def _hostile(value, lifespan):
    """Give an app a hostile lifespan (restored by _restore()); a function that makes apps
    (a factory) makes them with it; anything else passes unchanged."""
    if hasattr(value, "router") and hasattr(value.router, "lifespan_context"):
        _replaced.append((value, value.router.lifespan_context))
        value.router.lifespan_context = lifespan
    elif callable(value) and not isinstance(value, type):
        factory = value
        return lambda *args, **kwargs: _hostile(factory(*args, **kwargs), lifespan)
    return value

def _restore():
    while _replaced:
        app, lifespan = _replaced.pop()
        app.router.lifespan_context = lifespan
'''


def _is_route(decorator) -> bool:
    return isinstance(decorator, ast.Call) and isinstance(decorator.func, ast.Attribute) and decorator.func.attr in ROUTE_METHODS


def _hostile_routes(region: str, body: str) -> str | None:
    """A top-level region with each route turned into an `async def` running `body`; None if no route."""
    tree = ast.parse(region)
    changed = False
    for index, node in enumerate(tree.body):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and any(map(_is_route, node.decorator_list)):
            fields = {field: getattr(node, field, None) for field in node._fields}
            hostile = ast.parse(body).body
            if any(isinstance(n, (ast.Yield, ast.YieldFrom)) for n in ast.walk(node)):
                hostile.append(ast.Expr(ast.Yield()))  # a streaming route stays a generator, so FastAPI runs its body
            tree.body[index] = ast.AsyncFunctionDef(**{**fields, "body": hostile, "returns": None})
            changed = True
    return ast.unparse(ast.fix_missing_locations(tree)) + "\n" if changed else None


def _hostile_validator(body: str) -> str | None:
    """For a region in a model's class body: a validator that runs `body` on every validation."""
    if "await" in body:
        return None  # validators are synchronous: they can block, not await
    return ('@__import__("pydantic").model_validator(mode="before")\n@classmethod\n'
            f'def _hostile(cls, data):\n{textwrap.indent(body, "    ")}\n')


def with_hostile_body(source: str, body: str) -> str | None:
    """The exercise cell with its regions made hostile; None when no region can be."""
    lines = source.splitlines(keepends=True)
    out, changed, i = [], False, 0
    while i < len(lines):
        if lines[i].strip() != BEGIN:
            out.append(lines[i])
            i += 1
            continue
        indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == END)
        region = "".join(lines[i + 1:end])
        header = _enclosing(lines, i, indent) if indent else ""
        hostile = None
        if header.startswith("async def "):
            hostile = textwrap.indent(body, indent) + "\n"
        elif header.startswith("class ") and (validator := _hostile_validator(body)):
            hostile = region + textwrap.indent(validator, indent)
        elif not indent or header.startswith("def "):
            # Routes or handlers the region defines (inside a plain function that installs them).
            routes = _hostile_routes(textwrap.dedent(region), body)
            hostile = textwrap.indent(routes, indent) if routes is not None else None
        out.append(hostile if hostile is not None else region)
        changed = changed or hostile is not None
        i = end + 1
    return "".join(out) if changed else None


def with_hostile_lifespan(check_source: str) -> str:
    """The check cell with every argument of its awaited call passed through `_hostile`."""
    tree = ast.parse(check_source)
    call = next(node.value for node in ast.walk(tree) if isinstance(node, ast.Await))
    call.args = [ast.Call(ast.Name("_hostile", ast.Load()), [arg, ast.Name("hostile", ast.Load())], []) for arg in call.args]
    return ast.unparse(ast.fix_missing_locations(tree))


def exercises(notebook) -> list[tuple[str, str, str]]:
    """(exercise source, check source, check name) for each exercise, with the check cell after it."""
    return [(source, check_source, name) for source, check_source, name, _ in _exercises_with_demos(notebook)]


def _defined_names(source: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
    return names


def _exercises_with_demos(notebook) -> list[tuple[str, str, str, list[str]]]:
    """As `exercises`, plus the later demo cells (not checks) that use a name the exercise defines."""
    found = []
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type == "code" and BEGIN in cell.source:
            check_cell = next(c for c in notebook.cells[index + 1:] if "check" in c.metadata.get("tags", []))
            call = next(node.value for node in ast.walk(ast.parse(check_cell.source)) if isinstance(node, ast.Await))
            defined = _defined_names(cell.source)
            demos = [
                c.source for c in notebook.cells[index + 1:]
                if c.cell_type == "code" and "check" not in c.metadata.get("tags", []) and BEGIN not in c.source
                and awaits_at_top_level(c.source)
                and defined & {n.id for n in ast.walk(ast.parse(c.source)) if isinstance(n, ast.Name)}
            ]
            found.append((cell.source, check_cell.source, call.func.id, demos))
    return found


def hostile_cells(notebook) -> list[tuple[str, str, str]]:
    """(what, source, expected message) for the cells appended after the notebook."""
    found = exercises(notebook)
    demos_after = {check_name: demos for _, _, check_name, demos in _exercises_with_demos(notebook)}
    # Checks run again, in reverse order and twice, give the same (passing) verdicts.
    cells = [(f"{name}: run again, out of order", source, "") for _, source, name in reversed(found) for _ in (1, 2)]
    cells.append(("helpers", HELPERS, ""))
    for exercise, check_source, check_name in found:
        cells.append(("shorten the limits", f"saved_limit = {check_name}.limit_s\n{check_name}.limit_s = {LIMIT_S}\n"
                      f"import checks.watchdog, checks.harness\nchecks.watchdog.HARD_GRACE_S = {HARD_GRACE_S}\n"
                      f"checks.harness.DEMO_LIMIT_S = {LIMIT_S}", ""))
        for what, (body, message) in HOSTILE_BODIES.items():
            hostile = with_hostile_body(exercise, body)
            if hostile is not None:
                cells.append((f"{check_name}: {what} (exercise)", hostile, ""))
                cells += [(f"{check_name}: {what}, then demo {i + 1} after it", demo, DEMO)
                          for i, demo in enumerate(demos_after[check_name])]
                cells.append((f"{check_name}: {what}", check_source, message))
        cells.append((f"{check_name}: the right answer (exercise)", exercise, ""))
        for what, (body, message) in HOSTILE_LIFESPANS.items():
            lifespan = f"@_acm\nasync def hostile(app):\n{textwrap.indent(body, '    ')}"
            cells.append((f"{check_name}: {what} (lifespan)", lifespan, ""))
            cells.append((f"{check_name}: {what}", with_hostile_lifespan(check_source), message))
            cells.append(("restore the lifespans", "print('apps given the lifespan:', len(_replaced))\n_restore()", ""))
        # After all that, the right answer passes again.
        cells.append(("restore the limit", f"{check_name}.limit_s = saved_limit", ""))
        cells.append((f"{check_name}: the right answer again", check_source, ""))
    cells.append(("still alive", "print('still alive', 6 * 7)", ""))
    return cells


def check_every_exercise_gets_a_hostile_body_somewhere():
    """Guards the test itself: a lesson whose regions no hostile body can reach is noticed."""
    for path in SOLUTIONS:
        notebook = nbformat.read(path, as_version=4)
        reached = [with_hostile_body(exercise, "pass") is not None for exercise, _, _ in exercises(notebook)]
        assert any(reached), f"{path.name}: no exercise can be made hostile"


def run_hostile_code(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    appended = hostile_cells(notebook)
    notebook.cells = [cell for cell in notebook.cells if cell.cell_type == "code"]  # the whole lesson, demos too
    first = len(notebook.cells)
    notebook.cells += [nbformat.v4.new_code_cell(source) for _, source, _ in appended]
    NotebookClient(notebook, timeout=30, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(path.parent)}}).execute()

    problems = []
    cells = notebook.cells[first:]
    for index, ((what, _, message), cell) in enumerate(zip(appended, cells)):
        errors = [o for o in cell.outputs if o.output_type == "error"]
        after = "".join(o.get("text", "") for o in cells[index + 1].outputs) if index + 1 < len(cells) else ""
        if "apps given the lifespan: 0" in after:
            message = ""  # this check is given no app (a plain function): a lifespan cannot be hostile to it
            # It ran the right answer under the shortened limit: a check whose own work takes longer
            # (lesson 13's forks two servers) may only be stopped by that limit, nothing else.
            errors = [e for e in errors if not (e.ename == "CheckFailed" and f"still waiting after {LIMIT_S:g} s" in e.evalue)]
        if message == DEMO:
            if any(e.ename not in DEMO_ERRORS for e in errors):
                problems.append(f"{what}: the demo raised {errors[0].ename}: {errors[0].evalue[:300]}")
        elif message:
            if len(errors) != 1 or errors[0].ename != "CheckFailed" or message not in errors[0].evalue:
                seen = [f"{e.ename}: {e.evalue[:300]}" for e in errors] or "no error"
                problems.append(f"{what}: expected CheckFailed with {message!r}, got {seen}")
        elif errors:
            problems.append(f"{what}: the cell raised {errors[0].ename}: {errors[0].evalue[:300]}")
    assert notebook.cells[-1].outputs and notebook.cells[-1].outputs[0].get("text") == "still alive 42\n"
    assert not problems, "\n".join(problems)
