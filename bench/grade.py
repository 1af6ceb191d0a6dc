"""`course grade` against nbgrader's autograde and a serial nbclient run, on the same 20 submissions.

    python bench/grade.py [--timeout 20] [--keep DIR] [--only course,nbclient,nbgrader]

Makes 20 submissions (10 learners x lessons 00 and 01: right, wrong, partly right, hanging,
busy-looping in the loop / in a thread / at the top of a cell, os._exit in a route and at the top
of a cell, deleted and edited check cells, checks rebound by the learner, a faked `course-check`
output), grades them three ways one after the other in this one run, checks
that `course grade`'s gradebook is right for every submission, and prints each grader's wall time
and the ratios. nbgrader comes from `pip install '.[bench]'`; without it that column says why.
A benchmark, not a test (it takes minutes); tests/test_grade_run.py holds the quick version.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from course.build import dumps, learner_notebook  # noqa: E402

PY = sys.executable
WALL_LIMIT_S = 1200  # a grader that takes longer is reported as not finished
SOLUTIONS = ROOT / "solutions"
# The exercise and check cells of the two lessons (the build keeps cell ids).
L00 = {"stem": "00_welcome", "exercises": {"hello": ("c15", "c19")}}
L01 = {"stem": "01_event_loop", "exercises": {"forecast": ("c17", "c18"), "report": ("c20", "c21"),
                                              "signup": ("c23", "c24")}}

HELLO = 'app = FastAPI()\n\n@app.get("/hello")\n'
ROUTES_00 = {
    "right": HELLO + 'async def hello(name: str = "world"):\n    return {"message": f"Hello, {name}!"}\n',
    "wrong": HELLO + 'async def hello(name: str = "world"):\n    return {"message": "Hello, world!"}\n',
    "hang": HELLO + 'async def hello(name: str = "world"):\n    await asyncio.Event().wait()\n',
    "busy": HELLO + 'async def hello(name: str = "world"):\n    while True:\n        pass\n',
    "busy_thread": HELLO + 'def hello(name: str = "world"):\n    while True:\n        pass\n',
    "exit_route": HELLO + 'async def hello(name: str = "world"):\n    import os\n    os._exit(3)\n',
    "top_busy": "app = FastAPI()\nwhile True:\n    pass\n",
    "top_exit": "import os\napp = FastAPI()\nos._exit(1)\n",
}
FORECAST = {
    "right": 'forecast_app = FastAPI()\n\n@forecast_app.get("/forecast/{city}")\nasync def forecast(city: str) -> Forecast:\n'
             '    return Forecast.model_validate(await forecast_api.get(city))\n',
    "blocking": 'forecast_app = FastAPI()\n\n@forecast_app.get("/forecast/{city}")\nasync def forecast(city: str) -> Forecast:\n'
                '    return Forecast.model_validate(forecast_api.get_blocking(city))\n',
    "exit_route": 'forecast_app = FastAPI()\n\n@forecast_app.get("/forecast/{city}")\nasync def forecast(city: str) -> Forecast:\n'
                  '    import os\n    os._exit(7)\n',
}
REPORT = {
    "right": 'report_app = FastAPI()\n\n@report_app.get("/report/{month}")\ndef report(month: str) -> MonthlyReport:\n'
             '    return MonthlyReport.model_validate(legacy_reports.render(month))\n',
    "async_blocking": 'report_app = FastAPI()\n\n@report_app.get("/report/{month}")\nasync def report(month: str) -> MonthlyReport:\n'
                      '    return MonthlyReport.model_validate(legacy_reports.render(month))\n',
    "top_busy": 'report_app = FastAPI()\nwhile True:\n    pass\n',
    # nbclient (so nbgrader too) waits forever on this one: not in the comparison, see tests/test_grade_run.py
    "sigint_proof": 'import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nreport_app = FastAPI()\nwhile True:\n    pass\n',
}
SIGNUP = {
    "right": 'signup_app = FastAPI()\n\n@signup_app.post("/signup")\nasync def signup(signup: Signup) -> User:\n'
             '    password_hash = await run_in_threadpool(hash_password, signup.password)\n'
             '    user_id = await user_store.save(signup.email, password_hash)\n'
             '    return User(id=user_id, email=signup.email)\n',
    "hang": 'signup_app = FastAPI()\n\n@signup_app.post("/signup")\nasync def signup(signup: Signup) -> User:\n'
            '    await asyncio.Event().wait()\n',
}
FAKE_PASS = ("from IPython.display import display\n"
             "display({'text/plain': 'all passed'}, raw=True, metadata={'course-check': "
             "{'id': '%s', 'passed': True, 'failed': [], 'elapsed_s': 0.1}})\n")
REBIND = "\n\nasync def %s(*args, **kwargs):  # the learner's own 'check'\n    return None\n"

P, F, T, D = "passed", "failed", "timed out", "kernel died"
# learner → lesson → (what to do to the learner copy, expected results in exercise order, status)
CASES = {
    "ada": {"00": ({"hello": "right"}, [P], "graded"),
            "01": ({"forecast": "right", "report": "right", "signup": "right"}, [P, P, P], "graded")},
    "ben": {"00": ({}, [F], "graded"),
            "01": ({}, [F, F, F], "graded")},
    "cleo": {"00": ({"hello": "wrong"}, [F], "graded"),
             "01": ({"forecast": "blocking", "report": "right", "signup": "right"}, [F, P, P], "graded")},
    "dev": {"00": ({"hello": "hang"}, [F], "graded"),
            "01": ({"forecast": "right", "report": "async_blocking", "signup": "right"}, [P, F, P], "graded")},
    "eva": {"00": ({"hello": "busy"}, [F], "graded"),
            "01": ({"forecast": "right", "report": "right", "signup": "hang"}, [P, P, F], "graded")},
    "finn": {"00": ({"hello": "busy_thread"}, [F], "graded"),
             "01": ({"forecast": "exit_route", "report": "right", "signup": "right"}, [D, P, P], "kernel died")},
    "gus": {"00": ({"hello": "top_busy"}, [F], "timed out"),
            "01": ({"forecast": "right", "report": "top_busy", "signup": "right"}, [P, F, P], "timed out")},
    "hana": {"00": ({"hello": "top_exit"}, [F], "kernel died"),
             "01": ({"forecast": "right", "report": "right", "signup": "right", "delete_checks": True}, [P, P, P],
                    "graded")},
    "ivo": {"00": ({"hello": "right", "delete_checks": True}, [P], "graded"),
            "01": ({"edit_checks": "pass\n"}, [F, F, F], "graded")},
    "jo": {"00": ({"hello": "wrong", "edit_checks": "assert True\n", "fake": True}, [F], "graded"),
           "01": ({"forecast": "blocking", "report": "async_blocking", "signup": "hang", "rebind": True}, [F, F, F],
                  "graded")},
}
SOURCES = {"hello": ROUTES_00, "forecast": FORECAST, "report": REPORT, "signup": SIGNUP}


def _set(cell: dict, source: str) -> None:
    cell["source"] = source
    cell["outputs"], cell["execution_count"] = [], None


def submission(lesson: dict, changes: dict) -> dict:
    """A learner's notebook: the learner copy (as the build makes it) with `changes` applied."""
    solution = json.loads((SOLUTIONS / f"{lesson['stem']}.ipynb").read_text(encoding="utf-8"))
    notebook = learner_notebook(solution, f"{lesson['stem']}.ipynb")
    by_id = {cell.get("id"): cell for cell in notebook["cells"]}
    for exercise, (code_id, check_id) in lesson["exercises"].items():
        if exercise in changes:
            _set(by_id[code_id], SOURCES[exercise][changes[exercise]])
        if changes.get("rebind"):
            by_id[code_id]["source"] += REBIND % f"check_{exercise}"
        if changes.get("fake"):
            by_id[code_id]["source"] += "\n" + FAKE_PASS % f"lesson{lesson['stem'][:2]}.check_{exercise}"
        if "edit_checks" in changes:
            _set(by_id[check_id], changes["edit_checks"])
    if changes.get("delete_checks"):
        checks = {check_id for _, check_id in lesson["exercises"].values()}
        notebook["cells"] = [cell for cell in notebook["cells"] if cell.get("id") not in checks]
    return notebook


def make_submissions(folder: Path, cases: dict = CASES) -> dict[tuple[str, str], tuple[list[str], str]]:
    """Writes FOLDER/<learner>/ps1/<lesson>.ipynb (nbgrader's submitted/ layout); returns the expected rows."""
    expected = {}
    for learner, lessons in cases.items():
        for number, (changes, results, status) in lessons.items():
            lesson = L00 if number == "00" else L01
            path = folder / learner / "ps1" / f"{lesson['stem']}.ipynb"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(dumps(submission(lesson, changes)), encoding="utf-8")
            expected[(learner, number)] = (results, status)
    return expected


def check_gradebook(path: Path, expected: dict) -> list[str]:
    """What in the gradebook differs from the expected results (empty when all is right)."""
    with path.open(newline="", encoding="utf-8") as f:
        rows = {(row["learner"], row["lesson"]): row for row in csv.DictReader(f)}
    exercises = {"00": ["lesson00.check_hello"],
                 "01": ["lesson01.check_forecast", "lesson01.check_report", "lesson01.check_signup"]}
    wrong = []
    for key, (results, status) in expected.items():
        row = rows.get(key)
        if row is None:
            wrong.append(f"{key}: no row")
            continue
        got = [row[e] for e in exercises[key[1]]]
        if got != results or row["status"] != status or int(row["score"]) != results.count(P):
            wrong.append(f"{key}: got {got} {row['status']!r} score {row['score']}, expected {results} {status!r}")
    return wrong


# ---- the three graders ------------------------------------------------------------------------

def run_course(folder: Path, work: Path, timeout: float, jobs: int | None, sandbox: str = "auto") -> tuple[float, Path]:
    out = work / "gradebook.csv"
    out.unlink(missing_ok=True)
    command = [str(Path(PY).parent / "course"), "grade", str(folder), "--out", str(out), "--feedback",
               str(work / "feedback"), "--timeout", str(timeout), "--sandbox", sandbox, "--quiet"]
    if jobs:
        command += ["--jobs", str(jobs)]
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=work)
    return time.perf_counter() - started, out


NBCLIENT_SERIAL = """
import sys, time
from pathlib import Path
import nbformat
from nbclient import NotebookClient
timeout = float(sys.argv[2])
for path in sorted(Path(sys.argv[1]).rglob('*.ipynb')):
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name='python3', allow_errors=True, interrupt_on_timeout=True,
                            resources={'metadata': {'path': str(path.parent)}})
    try:
        client.execute()
    except Exception as exc:  # a dead kernel stops nbclient: go on with the next notebook
        print(path, type(exc).__name__, file=sys.stderr)
"""


def run_nbclient(folder: Path, work: Path, timeout: float) -> float:
    copy = work / "nbclient"
    shutil.copytree(folder, copy)
    started = time.perf_counter()
    try:
        subprocess.run([PY, "-c", NBCLIENT_SERIAL, str(copy), str(timeout)], cwd=work, stderr=subprocess.DEVNULL,
                       timeout=WALL_LIMIT_S)
    except subprocess.TimeoutExpired:
        return None
    return time.perf_counter() - started


def nbgrader_source(lesson: dict) -> dict:
    """The solution notebook with nbgrader's cell metadata: exercise cells are solutions, check cells
    are autograder tests worth 1 point (locked, so autograde restores them, like `course grade`)."""
    notebook = json.loads((SOLUTIONS / f"{lesson['stem']}.ipynb").read_text(encoding="utf-8"))
    roles = {}
    for exercise, (code_id, check_id) in lesson["exercises"].items():
        roles[code_id] = {"solution": True, "grade": False, "locked": False, "grade_id": f"{exercise}_code"}
        roles[check_id] = {"solution": False, "grade": True, "locked": True, "points": 1, "grade_id": f"check_{exercise}"}
    for cell in notebook["cells"]:
        if cell.get("id") in roles:
            cell.setdefault("metadata", {})["nbgrader"] = dict(roles[cell["id"]], schema_version=3)
    return notebook


def run_nbgrader(folder: Path, work: Path, timeout: float, expected: dict) -> tuple[float | None, str]:
    """One nbgrader assignment per lesson (`l00`, `l01`), so that a notebook nbgrader gives up on does
    not take the learner's other lesson with it; the wall time is both `autograde` runs."""
    if shutil.which("nbgrader", path=str(Path(PY).parent)) is None:
        return None, "nbgrader is not installed (pip install '.[bench]')"
    course = work / "nbgrader"
    for lesson in (L00, L01):
        target = course / "source" / f"l{lesson['stem'][:2]}" / f"{lesson['stem']}.ipynb"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(dumps(nbgrader_source(lesson)), encoding="utf-8")
    (course / "nbgrader_config.py").write_text(
        "c = get_config()\n"
        f"c.CourseDirectory.root = {str(course)!r}\n"
        "c.CourseDirectory.course_id = 'bench'\n"
        f"c.Execute.timeout = {int(timeout)}\n", encoding="utf-8")
    nbgrader = str(Path(PY).parent / "nbgrader")
    env = dict(os.environ)  # nbgrader runs `alembic` from PATH when it makes its database
    env["PATH"] = str(Path(PY).parent) + os.pathsep + env.get("PATH", "")
    for assignment in ("l00", "l01"):
        generate = subprocess.run([nbgrader, "generate_assignment", assignment, "--force"], cwd=course, env=env,
                                  capture_output=True, text=True)
        if generate.returncode:
            return None, "nbgrader generate_assignment failed: " + generate.stderr.strip().splitlines()[-1]
    submitted = course / "submitted"
    for learner_dir in sorted(folder.iterdir()):
        for path in (learner_dir / "ps1").glob("*.ipynb"):
            lesson = L00 if path.name.startswith("00") else L01
            notebook = json.loads(path.read_text(encoding="utf-8"))
            marks = {cell.get("id"): cell["metadata"]["nbgrader"] for cell in nbgrader_source(lesson)["cells"]
                     if "nbgrader" in cell.get("metadata", {})}
            for cell in notebook["cells"]:  # as nbgrader's release would have carried them
                if cell.get("id") in marks:
                    cell.setdefault("metadata", {})["nbgrader"] = marks[cell["id"]]
            target = submitted / learner_dir.name / f"l{lesson['stem'][:2]}" / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(dumps(notebook), encoding="utf-8")
    wall, log = 0.0, ""
    for assignment in ("l00", "l01"):
        started = time.perf_counter()
        try:
            autograde = subprocess.run([nbgrader, "autograde", assignment, "--create", "--force"], cwd=course, env=env,
                                       capture_output=True, text=True, timeout=WALL_LIMIT_S)
        except subprocess.TimeoutExpired:
            return None, f"nbgrader autograde did not finish in {WALL_LIMIT_S} s"
        wall += time.perf_counter() - started
        log += autograde.stdout + autograde.stderr
    (work / "nbgrader.log").write_text(log, encoding="utf-8")
    graded = len(list((course / "autograded").glob("*/*/*.ipynb")))
    given_up = sorted({line.rsplit("/submitted/", 1)[1] for line in log.splitlines()
                       if "error processing assignment" in line and "/submitted/" in line})
    note = f"{graded} of {len(expected)} notebooks autograded"
    if given_up:
        note += f" (gave up on {', '.join(given_up)})"
    return wall, note + "; " + nbgrader_scores(course, nbgrader, env, expected)


def nbgrader_scores(course: Path, nbgrader: str, env: dict, expected: dict) -> str:
    """nbgrader's score per learner and lesson against the right ones."""
    subprocess.run([nbgrader, "export"], cwd=course, env=env, capture_output=True, text=True)
    try:
        with (course / "grades.csv").open(newline="", encoding="utf-8") as f:
            scores = {(row["student_id"], row["assignment"][1:]): float(row["raw_score"] or 0)
                      for row in csv.DictReader(f)}
    except OSError:
        return "no scores exported"
    wrong = [f"{learner}/{lesson} {scores.get((learner, lesson), 0):g} (right: {results.count(P)})"
             for (learner, lesson), (results, _) in sorted(expected.items())
             if scores.get((learner, lesson), 0) != results.count(P)]
    return "its scores are right for every one" if not wrong else "its scores differ: " + ", ".join(wrong)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds per cell, the same for every grader")
    parser.add_argument("--jobs", type=int, help="course grade --jobs (default: one per core)")
    parser.add_argument("--keep", help="work in this folder and keep it")
    parser.add_argument("--only", default="course,nbclient,nbgrader",
                        help="graders to run; 'course-nosandbox' adds course grade --sandbox off (the sandbox's cost)")
    args = parser.parse_args(argv)
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-grade-"))
    if args.keep and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    folder = work / "submitted"
    expected = make_submissions(folder)
    print(f"{len(expected)} submissions in {folder}; cell timeout {args.timeout:g} s; "
          f"{len(os.sched_getaffinity(0))} cores; load average {os.getloadavg()[0]:.1f}")
    walls: dict[str, float | None] = {}
    notes: dict[str, str] = {}
    only = args.only.split(",")
    if "course" in only:
        walls["course grade"], gradebook = run_course(folder, work, args.timeout, args.jobs)
        wrong = check_gradebook(gradebook, expected)
        notes["course grade"] = "gradebook right for all %d" % len(expected) if not wrong else "WRONG: " + "; ".join(wrong)
    if "course-nosandbox" in only:
        walls["course --sandbox off"], gradebook = run_course(folder, work, args.timeout, args.jobs, "off")
        wrong = check_gradebook(gradebook, expected)
        notes["course --sandbox off"] = "gradebook right for all %d" % len(expected) if not wrong else "WRONG: " + "; ".join(wrong)
    if "nbclient" in only:
        walls["nbclient serial"] = run_nbclient(folder, work, args.timeout)
        notes["nbclient serial"] = ("executes only: no check cells restored, no gradebook" if walls["nbclient serial"]
                                    else f"did not finish in {WALL_LIMIT_S} s")
    if "nbgrader" in only:
        walls["nbgrader autograde"], notes["nbgrader autograde"] = run_nbgrader(folder, work, args.timeout, expected)
    print(f"\n{'grader':<20} {'wall s':>8}  notes")
    for name, wall in walls.items():
        shown = "-" if wall is None else f"{wall:.1f}"
        print(f"{name:<20} {shown:>8}  {notes.get(name, '')}")
    ours = walls.get("course grade")
    if ours:
        for name in ("nbgrader autograde", "nbclient serial"):
            if walls.get(name):
                print(f"course grade / {name}: {ours / walls[name]:.2f}x")
    print(f"load average after: {os.getloadavg()[0]:.1f}; work folder: {work}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if any(note.startswith("WRONG") for note in notes.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
