"""Files for the platforms' gradebook imports (Canvas, Moodle): one row per learner, the best
copy of each lesson."""

from __future__ import annotations

import csv
from pathlib import Path

from .lessons import Lesson
from .verdicts import GRADED, PASSED


def _best(rows: list[dict]) -> dict[tuple[str, str], dict]:
    """One row per learner and lesson: the best score (a learner who handed in two copies)."""
    best: dict[tuple[str, str], dict] = {}
    for row in rows:
        if not row.get("lesson"):
            continue
        key = (row["learner"], row["lesson"])
        if key not in best or int(row.get("score") or 0) > int(best[key].get("score") or 0):
            best[key] = row
    return best


def assignment_name(lesson: Lesson) -> str:
    return f"Lesson {lesson.number} · {lesson.title}"


def write_canvas(rows: list[dict], lessons: dict[str, Lesson], path: Path) -> None:
    """Canvas's gradebook import: Student, ID, SIS User ID, SIS Login ID, Section, then one column
    per assignment; a "Points Possible" row sets the points of assignments the import creates."""
    best = _best(rows)
    numbers = sorted({lesson for _, lesson in best})
    learners = sorted({learner for learner, _ in best})
    ids = {row["learner"]: row.get("learner_id", "") for row in rows}
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["Student", "ID", "SIS User ID", "SIS Login ID", "Section",
                         *[assignment_name(lessons[n]) if n in lessons else f"Lesson {n}" for n in numbers]])
        writer.writerow(["Points Possible", "", "", "", "",
                         *[str(len(lessons[n].exercises)) if n in lessons else "" for n in numbers]])
        for learner in learners:
            writer.writerow([learner, ids.get(learner, ""), "", "" if ids.get(learner) else learner, "",
                             *[best[(learner, n)]["score"] if (learner, n) in best else "" for n in numbers]])


def feedback_text(row: dict, lesson: Lesson | None) -> str:
    if lesson is None:
        return row.get("status", "")
    bad = [f"{e.split('.', 1)[1].removeprefix('check_')} ({row.get(e)})" for e in lesson.exercises if row.get(e) != PASSED]
    text = f"{row.get('score')}/{row.get('out_of')} exercises passed"
    return text + (f"; not passed: {', '.join(bad)}" if bad else "") + (
        f"; {row['status']}" if row.get("status") not in (GRADED, None) else "")


def write_moodle(rows: list[dict], lessons: dict[str, Lesson], path: Path) -> None:
    """Moodle's "Import grades > CSV file": a user column to map to username (or email), then per
    lesson a grade column and a feedback column to map to the lesson's grade item."""
    best = _best(rows)
    numbers = sorted({lesson for _, lesson in best})
    learners = sorted({learner for learner, _ in best})
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        header = ["learner"]
        for n in numbers:
            name = assignment_name(lessons[n]) if n in lessons else f"Lesson {n}"
            header += [name, f"{name} (feedback)"]
        writer.writerow(header)
        for learner in learners:
            line = [learner]
            for n in numbers:
                row = best.get((learner, n))
                line += [row["score"], feedback_text(row, lessons.get(n))] if row else ["", ""]
            writer.writerow(line)
