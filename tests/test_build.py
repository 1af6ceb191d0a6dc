"""The single-source build: regions become stubs, the rest is copied, notebooks/ never drifts."""

import json
from pathlib import Path

import pytest

from course import build
from course.build import BuildError, strip_solutions

ROOT = Path(__file__).resolve().parent.parent


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


def _course(tmp_path, *cells):
    solutions, notebooks, backups = tmp_path / "solutions", tmp_path / "notebooks", tmp_path / "backups"
    solutions.mkdir()
    (solutions / "07_demo.ipynb").write_text(json.dumps(notebook(*cells)))
    return solutions, notebooks, backups


def test_build_check_and_reset_in_a_temporary_course(tmp_path):
    solutions, notebooks, backups = _course(tmp_path, code("### BEGIN SOLUTION\ny = 2\n### END SOLUTION"))
    assert build.drift(solutions, notebooks.parent / "missing") == ["07_demo.ipynb: missing from missing/ (run `course build`)"]
    assert build.build(solutions, notebooks, backups) == ["07_demo.ipynb"]
    assert build.drift(solutions, notebooks) == []
    assert build.build(solutions, notebooks, backups) == []  # nothing to rewrite
    assert not backups.exists(), "nothing of a learner's was there to keep"

    (notebooks / "07_demo.ipynb").write_text("learner's work")
    (notebooks / "99_stray.ipynb").write_text("{}")
    problems = build.drift(solutions, notebooks)
    assert problems[0] == "99_stray.ipynb: has no solution in solutions/"
    assert problems[1].startswith("07_demo.ipynb: edited after the build (a learner's work")
    fresh, backup = build.reset("07", solutions=solutions, notebooks=notebooks, backups=backups)
    assert "YOUR CODE HERE" in fresh.read_text()
    assert backup.read_text() == "learner's work" and backup.parent == backups
    with pytest.raises(BuildError, match="no single lesson"):
        build.reset("42", solutions=solutions, notebooks=notebooks, backups=backups)


def test_build_keeps_a_learners_changed_notebook_and_replaces_an_old_build_silently(tmp_path, capsys):
    solutions, notebooks, backups = _course(tmp_path, code("### BEGIN SOLUTION\ny = 2\n### END SOLUTION"))
    build.build(solutions, notebooks, backups)
    target = notebooks / "07_demo.ipynb"
    # An author changes the solution: the old build output is replaced without a copy.
    (solutions / "07_demo.ipynb").write_text(json.dumps(notebook(code("### BEGIN SOLUTION\ny = 3\n### END SOLUTION"),
                                                                 code("print(1)"))))
    assert build.drift(solutions, notebooks) == [
        "07_demo.ipynb: solutions/07_demo.ipynb changed since the build: run `course build` and commit notebooks/07_demo.ipynb"]
    assert build.build(solutions, notebooks, backups) == ["07_demo.ipynb"]
    assert not backups.exists()
    # A learner runs and edits it (as Jupyter saves it: same layout, other content): kept, and said where.
    mine = json.loads(target.read_text())
    mine["cells"][0]["source"] = "y = 'my answer'"
    mine["cells"][0]["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "hi"}]
    target.write_text(build.dumps(mine))
    build.build(solutions, notebooks, backups)
    (kept,) = backups.iterdir()
    assert "my answer" in kept.read_text() and "my answer" not in target.read_text()
    assert f"kept in {kept}" in capsys.readouterr().out
    # Running again keeps a second copy only if something changed again; copies never overwrite each other.
    target.write_text(build.dumps(mine))
    build.build(solutions, notebooks, backups)
    assert len(list(backups.iterdir())) == 2


def test_reset_one_exercise_keeps_the_rest_of_the_learners_notebook(tmp_path):
    solutions, notebooks, backups = _course(
        tmp_path,
        code("### BEGIN SOLUTION\nx = 1\n### END SOLUTION"),
        code("check_x(x)", tags=["check"]),
        code("### BEGIN SOLUTION\ny = 2\n### END SOLUTION"),
        code("check_y(y)", tags=["check"]),
    )
    cells = json.loads((solutions / "07_demo.ipynb").read_text())
    for cell, cell_id in zip(cells["cells"], ("first", "check-first", "second", "check-second")):
        cell["id"] = cell_id
    (solutions / "07_demo.ipynb").write_text(json.dumps(cells))
    build.build(solutions, notebooks, backups)
    target = notebooks / "07_demo.ipynb"
    mine = json.loads(target.read_text())
    mine["cells"][0]["source"], mine["cells"][2]["source"] = "x = 'mine'", "y = 'broken'"
    report = [{"output_type": "error", "ename": "CheckFailed", "evalue": "✗", "traceback": []}]
    mine["cells"][1]["outputs"], mine["cells"][3]["outputs"] = list(report), list(report)
    target.write_text(build.dumps(mine))

    written, kept = build.reset("07", 2, solutions, notebooks, backups)
    after = json.loads(written.read_text())
    assert after["cells"][0]["source"] == "x = 'mine'"  # exercise 1 untouched
    assert after["cells"][1]["outputs"] == report  # and its check's report too
    assert after["cells"][2]["source"] == "# YOUR CODE HERE"
    assert after["cells"][3]["outputs"] == []  # no old verdict under the fresh stub
    assert "y = 'broken'" in kept.read_text()
    with pytest.raises(BuildError, match="exercises 1 to 2"):
        build.reset("07", 3, solutions, notebooks, backups)


def test_course_command_line_build_reset_progress(tmp_path, monkeypatch, capsys):
    from course import cli, progress

    monkeypatch.setenv("COURSE_PROGRESS_FILE", str(tmp_path / "progress.json"))
    assert cli.main(["build", "--check"]) == 0
    assert cli.main(["reset", "42"]) == 2
    assert "no single lesson" in capsys.readouterr().err
    assert progress.record("lesson01.check_forecast", "Lesson 01 · GET /forecast/{city} awaits", True, 0.4)
    assert progress.record("lesson01.check_report", "Lesson 01 · report", False, 0.4)
    assert cli.main(["progress", "1"]) == 0
    out = capsys.readouterr().out
    assert "01  ✓✗·" in out and "✓ GET /forecast/{city} awaits" in out and "· signup" in out


def test_progress_is_never_a_reason_for_a_check_to_fail(tmp_path, monkeypatch):
    from course import progress

    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("COURSE_PROGRESS_FILE", str(blocker / "progress.json"))  # a folder that cannot exist
    assert progress.record("lesson00.check_hello", "t", True, 0.1) is False
    assert progress.load() == {}


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


def test_reset_says_what_it_did_and_what_was_never_saved(tmp_path):
    solutions, notebooks, backups = _course(tmp_path, code("### BEGIN SOLUTION\nx = 1\n### END SOLUTION"))
    paths = dict(solutions=solutions, notebooks=notebooks, backups=backups)
    build.build(solutions, notebooks, backups)
    # Nothing saved since the build (a learner typed in the browser only): no copy, and it says why.
    said = build.reset_messages("07", 1, **paths)
    assert "nothing was written" in said[0]
    assert "Nothing of yours was saved on disk" in said[1] and "Ctrl+S" in said[1]
    assert "Reload Notebook from Disk" in said[-1] and "Revert, not Overwrite" in said[-1]
    assert not backups.exists()
    # Saved work: written fresh, the copy named.
    target = notebooks / "07_demo.ipynb"
    mine = json.loads(target.read_text())
    mine["cells"][0]["source"] = "x = 'mine'"
    target.write_text(build.dumps(mine))
    said = build.reset_messages(7, **paths)
    assert said[0] == f"Fresh copy of 07_demo.ipynb written to {target}."
    (kept,) = backups.iterdir()
    assert said[1] == f"Your previous copy is kept in {kept}."


def test_fastapis_shipped_guidance_is_shown_where_the_learner_is(capsys):
    """Lessons cite FastAPI's guidance; it lives in a hidden folder JupyterLab cannot open."""
    from course import fastapi_guidance, guidance

    assert {"SKILL", "dependencies", "streaming"} <= set(fastapi_guidance.topics())
    section = fastapi_guidance.text("SKILL", "async vs sync")
    assert section.startswith("## Async vs Sync") and "\n## " not in section
    assert "Depends" in fastapi_guidance.text("dependencies")
    guidance("no-such-topic")
    assert "no guidance named 'no-such-topic'" in capsys.readouterr().out


def test_course_guidance_prints_a_section_in_the_terminal(capsys):
    from course.cli import main

    assert main(["guidance", "SKILL", "--section", "Async vs Sync"]) == 0
    assert capsys.readouterr().out.startswith("## Async vs Sync")
    assert main(["guidance", "nope"]) == 2


def test_every_guidance_a_lesson_names_exists_in_the_installed_fastapi():
    import re

    from course import fastapi_guidance

    named = set()
    for path in sorted((ROOT / "solutions").glob("*.ipynb")):
        for cell in json.loads(path.read_text())["cells"]:
            source = "".join(cell["source"])
            named |= set(re.findall(r'guidance\("([^"]+)"(?:,\s*"([^"]+)")?\)', source))
    assert named, "no lesson points at FastAPI's guidance"
    for topic, section in named:
        assert fastapi_guidance.text(topic, section or None), (topic, section)
