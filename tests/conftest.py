"""Shared fixtures: async tests run on asyncio through anyio's pytest plugin (it comes with Starlette)."""

import atexit
import os
import shutil
import tempfile

import pytest

# Kernels started by the tests (nbval, nbclient) inherit these: their check results go to a
# throw-away progress file, never the learner's, and CheckFailed shows its full text.
if not os.environ.get("COURSE_PROGRESS_FILE"):
    _progress_dir = tempfile.mkdtemp(prefix="course-progress-")
    atexit.register(shutil.rmtree, _progress_dir, True)
    os.environ["COURSE_PROGRESS_FILE"] = os.path.join(_progress_dir, "progress.json")
os.environ.setdefault("COURSE_FULL_ERRORS", "1")


@pytest.fixture
def anyio_backend():
    return "asyncio"


def names(report):
    """The failed items' names of a report, for short assertions."""
    return [item.name for item in report.failures]


def failure_text(report):
    return "\n".join(f"{i.name} | {i.observed} | {i.expected} | {i.hint}" for i in report.failures)


def assert_feedback_rules(report):
    """CONTRIBUTING.md's rules for a failed check: observed and a hint per failure, a few lines each."""
    assert not report.passed and report.failures
    for item in report.failures:
        assert item.observed, f"{item.name}: says nothing about what was observed"
        assert item.hint, f"{item.name}: gives no hint"
        assert len(report._item_text(item)) <= 4, f"{item.name}: more than four lines"
        assert "Traceback" not in item.observed and "def " not in item.hint


def notebook_namespace(name: str) -> dict:
    """Run a solution notebook's cells that define things (not demos that await, not checks)
    and return their names: tests build their right and wrong apps from the lesson's own code."""
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "solutions" / f"{name}.ipynb"
    namespace: dict = {"__name__": f"lesson_{name}"}
    for cell in json.loads(path.read_text())["cells"]:
        source = "".join(cell["source"])
        if cell["cell_type"] != "code" or "check" in cell.get("metadata", {}).get("tags", []):
            continue
        if not awaits_at_top_level(source):
            exec(compile(source, f"<{name}>", "exec"), namespace)
    return namespace


def awaits_at_top_level(source: str) -> bool:
    """True for a cell that awaits outside any function: a demo or a check, not a definition."""
    import ast

    return any(
        isinstance(node, (ast.Await, ast.AsyncWith, ast.AsyncFor))
        for statement in ast.parse(source).body
        if not isinstance(statement, (ast.AsyncFunctionDef, ast.FunctionDef, ast.ClassDef))
        for node in ast.walk(statement)
    )


async def warnings_from_checks(*reports) -> list:
    """Run check coroutines and return the warnings raised by the checks package's own code."""
    import warnings
    from pathlib import Path

    import checks

    package = str(Path(checks.__file__).parent)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for report in reports:
            await report
    return [w for w in caught if w.filename.startswith(package)]
