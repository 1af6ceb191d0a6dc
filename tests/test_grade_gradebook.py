"""`course grade`'s gradebook without kernels: resuming a cut file, merging parts, Canvas and Moodle files."""

from __future__ import annotations

import csv

from course.grade.gradebook import columns_for, Gradebook, read_rows
from course.cli import main as cli
from grading import LESSONS


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
    book = Gradebook(path, columns_for([LESSONS["00"], LESSONS["01"]]))
    assert book.done() == {"ana.ipynb": "aa"}  # bo's torn row is gone: bo is graded again
    book.add({"learner": "cy", "lesson": "01", "lesson01.check_forecast": "passed", "file": "cy.ipynb"})
    book.close()
    header, rows = read_rows(path)
    assert header[:4] == ["learner", "lesson", "lesson00.check_hello", "lesson01.check_forecast"]
    assert [r["file"] for r in rows] == ["ana.ipynb", "cy.ipynb"] and rows[1]["lesson01.check_forecast"] == "passed"
