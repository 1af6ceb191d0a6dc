"""Finding submissions: every notebook under the folder, which lesson and which learner it is,
and the deterministic part K of N of them (`--shard`)."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .lessons import CHECK_IMPORT, Lesson, _source

CANVAS_NAME = re.compile(r"^(?P<name>[^_]+)_(?:LATE_)?(?P<id>\d+)_\d+_(?P<rest>.*)$", re.IGNORECASE)
CHECKS_ANY = re.compile(r"^\s*(?:from|import)\s+checks\b", re.MULTILINE)
MOODLE_NAME = re.compile(r"^(?P<name>.+?)_(?P<id>\d+)_assignsubmission_\w+?(?:_(?P<rest>.*))?$")


def lesson_of(notebook: dict, rel: PurePosixPath, lessons: dict[str, Lesson]) -> str | None:
    """The lesson: the build's stamp (metadata course.lesson); else, for a notebook that looks like
    the course's (a stamp or a `checks` import), the file name, else the checks module imported."""
    stamp = ((notebook.get("metadata") or {}).get("course") or {}).get("lesson")
    if isinstance(stamp, str) and stamp in lessons:
        return stamp
    imported = [m[-2:] for cell in notebook.get("cells", []) if isinstance(cell, dict)
                for m in CHECK_IMPORT.findall(_source(cell))]
    if not stamp and not imported and not any(  # another course's `week_04_pandas.ipynb` is not lesson 04
            CHECKS_ANY.search(_source(c)) for c in notebook.get("cells", []) if isinstance(c, dict)):
        return None
    name = rel.name
    for number, lesson in lessons.items():
        if lesson.stem in name:
            return number
    for token in re.findall(r"(?<!\d)(\d{2})(?!\d)", rel.stem):
        if token in lessons:
            return token
    return next((number for number in imported if number in lessons), None)


def read_notebook(data: bytes) -> tuple[dict | None, str]:
    """(notebook as nbformat 4, problem). Older formats (v3: worksheets, `input`) are upgraded;
    their made-up cell ids are dropped, so the course's check cells are found by tag."""
    try:
        notebook = json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        return None, f"not readable as a notebook: {exc}"
    if isinstance(notebook, dict) and isinstance(notebook.get("nbformat"), int) and notebook["nbformat"] < 4:
        try:
            import nbformat

            notebook = json.loads(nbformat.writes(nbformat.reads(data.decode("utf-8"), as_version=4)))
            for cell in notebook.get("cells", []):
                cell.pop("id", None)
        except Exception as exc:
            return None, f"an nbformat {notebook.get('nbformat')} notebook that could not be upgraded: {exc}"
    if not isinstance(notebook, dict) or not isinstance(notebook.get("cells"), list):
        return None, "not a notebook (no cells)"
    return notebook, ""


def learner_of(rel: PurePosixPath, lesson: Lesson | None) -> tuple[str, str]:
    """(learner, platform id). Nested: the first folder under FOLDER is the learner. Flat: the
    file name without its lesson part. Canvas's and Moodle's bulk-download names give the name
    and the platform's numeric id."""
    part = rel.parts[0] if len(rel.parts) > 1 else rel.stem
    for pattern in (CANVAS_NAME, MOODLE_NAME):
        match = pattern.match(part)
        if match:
            return match["name"], match["id"]
    if len(rel.parts) > 1:
        return part, ""
    rest = part
    if lesson is not None:
        rest = rest.replace(lesson.stem, "")
        rest = re.sub(rf"(?<!\d)(lesson)?{lesson.number}(?!\d)", "", rest, flags=re.IGNORECASE)
    rest = re.sub(r"[-_. ]+$", "", re.sub(r"^[-_. ]+", "", rest))
    return (rest or part), ""


@dataclass
class Job:
    path: Path
    rel: str
    digest: str
    lesson: str | None
    learner: str
    learner_id: str
    notebook: dict | None
    problem: str = ""


def find_jobs(folder: Path, lessons: dict[str, Lesson]) -> list[Job]:
    jobs = []
    for path in sorted(folder.rglob("*.ipynb")):
        rel = PurePosixPath(path.relative_to(folder).as_posix())
        if any(part.startswith(".") for part in rel.parts):  # .ipynb_checkpoints, .backups
            continue
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()[:16]
        notebook, problem = read_notebook(data)
        number = lesson_of(notebook, rel, lessons) if notebook is not None else None
        if notebook is not None and number is None:
            problem = ("not a course notebook: no lesson found (metadata course.lesson, or a file name with a "
                       "`checks` import)")
        learner, learner_id = learner_of(rel, lessons.get(number) if number else None)
        jobs.append(Job(path, str(rel), digest, number, learner, learner_id, notebook, problem))
    return jobs


def shard(jobs: list[Job], k: int, n: int) -> list[Job]:
    """Part k of n (1-based): the i-th notebook in path order goes to part (i mod n) + 1."""
    ordered = sorted(jobs, key=lambda job: job.rel)
    return [job for i, job in enumerate(ordered) if i % n == k - 1]
