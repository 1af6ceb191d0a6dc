"""Lesson 02: what the lesson says, run on the installed versions."""

from typing import Annotated

import pytest
from fastapi import Depends

from lesson02_helpers import lesson

pytestmark = pytest.mark.anyio


SOLUTION = __import__("pathlib").Path(__file__).resolve().parent.parent / "solutions" / "02_dependencies.ipynb"
LEARNER = SOLUTION.parent.parent / "notebooks" / "02_dependencies.ipynb"
ROUTE_DECORATORS = {"get", "post", "put", "patch", "delete"}


def cells(path):
    import json

    return json.loads(path.read_text())["cells"]


AFTER_RESPONSE = ["code before yield", "route returns", "response model serialised", "response sent (200)",
                  "background task", "code after yield"]
BEFORE_RESPONSE = ["code before yield", "route returns", "response model serialised", "code after yield",
                   "response sent (200)", "background task"]


@pytest.mark.parametrize("scope, order", [(None, AFTER_RESPONSE), ("request", AFTER_RESPONSE), ("function", BEFORE_RESPONSE)],
                         ids=["default", "request", "function"])
async def test_the_trace_shows_when_the_code_after_yield_runs(scope, order):
    """The lesson's claim: "function" exits after the response model is serialised and before the
    response is sent; the default ("request") after the response and after background tasks."""
    from checks import serve
    from checks.lesson02 import log_response_start

    events = lesson["events"]
    events.clear()
    app = lesson["traced_app"](Annotated[None, Depends(lesson["traced_dependency"], scope=scope)])
    async with serve(log_response_start(app, events)) as client:
        await client.get("/traced")
    assert events == order


async def test_the_guides_get_db_answers_201_and_finds_the_409_handler_too_late():
    """The demo's RuntimeError, as the prose explains it: the commit's IntegrityError, after the 201 went out."""
    from sqlalchemy.exc import IntegrityError

    from checks import serve

    async with serve(lesson["guide_app"], raise_app_exceptions=False) as client:
        first = await client.post("/users", json={"email": "eve@example.com", "name": "Eve"})
        second = await client.post("/users", json={"email": "eve@example.com", "name": "Eve again"})
    assert (first.status_code, second.status_code) == (201, 201)
    (error,) = client.app_errors
    assert isinstance(error.exception, RuntimeError)
    assert str(error.exception) == "Caught handled exception, but response already started."
    assert isinstance(error.exception.__cause__, IntegrityError)


def test_the_fastapi_installed_has_dependency_scopes():
    import inspect

    import fastapi

    assert tuple(int(part) for part in fastapi.__version__.split(".")[:2]) >= (0, 121)
    assert "scope" in inspect.signature(Depends).parameters


@pytest.mark.parametrize("path", [SOLUTION, LEARNER], ids=["solution", "learner copy"])
def test_exercise_1_does_not_print_its_answer_above_it(path):
    """The scope to choose is the exercise's decision: nothing before its check cell names it."""
    seen = ""
    for cell in cells(path):
        if "check" in cell["metadata"].get("tags", []):
            break
        source = "".join(cell["source"])
        if "### BEGIN SOLUTION" in source:
            source = source.split("### BEGIN SOLUTION")[0]  # the answer itself may stand in the region
        seen += source
    assert 'scope="function"' not in seen and "scope='function'" not in seen


def test_routes_and_dependencies_follow_fastapis_own_guidance():
    """Annotated for every parameter (no `= Depends(...)` defaults), and a return type on every route."""
    import ast

    for cell in cells(SOLUTION):
        if cell["cell_type"] != "code":
            continue
        tree = ast.parse("".join(cell["source"]).replace("await ", ""))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for default in node.args.defaults + node.args.kw_defaults:
                    assert not (isinstance(default, ast.Call) and getattr(default.func, "id", "") in
                                {"Depends", "Header", "Query", "Security", "Body"}), node.name
                routes = [d for d in node.decorator_list if isinstance(d, ast.Call)
                          and getattr(d.func, "attr", "") in ROUTE_DECORATORS]
                if routes:
                    assert node.returns is not None, f"route {node.name} has no return type"
