"""The single-source build: regions become stubs, the rest is copied, notebooks/ never drifts."""

import json

import pytest

from course import build
from course.build import BuildError, strip_solutions


def test_top_level_region_keeps_its_task_comments_and_becomes_a_placeholder():
    source = (
        "app = FastAPI()\n\n"
        "### BEGIN SOLUTION\n"
        "# Write GET /hello.\n"
        "@app.get('/hello')\n"
        "async def hello():\n"
        "    return {}\n"
        "### END SOLUTION\n"
        "print('after')"
    )
    assert strip_solutions(source) == "app = FastAPI()\n\n# Write GET /hello.\n# YOUR CODE HERE\nprint('after')"


def test_region_inside_a_block_still_runs_and_raises_when_called():
    source = "def f(x):\n    ### BEGIN SOLUTION\n    return x * 2\n    ### END SOLUTION\n"
    stub = strip_solutions(source)
    assert stub == (
        "def f(x):\n    # YOUR CODE HERE\n"
        '    raise NotImplementedError("this exercise is not written yet")\n'
    )
    namespace = {}
    exec(compile(stub, "stub", "exec"), namespace)  # the stub is valid Python
    with pytest.raises(NotImplementedError):
        namespace["f"](1)


def test_several_regions_and_code_without_regions():
    source = "a = 1\n### BEGIN SOLUTION\nb = 2\n### END SOLUTION\nc = 3\n### BEGIN SOLUTION\nd = 4\n### END SOLUTION\n"
    assert strip_solutions(source) == "a = 1\n# YOUR CODE HERE\nc = 3\n# YOUR CODE HERE\n"
    assert strip_solutions("x = 1") == "x = 1"


@pytest.mark.parametrize(
    "source, message",
    [
        ("### BEGIN SOLUTION\nx = 1\n", "without ### END"),
        ("x = 1\n### END SOLUTION\n", "without ### BEGIN"),
        ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION\n", "inside another"),
    ],
)
def test_unbalanced_markers_are_errors(source, message):
    with pytest.raises(BuildError, match=message):
        strip_solutions(source)


def notebook(*cells):
    return {"cells": list(cells), "metadata": {"kernelspec": {"name": "python3"}}, "nbformat": 4, "nbformat_minor": 5}


def code(source, outputs=(), tags=()):
    return {"cell_type": "code", "id": "x", "source": source, "outputs": list(outputs),
            "execution_count": 3, "metadata": {"tags": list(tags), "execution": {"t": 1}}}


def test_learner_notebook_clears_outputs_and_keeps_everything_else():
    solution = notebook(
        {"cell_type": "markdown", "id": "m", "source": "# Title", "metadata": {}},
        code("### BEGIN SOLUTION\nx = 1\n### END SOLUTION", outputs=[{"output_type": "stream", "text": "hi"}], tags=["check"]),
    )
    learner = build.learner_notebook(solution)
    assert learner["cells"][0] == solution["cells"][0]
    cell = learner["cells"][1]
    assert cell["source"] == "# YOUR CODE HERE"
    assert cell["outputs"] == [] and cell["execution_count"] is None
    assert cell["metadata"] == {"tags": ["check"]}
    assert solution["cells"][1]["outputs"], "the solution itself is not changed"


def test_build_check_and_reset_in_a_temporary_course(tmp_path, capsys):
    solutions, notebooks, backups = tmp_path / "solutions", tmp_path / "notebooks", tmp_path / ".backups"
    solutions.mkdir()
    (solutions / "07_demo.ipynb").write_text(json.dumps(notebook(code("### BEGIN SOLUTION\ny = 2\n### END SOLUTION"))))
    assert build.drift(solutions, notebooks.parent / "missing") == ["07_demo.ipynb: missing from missing/"]
    assert build.build(solutions, notebooks) == ["07_demo.ipynb"]
    assert build.drift(solutions, notebooks) == []
    assert build.build(solutions, notebooks) == []  # nothing to rewrite

    (notebooks / "07_demo.ipynb").write_text("learner's work")
    (notebooks / "99_stray.ipynb").write_text("{}")
    assert build.drift(solutions, notebooks) == [
        "99_stray.ipynb: has no solution in solutions/",
        "07_demo.ipynb: differs from what the build makes of solutions/07_demo.ipynb",
    ]
    fresh = build.reset("07", solutions, notebooks, backups)
    assert "YOUR CODE HERE" in fresh.read_text()
    (backup,) = backups.iterdir()
    assert backup.read_text() == "learner's work"
    with pytest.raises(BuildError, match="no single lesson"):
        build.reset("42", solutions, notebooks, backups)


def test_notebooks_folder_is_exactly_what_the_build_makes():
    problems = build.drift()
    assert problems == [], "\n".join(problems) + "\nRun `course build` and commit notebooks/."


def test_every_solution_has_check_cells_and_solution_regions():
    for path in sorted(build.SOLUTIONS.glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        checks = [c for c in cells if "check" in c.get("metadata", {}).get("tags", [])]
        regions = [c for c in cells if c["cell_type"] == "code" and build.BEGIN in "".join(c["source"])]
        assert checks and regions, f"{path.name} needs at least one exercise and one check cell"


def test_region_in_a_class_body_becomes_pass_so_the_class_still_exists():
    source = "class Model:\n    ### BEGIN SOLUTION\n    # Fields here.\n    x: int = 1\n    ### END SOLUTION\n"
    stub = strip_solutions(source)
    assert stub == "class Model:\n    # Fields here.\n    # YOUR CODE HERE\n    pass\n"
    namespace = {}
    exec(stub, namespace)
    assert "Model" in namespace


def test_region_in_a_method_raises_not_implemented():
    source = "class A:\n    def f(self):\n        ### BEGIN SOLUTION\n        return 1\n        ### END SOLUTION\n"
    assert 'raise NotImplementedError' in strip_solutions(source)


def test_region_under_a_multi_line_signature_raises_not_implemented():
    source = "async def f(\n    a: int,\n) -> int:\n    ### BEGIN SOLUTION\n    return a\n    ### END SOLUTION\n"
    assert strip_solutions(source).endswith('    raise NotImplementedError("this exercise is not written yet")\n')
