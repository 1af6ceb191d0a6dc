"""`course release OUT/`: the learners' copy of the course, without its solutions, still works."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from course.build import BuildError
from course.release import release

ROOT = Path(__file__).resolve().parent.parent


def course(out: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COURSE_ROOT": str(out), "COURSE_PROGRESS_FILE": str(out / "progress.json")}
    return subprocess.run([sys.executable, "-c", "import sys; from course.cli import main; sys.exit(main())", *args],
                          env=env, capture_output=True, text=True, timeout=60)


def test_a_release_has_no_solutions_and_its_commands_work(tmp_path):
    out = tmp_path / "class"
    written = release(out)
    assert "solutions" not in written and {"notebooks", "lessons", "checks", "course", "binder"} <= set(written)
    assert not (out / "tests").exists() and not (out / "examples").exists()
    learner = sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
    assert sorted(p.name for p in (out / "notebooks").glob("*.ipynb")) == learner
    assert course(out, "build", "--check").returncode == 0  # lessons/ builds to exactly notebooks/

    # A learner's broken exercise 1 of lesson 03 is reset from lessons/, their copy kept.
    mine = out / "notebooks" / "03_validators.ipynb"
    notebook = json.loads(mine.read_text())
    first = notebook["metadata"]["course"]["exercises"][0]
    cell = next(c for c in notebook["cells"] if c["id"] == first)
    cell["source"] = "broken = True"
    mine.write_text(json.dumps(notebook))
    done = course(out, "reset", "03", "--exercise", "1")
    assert done.returncode == 0 and "backups/" in done.stdout, done.stdout + done.stderr
    again = json.loads(mine.read_text())
    assert "broken = True" not in "".join(next(c for c in again["cells"] if c["id"] == first)["source"])
    assert "0/2" in course(out, "progress", "03").stdout


def test_a_release_refuses_a_folder_in_use_and_the_course_itself(tmp_path):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("mine")
    with pytest.raises(BuildError, match="not empty"):
        release(tmp_path / "used")
    with pytest.raises(BuildError, match="part of the course"):
        release(ROOT / "notebooks" / "out")


def test_a_solution_that_would_leak_stops_the_release(tmp_path):
    """A solution's line that reached a learner notebook (here: planted in the README) is found."""
    from course import release as module

    solution = json.loads((ROOT / "solutions" / "00_welcome.ipynb").read_text())
    lines = module.solution_lines(ROOT / "solutions", {"x": json.dumps({"cells": []})})
    assert lines, "the lessons' solution regions were read"
    root = tmp_path / "course"
    root.mkdir()
    for name in ("checks", "course", "binder", "pyproject.toml", "Makefile", ".gitignore"):
        (root / name).symlink_to(ROOT / name)
    (root / "README.md").write_text("An answer: " + sorted(lines)[0])
    with pytest.raises(BuildError, match="would have been released"):
        release(tmp_path / "out", root=root)
    assert not (tmp_path / "out").exists()
    assert solution["cells"]
