"""The course's own commands (`course build | reset | progress | grade`) and their notebook-side
equivalents; the autograder is the `checks` package.

In a notebook:
    from course import reset, show_progress
    show_progress()         # every lesson with its ticks
    reset("01", exercise=2) # a fresh exercise 2 of lesson 01 (your copy is kept in .backups/)
"""

from __future__ import annotations


def show_progress(lesson: str | int | None = None):
    """The course's contents with a tick per passed exercise (or one lesson's)."""
    from .progress import show

    return show(lesson)


def reset(lesson: str | int, exercise: int | None = None) -> None:
    """A fresh copy of a lesson (or one exercise of it); says where your copy is kept and what to do next."""
    from . import build
    from .cli import RELOAD

    try:
        target, backup = build.reset(str(lesson).zfill(2), exercise)
    except build.BuildError as exc:
        print(f"reset: {exc}")
        return
    what = f"exercise {exercise} of {target.name}" if exercise else target.name
    print(f"Fresh copy of {what} written.")
    print(f"Your previous copy is kept in {build._shown(backup)}." if backup else "There was nothing of yours to keep.")
    print(RELOAD)
