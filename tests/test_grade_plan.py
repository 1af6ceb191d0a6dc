"""`course grade`'s plan: which cells run, with the course's check cells in place of the learner's."""

from __future__ import annotations

from course.grade.lessons import _source
from course.grade.plan import plan
from grading import LESSONS, learner_copy, with_cells


def test_the_plan_runs_the_course_check_cells_in_place_of_the_learners():
    lesson = LESSONS["01"]
    notebook = with_cells(learner_copy("01_event_loop"), {"c18": "assert True", "c21": None})
    notebook["cells"].append({"cell_type": "code", "id": "mine", "metadata": {"tags": ["check"]},
                              "source": "await check_forecast(forecast_app)", "outputs": []})
    steps = plan(notebook, lesson)
    checks = [(s.check.id, s.index) for s in steps if s.check]
    assert [c for c, _ in checks] == ["c18", "c21", "c24"]
    ids = [c.get("id") for c in notebook["cells"]]
    assert checks[0][1] == ids.index("c18")  # the edited one: replaced where it stands
    assert checks[1][1] == -1  # the deleted one: inserted ...
    inserted = next(i for i, s in enumerate(steps) if s.check and s.check.id == "c21")
    assert steps[inserted - 1].index == ids.index("c20")  # ... right after its exercise cell
    assert not any("assert True" in s.source for s in steps)
    assert not any(s.index == ids.index("mine") for s in steps)  # a copy tagged `check` does not run
    step = next(s for s in steps if s.check and s.check.id == "c18")
    assert f"__course_check__('lesson01', 'check_forecast', None, {step.nonce!r})(forecast_app)" in step.source
    assert len({s.nonce for s in steps if s.check}) == 3 and len(step.nonce) >= 16  # one secret per check cell


def test_a_notebook_without_cell_ids_still_gets_the_course_checks():
    notebook = learner_copy()
    for cell in notebook["cells"]:
        cell.pop("id", None)
    index = next(i for i, c in enumerate(notebook["cells"]) if "await check_hello" in _source(c))
    notebook["cells"][index]["source"] = "await check_hello(app)  # I changed this"
    steps = plan(notebook, LESSONS["00"])
    assert sum(1 for s in steps if s.check) == 1
    assert not any("I changed this" in s.source for s in steps)


def test_without_cell_ids_an_exercise_cell_that_mentions_a_check_still_runs():
    """Check cells are found by tag and id, never by text: the learner's code that names the check runs."""
    notebook = learner_copy("01_event_loop")
    exercise = next(c for c in notebook["cells"] if c.get("id") == "c17")
    exercise["source"] = "# I will call check_forecast(forecast_app) later\n" + _source(exercise)
    for cell in notebook["cells"]:
        cell.pop("id", None)
    steps = plan(notebook, LESSONS["01"])
    assert any("I will call check_forecast(" in s.source and s.check is None for s in steps)
    assert sorted(s.check.id for s in steps if s.check) == ["c18", "c21", "c24"]
    first = next(i for i, s in enumerate(steps) if s.check and s.check.id == "c18")
    assert "I will call check_forecast(" in steps[first - 1].source  # right after the exercise, as its tag says
