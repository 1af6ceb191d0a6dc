"""The grading plan: the learner's cells in their order, with the course's own check cells in
place of theirs (matched by cell id, re-inserted when deleted)."""

from __future__ import annotations

from dataclasses import dataclass

from .lessons import CHECK_CALL, CheckCell, Lesson, _source, _tags

@dataclass
class Step:
    source: str
    check: CheckCell | None = None  # set for the course's check cells
    index: int = -1  # the learner's cell index (-1: inserted)
    nonce: str = ""  # a check cell's: its marks carry it, so no earlier output can pass for them


def grading_step(cell: CheckCell, lesson: Lesson, index: int) -> Step:
    import secrets

    nonce = secrets.token_hex(12)
    return Step(grading_source(cell, lesson, nonce), cell, index, nonce)


def grading_source(cell: CheckCell, lesson: Lesson, nonce: str = "") -> str:
    def call(match):
        name = match.group(1)
        extra = lesson.extra if name in lesson.extra_names else None
        return f"await __course_check__({cell.module!r}, {name!r}, {extra!r}, {nonce!r})("

    return "from course.grade.in_kernel import kernel_check as __course_check__\n" + CHECK_CALL.sub(call, cell.source)


def plan(notebook: dict, lesson: Lesson) -> list[Step]:
    """The cells to run: the learner's code cells in their order; each check cell of the course
    replaces the learner's cell with its id (whatever the learner made of it), or, if deleted, goes
    in after the nearest cell that preceded it in the solution. Cells tagged `check` that are not
    the course's (copies) are not run."""
    cells = [c for c in notebook.get("cells", []) if isinstance(c, dict)]
    ids = [c.get("id") for c in cells]
    steps: list[Step] = []
    placed: set[str] = set()
    after: dict[int, list[CheckCell]] = {}
    for cell in lesson.check_cells.values():
        if cell.id in ids:
            continue
        anchor = next((ids.index(a) for a in cell.anchor if a in ids), None)
        if anchor is None and not any(ids):  # a notebook without ids: its cell tagged `check` with the call
            anchor = next((i for i, c in enumerate(cells) for name in cell.names
                           if "check" in _tags(c) and f"{name}(" in _source(c)), None)
            if anchor is not None:
                cells[anchor] = dict(cells[anchor], cell_type="skip")
        after.setdefault(anchor if anchor is not None else len(cells) - 1, []).append(cell)
    for index, cell in enumerate(cells):
        cid = cell.get("id")
        if cid in lesson.check_cells and cid not in placed:
            placed.add(cid)
            steps.append(grading_step(lesson.check_cells[cid], lesson, index))
        elif cell.get("cell_type") == "code" and "check" not in _tags(cell) and _source(cell).strip():
            steps.append(Step(_source(cell), None, index))
        for inserted in after.get(index, []):
            steps.append(grading_step(inserted, lesson, -1))
    if not cells:
        steps += [grading_step(c, lesson, -1) for c in after.get(-1, [])]
    return steps
