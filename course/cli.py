"""`course`: the one command line of the course.

    course build [--check]          regenerate notebooks/ from solutions/ (changed copies are kept)
    course reset NN [--exercise N]  a fresh copy of lesson NN, or of one exercise in it
    course progress [NN]            which exercises pass
    course release OUT/             the course without its solutions, for a class's learners
    course guidance [TOPIC]         FastAPI's own guidance (in the package, a folder Lab cannot open)
    course grade FOLDER --out gradebook.csv [--feedback DIR] [--shard K/N | --merge PART...]
                                    run every notebook in FOLDER, one gradebook row per learner and lesson
"""

from __future__ import annotations

import argparse
from pathlib import Path
import sys

from . import build, progress

def _build(args) -> int:
    if args.check:
        problems = build.drift()
        for problem in problems:
            print(problem)
        return 1 if problems else 0
    written = build.build()
    print(f"wrote {len(written)} learner notebook(s)" + (f": {', '.join(written)}" if written else ""))
    return 0


def _reset(args) -> int:
    print("\n".join(build.reset_messages(args.lesson, args.exercise)))
    return 0


def _progress(args) -> int:
    print(progress.table_text(args.lesson.zfill(2) if args.lesson else None))
    return 0


def _guidance(args) -> int:
    from . import fastapi_guidance

    try:
        print(fastapi_guidance.text(args.topic, args.section), end="")
    except fastapi_guidance.GuidanceNotFound as exc:
        print(f"course guidance: {exc}", file=sys.stderr)
        return 2
    return 0


def _release(args) -> int:
    from .release import release

    written = release(Path(args.out))
    print(f"released into {args.out}: {', '.join(written)} (no solutions; `course reset` reads lessons/)")
    return 0


def _grade(args) -> int:
    from .grade.command import main  # on demand: the other commands start without it

    return main(args)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="course", description="The FastAPI async course: build, reset, progress, grade.")
    commands = top.add_subparsers(dest="command", required=True)
    p = commands.add_parser("build", help="regenerate notebooks/ from solutions/")
    p.add_argument("--check", action="store_true", help="only report drift (exit 1), write nothing")
    p.set_defaults(run=_build)
    p = commands.add_parser("reset", help="a fresh copy of a lesson (yours is kept in backups/)")
    p.add_argument("lesson", help="the lesson's number, e.g. 01")
    p.add_argument("--exercise", type=int, metavar="N", help="reset only exercise N (counting from 1)")
    p.set_defaults(run=_reset)
    p = commands.add_parser("progress", help="which exercises pass")
    p.add_argument("lesson", nargs="?", help="one lesson's exercises, e.g. 01")
    p.set_defaults(run=_progress)
    p = commands.add_parser("guidance", help="FastAPI's own guidance, shipped in the installed package")
    p.add_argument("topic", nargs="?", default="SKILL", help="SKILL (default), dependencies, streaming, ...")
    p.add_argument("--section", help="only the section whose heading contains this text")
    p.set_defaults(run=_guidance)
    p = commands.add_parser("release", help="the course without its solutions, for the learners of a class")
    p.add_argument("out", help="a new (or empty) folder")
    p.set_defaults(run=_release)
    p = commands.add_parser("grade", help="grade a folder of learners' notebooks")
    p.add_argument("folder", nargs="?", help="the notebooks to grade (any names, nested folders allowed)")
    p.add_argument("--out", default="gradebook.csv", help="the gradebook CSV (rows are added as they come; "
                   "a run resumes where an interrupted one stopped)")
    p.add_argument("--feedback", metavar="DIR", help="write one HTML page per learner and lesson into DIR")
    p.add_argument("--jobs", type=int, metavar="N", help="notebooks graded at once (default: one per core)")
    p.add_argument("--max-jobs", type=int, metavar="M", help="more at once while some only wait, up to M "
                   "(default 2 x --jobs; set it to --jobs to turn this off)")
    p.add_argument("--shard", metavar="K/N", help="grade only part K of N (deterministic; join the parts with --merge)")
    p.add_argument("--merge", nargs="+", metavar="PART", help="join gradebook parts into --out instead of grading")
    p.add_argument("--report", metavar="HTML", help="the class report for the instructor (default: next to --out, "
                   "gradebook.csv → gradebook-report.html)")
    p.add_argument("--canvas", metavar="CSV", help="also write a file for Canvas's gradebook import")
    p.add_argument("--moodle", metavar="CSV", help="also write a file for Moodle's CSV grade import")
    p.add_argument("--extra-checks", metavar="DIR", help="instructor-only checks: DIR/lessonNN.py, never shown to learners")
    p.add_argument("--timeout", type=float, metavar="S", help="seconds per cell (default 30; a check cell gets at least its check's limit + 15 s)")
    p.add_argument("--notebook-timeout", type=float, metavar="S", help="seconds per notebook in all (default 900)")
    p.add_argument("--regrade", action="store_true", help="grade every notebook again, even those already in --out")
    p.add_argument("--solutions", metavar="DIR", help=argparse.SUPPRESS)
    p.add_argument("--ahead", type=int, metavar="M", help=argparse.SUPPRESS)
    p.add_argument("--sandbox", choices=("auto", "required", "off"), default="auto",
                   help="seal each submission off with bubblewrap (auto: where available, else say loudly what is "
                        "not isolated; required: refuse to run without it)")
    p.add_argument("--no-fork", action="store_true", help="start each kernel as its own process (slower)")
    p.add_argument("--quiet", action="store_true", help="no line per notebook")
    p.set_defaults(run=_grade)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except build.BuildError as exc:
        print(f"course {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
