"""The gradebook CSV: written row by row and flushed, read back to resume an interrupted run, and
shard parts merged into one."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from .lessons import Lesson
from .verdicts import Outcome

FIXED_COLUMNS = ("learner", "lesson")
TAIL_COLUMNS = ("score", "out_of", "status", "seconds", "learner_id", "file", "digest")


def columns_for(lessons: list[Lesson]) -> list[str]:
    exercises = [e for lesson in sorted(lessons, key=lambda l: l.number) for e in lesson.exercises]
    return [*FIXED_COLUMNS, *exercises, *TAIL_COLUMNS]


def outcome_row(outcome: Outcome, lesson: Lesson | None) -> dict:
    job = outcome.job
    row = {"learner": job.learner, "lesson": job.lesson or "", "status": outcome.status,
           "seconds": f"{outcome.seconds:.1f}", "learner_id": job.learner_id, "file": job.rel, "digest": job.digest,
           "score": str(outcome.score), "out_of": str(len(lesson.exercises)) if lesson else "0"}
    row.update(outcome.results)
    return row


def read_rows(path: Path) -> tuple[list[str], list[dict]]:
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            return list(reader.fieldnames or []), [row for row in reader if row.get("file")]
    except FileNotFoundError:
        return [], []


class Gradebook:
    """Rows appended and flushed as they come; a new column set rewrites the file once."""

    def __init__(self, path: Path, columns: list[str]):
        self.path, self.columns = path, columns
        torn = path.exists() and path.stat().st_size and not path.read_bytes().endswith(b"\n")
        if torn:  # a run killed mid-row: that row is dropped (its notebook is graded again)
            text = path.read_bytes()
            path.write_bytes(text[: text.rfind(b"\n") + 1])
        header, rows = read_rows(path)
        self.rows = rows
        if header != columns:
            extra = [c for c in header if c not in columns and c not in TAIL_COLUMNS]
            self.columns = [*FIXED_COLUMNS, *[c for c in columns if c not in FIXED_COLUMNS + TAIL_COLUMNS], *extra,
                            *TAIL_COLUMNS]
            self._rewrite()
        self._file = path.open("a", newline="", encoding="utf-8")
        self._writer = csv.DictWriter(self._file, fieldnames=self.columns, extrasaction="ignore")

    def _rewrite(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with tmp.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(self.rows)
        tmp.replace(self.path)

    def done(self) -> dict[str, str]:
        """file → digest of the rows already graded (a changed file is graded again)."""
        return {row["file"]: row.get("digest", "") for row in self.rows}

    def add(self, row: dict) -> None:
        self.rows.append(row)
        self._writer.writerow(row)
        self._file.flush()
        os.fsync(self._file.fileno())

    def drop(self, files: set[str]) -> None:
        if files & {row["file"] for row in self.rows}:
            self.rows = [row for row in self.rows if row["file"] not in files]
            self._file.close()
            self._rewrite()
            self._file = self.path.open("a", newline="", encoding="utf-8")
            self._writer = csv.DictWriter(self._file, fieldnames=self.columns, extrasaction="ignore")

    def close(self) -> None:
        self._file.close()


def merge(parts: list[Path], out: Path) -> list[dict]:
    """Join shard gradebooks: one row per file (the last part wins), columns united."""
    columns: list[str] = []
    by_file: dict[str, dict] = {}
    for part in parts:
        header, rows = read_rows(part)
        if not header:
            raise FileNotFoundError(f"{part}: no gradebook rows")
        columns += [c for c in header if c not in columns]
        for row in rows:
            by_file[row["file"]] = row
    middle = [c for c in columns if c not in FIXED_COLUMNS + TAIL_COLUMNS]
    middle.sort(key=lambda c: (c.split(".")[0], columns.index(c)))
    columns = [*FIXED_COLUMNS, *middle, *TAIL_COLUMNS]
    rows = sorted(by_file.values(), key=lambda r: (r["learner"], r["lesson"], r["file"]))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(out)
    return rows
