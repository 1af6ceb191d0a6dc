"""Every lesson's solution gets full marks when `course grade` runs it sealed off (issue 21).

The sandbox takes things a lesson may need (a writable /dev/shm for a process pool's locks, the
network, $HOME): a lesson that only works unsandboxed would fail every learner of a graded class.
"""

from __future__ import annotations

import shutil

import pytest

from course.build import ROOT
from course.cli import main as cli
from course.grade.sandbox import probe
from grading import rows

pytestmark = pytest.mark.skipif(bool(probe()), reason=f"no sandbox here: {probe()}")


def test_every_solution_gets_full_marks_in_the_sandbox(tmp_path):
    folder, out = tmp_path / "class", tmp_path / "gradebook.csv"
    folder.mkdir()
    solutions = sorted((ROOT / "solutions").glob("*.ipynb"))
    for path in solutions:
        shutil.copy(path, folder / path.name)
    assert cli(["grade", str(folder), "--out", str(out), "--jobs", "2", "--sandbox", "required", "--quiet"]) == 0
    graded = rows(out)
    assert len(graded) == len(solutions)
    short = {file: f"{row['score']}/{row['out_of']} {row['status']}: "
             + ", ".join(k for k, v in row.items() if "." in k and v not in ("passed", ""))
             for file, row in graded.items() if row["score"] != row["out_of"] or row["status"] != "graded"}
    assert short == {}
