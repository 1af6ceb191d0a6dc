"""The course's own commands (`course build | reset | progress | grade`) and their notebook-side
equivalents; the autograder is the `checks` package.

In a notebook:
    from course import guidance, reset, show_progress
    show_progress()         # every lesson with its ticks
    guidance("streaming")   # FastAPI's own guidance, shipped in the package (a hidden folder Lab cannot open)
    reset("01", exercise=2) # a fresh exercise 2 of lesson 01 (your saved copy is kept in backups/)
"""

from __future__ import annotations


def show_progress(lesson: str | int | None = None):
    """The course's contents with a tick per passed exercise (or one lesson's)."""
    from .progress import show

    return show(lesson)


def reset(lesson: str | int, exercise: int | None = None) -> None:
    """A fresh copy of a lesson (or one exercise of it) on disk; your saved copy is kept in backups/.

    Save first (Ctrl+S): the copy kept is what is on disk, not what the browser holds.
    """
    from . import build

    try:
        print("\n".join(build.reset_messages(lesson, exercise)))
    except build.BuildError as exc:
        print(f"reset: {exc}")


def guidance(topic: str = "SKILL", section: str | None = None) -> None:
    """FastAPI's own guidance on `topic` ("SKILL", "dependencies", "streaming", ...), rendered here.

    It ships inside the installed package, in a hidden folder JupyterLab cannot open.
    `section`: only the part under the heading that contains this text.
    """
    from . import fastapi_guidance

    try:
        fastapi_guidance.show(topic, section)
    except fastapi_guidance.GuidanceNotFound as exc:
        print(f"guidance: {exc}")
