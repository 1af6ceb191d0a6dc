"""`course grade`: the command line, a thin shell over the stages (see course/grade/__init__.py)."""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

from ..paths import ROOT
from .discovery import find_jobs, shard
from .exports import write_canvas, write_moodle
from .gradebook import Gradebook, columns_for, merge
from .lessons import load_lessons
from .report import default_path, write_report
from .scheduler import cpu_count, grade_jobs


def _parse_shard(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise SystemExit(f"course grade: --shard wants K/N with 1 <= K <= N, e.g. 2/4 (got {text!r})")
    return int(match[1]), int(match[2])


def _sandbox(mode: str, fork: bool, hidden: list) -> list[Path] | None | bool:
    """The paths the sandbox hides (None: no sandbox; False: refused). Said loudly when off."""
    from .sandbox import NOT_ISOLATED, probe

    why = "--sandbox off" if mode == "off" else ("--no-fork" if not fork else probe())
    if not why:
        if hidden[3] is not None:
            hidden[3].mkdir(parents=True, exist_ok=True)  # hidden from the start, written later
        return [Path(p) for p in hidden if p is not None]
    if mode == "required":
        print(f"course grade: --sandbox required, but no sandbox here: {why}", file=sys.stderr)
        return False
    print(f"course grade: WARNING: submissions are NOT sandboxed ({why}): {NOT_ISOLATED}. Grade only "
          "notebooks you trust this way, or use --sandbox required.", file=sys.stderr)
    return None


def main(args) -> int:
    import asyncio

    solutions = Path(getattr(args, "solutions", None) or ROOT / "solutions")
    extra = getattr(args, "extra_checks", None)
    lessons = load_lessons(solutions, Path(extra) if extra else None)
    out = Path(args.out)
    report = Path(getattr(args, "report", None) or default_path(out))
    outcomes: list = []
    merge_parts = getattr(args, "merge", None)
    if merge_parts:
        rows = merge([Path(p) for p in merge_parts], out)
        print(f"merged {len(merge_parts)} part(s): {len(rows)} row(s) in {out}")
    else:
        if not getattr(args, "folder", None):
            print("course grade: give a FOLDER of notebooks (or --merge PARTS)", file=sys.stderr)
            return 2
        folder = Path(args.folder)
        if not folder.is_dir():
            print(f"course grade: {folder} is not a folder", file=sys.stderr)
            return 2
        jobs = find_jobs(folder, lessons)
        part = _parse_shard(getattr(args, "shard", None))
        if part:
            jobs = shard(jobs, *part)
        present = [lessons[n] for n in sorted({j.lesson for j in jobs if j.lesson in lessons})]
        book = Gradebook(out, columns_for(present))
        done = {} if getattr(args, "regrade", False) else book.done()
        book.drop({job.rel for job in jobs if job.rel in done and done[job.rel] != job.digest}
                  | ({job.rel for job in jobs} if getattr(args, "regrade", False) else set()))
        done = book.done()
        todo = [job for job in jobs if done.get(job.rel) != job.digest]
        workers = max(1, int(getattr(args, "jobs", None) or cpu_count()))
        max_jobs = max(workers, int(getattr(args, "max_jobs", None) or 2 * workers))
        skipped = len(jobs) - len(todo)
        print(f"grading {len(todo)} notebook(s)" + (f" ({skipped} already in {out})" if skipped else "")
              + (f", shard {part[0]}/{part[1]}" if part else "") + f", {workers} at a time"
              + (f" (up to {max_jobs} while some only wait)" if max_jobs > workers else ""))
        feedback = Path(args.feedback) if getattr(args, "feedback", None) else None
        fork = (not getattr(args, "no_fork", False)) and hasattr(os, "fork") and sys.platform == "linux"
        sandbox = _sandbox(getattr(args, "sandbox", None) or "auto", fork,
                           [solutions, folder, out, feedback, Path(extra) if extra else None,
                            *(Path(getattr(args, k)) for k in ("canvas", "moodle") if getattr(args, k, None)),
                            report])
        if sandbox is False:
            book.close()
            return 2
        started = time.perf_counter()
        try:
            outcomes = asyncio.run(grade_jobs(
                todo, lessons, book, workers=workers, ahead=int(getattr(args, "ahead", None) or workers),
                timeout=float(getattr(args, "timeout", None) or 30.0),
                notebook_timeout=float(getattr(args, "notebook_timeout", None) or 900.0),
                max_workers=max_jobs,
                fork=fork, sandbox=sandbox, feedback=feedback, say=(lambda *a: None) if getattr(args, "quiet", False) else print))
        except (KeyboardInterrupt, asyncio.CancelledError):
            print(f"interrupted: {len(book.rows)} row(s) kept in {out}; the same command goes on from there",
                  file=sys.stderr)
            return 130
        finally:
            book.close()
        rows = book.rows
        print(f"{len(todo)} graded in {time.perf_counter() - started:.1f} s; gradebook: {out}")
    write_report(report, rows, lessons, outcomes)
    print(f"class report: {report}")
    if getattr(args, "canvas", None):
        write_canvas(rows, lessons, Path(args.canvas))
        print(f"Canvas import file: {args.canvas}")
    if getattr(args, "moodle", None):
        write_moodle(rows, lessons, Path(args.moodle))
        print(f"Moodle import file: {args.moodle}")
    return 0
