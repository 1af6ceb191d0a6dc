"""`course grade`: a small class graded in real kernels, and the gradebook's plumbing without kernels.

The big run (20 submissions, against nbgrader and nbclient) is bench/grade.py.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path, PurePosixPath

import pytest

from course import grade
from course.build import ROOT, dumps, learner_notebook
from course.cli import main as cli

LESSONS = grade.load_lessons(ROOT / "solutions")
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


# ---- without kernels -------------------------------------------------------------------------------

def test_the_plan_runs_the_course_check_cells_in_place_of_the_learners():
    lesson = LESSONS["01"]
    notebook = with_cells(learner_copy("01_event_loop"), {"c18": "assert True", "c21": None})
    notebook["cells"].append({"cell_type": "code", "id": "mine", "metadata": {"tags": ["check"]},
                              "source": "await check_forecast(forecast_app)", "outputs": []})
    steps = grade.plan(notebook, lesson)
    checks = [(s.check.id, s.index) for s in steps if s.check]
    assert [c for c, _ in checks] == ["c18", "c21", "c24"]
    ids = [c.get("id") for c in notebook["cells"]]
    assert checks[0][1] == ids.index("c18")  # the edited one: replaced where it stands
    assert checks[1][1] == -1  # the deleted one: inserted ...
    inserted = next(i for i, s in enumerate(steps) if s.check and s.check.id == "c21")
    assert steps[inserted - 1].index == ids.index("c20")  # ... right after its exercise cell
    assert not any("assert True" in s.source for s in steps)
    assert not any(s.index == ids.index("mine") for s in steps)  # a copy tagged `check` does not run
    source = next(s.source for s in steps if s.check and s.check.id == "c18")
    assert "__course_check__('lesson01', 'check_forecast', None)(forecast_app)" in source


def test_lessons_and_learners_are_found_by_the_documented_rules():
    lessons = LESSONS
    stamped = learner_copy()
    assert grade.lesson_of(stamped, PurePosixPath("x.ipynb"), lessons) == "00"  # the build's stamp
    bare = {"cells": [], "metadata": {}}
    assert grade.lesson_of(bare, PurePosixPath("ana/01_event_loop.ipynb"), lessons) == "01"
    assert grade.lesson_of(bare, PurePosixPath("ana_lesson01.ipynb"), lessons) == "01"
    imports = {"cells": [{"cell_type": "code", "source": "from checks.lesson01 import check_report"}]}
    assert grade.lesson_of(imports, PurePosixPath("untitled.ipynb"), lessons) == "01"
    assert grade.lesson_of(bare, PurePosixPath("untitled.ipynb"), lessons) is None
    assert grade.lesson_of(bare, PurePosixPath("smith_12345_678_hw.ipynb"), lessons) is None  # no 2-digit token

    l01 = lessons["01"]
    assert grade.learner_of(PurePosixPath("ana/ps1/01_event_loop.ipynb"), l01) == ("ana", "")
    assert grade.learner_of(PurePosixPath("ana_01_event_loop.ipynb"), l01) == ("ana", "")
    assert grade.learner_of(PurePosixPath("lesson01-ben.ipynb"), l01) == ("ben", "")
    assert grade.learner_of(PurePosixPath("smithjane_LATE_48213_990123_01_event_loop.ipynb"), l01) == ("smithjane", "48213")
    assert grade.learner_of(PurePosixPath("Jane Smith_5511_assignsubmission_file_/01_event_loop.ipynb"), l01) == \
        ("Jane Smith", "5511")


def test_shards_split_the_folder_deterministically_and_completely():
    jobs = [grade.Job(Path(f"{n}.ipynb"), f"{n}.ipynb", "", "00", n, "", {}) for n in "qwertyuiopasdfg"]
    parts = [grade.shard(jobs, k, 4) for k in range(1, 5)]
    assert sorted(j.rel for p in parts for j in p) == sorted(j.rel for j in jobs)
    assert [len(p) for p in parts] == [4, 4, 4, 3]
    assert [j.rel for j in grade.shard(list(reversed(jobs)), 2, 4)] == [j.rel for j in parts[1]]
    with pytest.raises(SystemExit):
        grade._parse_shard("5/4")


def test_merge_joins_parts_and_exports_for_canvas_and_moodle(tmp_path, capsys):
    first, second = tmp_path / "p1.csv", tmp_path / "p2.csv"
    head = ["learner", "lesson", "lesson00.check_hello", "score", "out_of", "status", "seconds", "learner_id",
            "file", "digest"]
    first.write_text(",".join(head) + "\nana,00,passed,1,1,graded,1.0,,ana/00.ipynb,a\n"
                     "bo,00,failed,0,1,timed out,9.0,,bo/00.ipynb,b\n", encoding="utf-8")
    head2 = head[:3] + ["lesson01.check_forecast", "lesson01.check_report", "lesson01.check_signup"] + head[3:]
    second.write_text(",".join(head2) + "\nana,01,,passed,failed,passed,2,3,graded,5.0,,ana/01.ipynb,c\n"
                      "cy,01,,kernel died,passed,passed,2,3,kernel died,5.0,48213,cy/01.ipynb,d\n", encoding="utf-8")
    out, canvas, moodle = tmp_path / "gradebook.csv", tmp_path / "canvas.csv", tmp_path / "moodle.csv"
    assert cli(["grade", "--merge", str(first), str(second), "--out", str(out), "--canvas", str(canvas),
                "--moodle", str(moodle)]) == 0
    merged = list(csv.DictReader(out.open(encoding="utf-8")))
    assert [r["file"] for r in merged] == ["ana/00.ipynb", "ana/01.ipynb", "bo/00.ipynb", "cy/01.ipynb"]
    assert list(merged[0])[:6] == ["learner", "lesson", "lesson00.check_hello", "lesson01.check_forecast",
                                   "lesson01.check_report", "lesson01.check_signup"]
    table = list(csv.reader(canvas.open(encoding="utf-8")))
    assert table[0][:5] == ["Student", "ID", "SIS User ID", "SIS Login ID", "Section"]
    assert table[0][5].startswith("Lesson 00 · ") and table[0][6].startswith("Lesson 01 · ")
    assert table[1] == ["Points Possible", "", "", "", "", "1", "3"]
    assert table[2] == ["ana", "", "", "ana", "", "1", "2"]
    assert table[4] == ["cy", "48213", "", "", "", "", "2"]  # a Canvas user id when the file name had one
    table = list(csv.reader(moodle.open(encoding="utf-8")))
    assert table[0][0] == "learner" and table[0][2].endswith("(feedback)")
    bo = next(r for r in table if r[0] == "bo")
    assert bo[1] == "0" and "hello (failed)" in bo[2] and "timed out" in bo[2]


def test_a_gradebook_cut_mid_row_resumes_without_that_row_and_takes_new_columns(tmp_path):
    path = tmp_path / "gradebook.csv"
    head = "learner,lesson,lesson00.check_hello,score,out_of,status,seconds,learner_id,file,digest\n"
    path.write_text(head + "ana,00,passed,1,1,graded,1.0,,ana.ipynb,aa\nbo,00,fail", encoding="utf-8")
    book = grade.Gradebook(path, grade.columns_for([LESSONS["00"], LESSONS["01"]]))
    assert book.done() == {"ana.ipynb": "aa"}  # bo's torn row is gone: bo is graded again
    book.add({"learner": "cy", "lesson": "01", "lesson01.check_forecast": "passed", "file": "cy.ipynb"})
    book.close()
    header, rows = grade.read_rows(path)
    assert header[:4] == ["learner", "lesson", "lesson00.check_hello", "lesson01.check_forecast"]
    assert [r["file"] for r in rows] == ["ana.ipynb", "cy.ipynb"] and rows[1]["lesson01.check_forecast"] == "passed"


def test_a_notebook_without_cell_ids_still_gets_the_course_checks():
    notebook = learner_copy()
    for cell in notebook["cells"]:
        cell.pop("id", None)
    index = next(i for i, c in enumerate(notebook["cells"]) if "await check_hello" in grade._source(c))
    notebook["cells"][index]["source"] = "await check_hello(app)  # I changed this"
    steps = grade.plan(notebook, LESSONS["00"])
    assert sum(1 for s in steps if s.check) == 1
    assert not any("I changed this" in s.source for s in steps)


# ---- in real kernels ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """One grading run of lesson 00 submissions (and one of lesson 01), then a second run to resume."""
    base = tmp_path_factory.mktemp("grade")
    folder = base / "class"
    copy = learner_copy()
    right = with_cells(copy, {"c15": RIGHT})
    write(folder / "ana" / "00_welcome.ipynb", right)
    write(folder / "bo" / "00_welcome.ipynb", copy)  # handed in untouched
    write(folder / "cy_00.ipynb", with_cells(copy, {"c15": WRONG, "c19": "assert True"}))  # edited check
    write(folder / "dee" / "00_welcome.ipynb", with_cells(copy, {"c15": RIGHT, "c19": None}))  # deleted check
    faked = WRONG + ("\nfrom IPython.display import display\ndisplay({'text/plain': 'ok'}, raw=True, metadata="
                     "{'course-check': {'id': 'lesson00.check_hello', 'passed': True}})\n"
                     "async def check_hello(app):\n    pass\n")
    write(folder / "eli" / "00_welcome.ipynb", with_cells(copy, {"c15": faked}))  # fakes its result, rebinds
    proof = "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\napp = FastAPI()\nwhile True:\n    pass\n"
    write(folder / "fay" / "00_welcome.ipynb", with_cells(copy, {"c15": proof}))  # an interrupt cannot stop it
    write(folder / "gil" / "00_welcome.ipynb", with_cells(copy, {"c15": "import os\nos._exit(1)\n"}))
    write(folder / "hal" / "00_welcome.ipynb", with_cells(copy, {"c15": FIRST_WORD}))
    write(folder / "ivy" / "notes.ipynb", "{ this is not json")
    write(folder / "jan" / "scratch.ipynb", {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5})
    extra = base / "instructor"
    write(extra / "lesson00.py", EXTRA_CHECKS)
    progress = base / "progress.json"
    out, feedback = base / "gradebook.csv", base / "feedback"
    argv = ["grade", str(folder), "--out", str(out), "--feedback", str(feedback), "--extra-checks", str(extra),
            "--timeout", "8", "--jobs", "2"]
    import os

    old = os.environ.get("COURSE_PROGRESS_FILE")
    os.environ["COURSE_PROGRESS_FILE"] = str(progress)  # the grader must not pass it to kernels
    try:
        assert cli(argv) == 0
        first = rows(out)
        write(folder / "bo" / "00_welcome.ipynb", right)  # bo hands in again: only bo is graded again
        assert cli(argv) == 0
        second = rows(out)
    finally:
        if old is None:
            os.environ.pop("COURSE_PROGRESS_FILE", None)
        else:
            os.environ["COURSE_PROGRESS_FILE"] = old
    return {"first": first, "second": second, "feedback": feedback, "progress": progress, "out": out}


EXPECTED = {  # file → (check_hello, status)
    "ana/00_welcome.ipynb": ("passed", "graded"),
    "bo/00_welcome.ipynb": ("failed", "graded"),
    "cy_00.ipynb": ("failed", "graded"),
    "dee/00_welcome.ipynb": ("passed", "graded"),
    "eli/00_welcome.ipynb": ("failed", "graded"),
    "fay/00_welcome.ipynb": ("failed", "timed out"),
    "gil/00_welcome.ipynb": ("failed", "kernel died"),
    "hal/00_welcome.ipynb": ("failed", "graded"),
}


def test_every_submission_gets_its_result_and_status(graded):
    got = graded["first"]
    for file, (result, status) in EXPECTED.items():
        assert (got[file]["lesson00.check_hello"], got[file]["status"]) == (result, status), file
        assert got[file]["score"] == str(int(result == "passed")) and got[file]["out_of"] == "1"
    assert got["cy_00.ipynb"]["learner"] == "cy" and got["ana/00_welcome.ipynb"]["learner"] == "ana"
    for file in ("ivy/notes.ipynb", "jan/scratch.ipynb"):
        assert got[file]["status"] == "not a course notebook" and got[file]["score"] == "0"
    assert not graded["progress"].exists(), "grading recorded into a learner's progress"


def test_an_interrupted_or_repeated_run_grades_only_what_is_new(graded):
    first, second = graded["first"], graded["second"]
    assert set(first) == set(second)
    assert second["bo/00_welcome.ipynb"]["lesson00.check_hello"] == "passed"
    assert second["bo/00_welcome.ipynb"]["digest"] != first["bo/00_welcome.ipynb"]["digest"]
    for file in set(first) - {"bo/00_welcome.ipynb"}:
        assert second[file] == first[file], file
    lines = graded["out"].read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1 + len(first)  # one header, one row per notebook


def test_feedback_pages_hold_the_reports_but_no_check_source(graded):
    pages = graded["feedback"]
    right = (pages / "ana" / "00_welcome.html").read_text(encoding="utf-8")
    assert "GET /hello greets by name" in right and "passed" in right
    assert "extra grading check" in right  # the instructor's check: its verdict only
    assert "Zoë" not in right and "check_hello(report" not in right and "await " not in right
    wrong = (pages / "cy" / "00_welcome.html").read_text(encoding="utf-8")
    assert "Use the `name` parameter" in wrong or "<code>name</code> parameter" in wrong
    stuck = (pages / "fay" / "00_welcome.html").read_text(encoding="utf-8")
    assert "ran past its time limit" in stuck


def test_forked_kernels_are_fresh_processes_with_their_own_random_state(tmp_path):
    """The zygote imported the course once; each kernel forked from it starts from those imports only."""
    import asyncio

    async def two_kernels():
        launcher = grade.Launcher(True, tmp_path)
        await launcher.start()
        try:
            values = []
            for _ in range(2):
                kernel = grade.Kernel(launcher, tmp_path)
                await kernel.start(["checks.lesson00"])
                code = ("import os, random, sys\nfrom IPython.display import display\n"
                        "display({'text/plain': repr((random.random(), os.getpid(), os.getcwd(), "
                        "'leak' in globals(), os.environ.get('COURSE_PROGRESS_FILE')))}, raw=True, "
                        "metadata={'course-check': {}})\nleak = 1")
                run = await kernel.run(code, 30)
                values.append(eval(run.outputs[0]["text"]))
                kernel.close()
            return values
        finally:
            await launcher.close()

    first, second = asyncio.run(two_kernels())
    assert first[0] != second[0] and first[1] != second[1] and first[2] != second[2]
    assert first[3] is False and second[3] is False and first[4] is None and second[4] is None


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="reads /proc to see that the kernel is gone")
def test_a_stopped_run_keeps_its_rows_and_leaves_no_kernel_behind(tmp_path):
    """SIGTERM (a pod stopped, `kill`) mid-run: finished rows stay, running kernels are ended."""
    import os
    import signal
    import subprocess
    import sys
    import time

    folder, pidfile = tmp_path / "class", tmp_path / "kernel.pid"
    copy = learner_copy()
    write(folder / "ana" / "00_welcome.ipynb", with_cells(copy, {"c15": RIGHT}))
    stuck = f"import os, time\nopen({str(pidfile)!r}, 'w').write(str(os.getpid()))\ntime.sleep(600)\n"
    write(folder / "bo" / "00_welcome.ipynb", with_cells(copy, {"c15": stuck}))
    out = tmp_path / "gradebook.csv"
    course = Path(sys.executable).parent / "course"
    proc = subprocess.Popen([str(course), "grade", str(folder), "--out", str(out), "--jobs", "1", "--max-jobs", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (pidfile.exists() and pidfile.read_text() and out.exists() and len(rows(out)) == 1):
            assert time.monotonic() < deadline and proc.poll() is None, "the run did not get going"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "interrupted: 1 row(s) kept" in proc.stderr.read()
    assert list(rows(out)) == ["ana/00_welcome.ipynb"]
    kernel = int(pidfile.read_text())
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{kernel}") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not os.path.exists(f"/proc/{kernel}"), "the stuck kernel outlived the run"
