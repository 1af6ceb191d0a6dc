"""`course grade` finds submissions: which lesson and which learner a file is, and shards."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest

from course.grade.command import _parse_shard
from course.grade.discovery import Job, learner_of, lesson_of, shard
from grading import LESSONS, learner_copy


def test_lessons_and_learners_are_found_by_the_documented_rules():
    lessons = LESSONS
    stamped = learner_copy()
    assert lesson_of(stamped, PurePosixPath("x.ipynb"), lessons) == "00"  # the build's stamp
    bare = {"cells": [], "metadata": {}}
    course = {"cells": [{"cell_type": "code", "source": "from checks import serve"}], "metadata": {}}
    assert lesson_of(course, PurePosixPath("ana/01_event_loop.ipynb"), lessons) == "01"
    assert lesson_of(course, PurePosixPath("ana_lesson01.ipynb"), lessons) == "01"
    # A name alone is not enough: another course's notebook (no stamp, no `checks` import) is not one of ours.
    assert lesson_of(bare, PurePosixPath("ana/01_event_loop.ipynb"), lessons) is None
    pandas = {"cells": [{"cell_type": "code", "source": "import pandas as pd\n# checks: none"}], "metadata": {}}
    assert lesson_of(pandas, PurePosixPath("week_04_pandas.ipynb"), lessons) is None
    imports = {"cells": [{"cell_type": "code", "source": "from checks.lesson01 import check_report"}]}
    assert lesson_of(imports, PurePosixPath("untitled.ipynb"), lessons) == "01"
    assert lesson_of(bare, PurePosixPath("untitled.ipynb"), lessons) is None
    assert lesson_of(bare, PurePosixPath("smith_12345_678_hw.ipynb"), lessons) is None  # no 2-digit token

    l01 = lessons["01"]
    assert learner_of(PurePosixPath("ana/ps1/01_event_loop.ipynb"), l01) == ("ana", "")
    assert learner_of(PurePosixPath("ana_01_event_loop.ipynb"), l01) == ("ana", "")
    assert learner_of(PurePosixPath("lesson01-ben.ipynb"), l01) == ("ben", "")
    assert learner_of(PurePosixPath("smithjane_LATE_48213_990123_01_event_loop.ipynb"), l01) == ("smithjane", "48213")
    assert learner_of(PurePosixPath("Jane Smith_5511_assignsubmission_file_/01_event_loop.ipynb"), l01) == \
        ("Jane Smith", "5511")


def test_shards_split_the_folder_deterministically_and_completely():
    jobs = [Job(Path(f"{n}.ipynb"), f"{n}.ipynb", "", "00", n, "", {}) for n in "qwertyuiopasdfg"]
    parts = [shard(jobs, k, 4) for k in range(1, 5)]
    assert sorted(j.rel for p in parts for j in p) == sorted(j.rel for j in jobs)
    assert [len(p) for p in parts] == [4, 4, 4, 3]
    assert [j.rel for j in shard(list(reversed(jobs)), 2, 4)] == [j.rel for j in parts[1]]
    with pytest.raises(SystemExit):
        _parse_shard("5/4")


def test_an_nbformat_v3_copy_is_upgraded_and_graded_as_its_lesson(tmp_path):
    """v3 (worksheets, `input`): upgraded to v4, its made-up ids dropped, so check cells are found by tag."""
    import nbformat

    from course.grade.discovery import find_jobs
    from course.grade.plan import plan
    from grading import RIGHT, with_cells, write

    from course.build import dumps

    v4 = nbformat.reads(dumps(with_cells(learner_copy(), {"c15": RIGHT})), as_version=4)
    (tmp_path / "ana").mkdir()
    (tmp_path / "ana" / "00_welcome.ipynb").write_text(nbformat.writes(nbformat.convert(v4, 3)), encoding="utf-8")
    write(tmp_path / "other" / "week_04_pandas.ipynb", {"cells": [{"cell_type": "code", "source": "import pandas",
                                                                  "metadata": {}, "outputs": []}],
                                                       "metadata": {}, "nbformat": 4, "nbformat_minor": 5})
    jobs = {job.rel: job for job in find_jobs(tmp_path, LESSONS)}
    ana = jobs["ana/00_welcome.ipynb"]
    assert (ana.lesson, ana.problem) == ("00", "")
    steps = plan(ana.notebook, LESSONS["00"])
    assert [s.check.id for s in steps if s.check] == ["c19"]
    assert any("Hello, {name}!" in s.source for s in steps if not s.check)
    assert jobs["other/week_04_pandas.ipynb"].lesson is None
    assert "not a course notebook" in jobs["other/week_04_pandas.ipynb"].problem
