"""Make the learner notebooks from the solution notebooks: the single source of the course.

    course build            # rewrite notebooks/ from solutions/ (a learner's changed copy is kept)
    course build --check    # exit 1 if notebooks/ is not what the build makes
    course reset 01         # a fresh copy of lesson 01 (the old one is kept in backups/)

In a code cell, the lines between `### BEGIN SOLUTION` and `### END SOLUTION` (nbgrader's
markers) become a stub: the region's leading comment lines (the task, in words) are kept,
and the code is replaced by `# YOUR CODE HERE`, followed inside a function by
`raise NotImplementedError(...)` and inside a class or other block by `pass`, so the cell
still runs and the check reports what is missing.
Outputs and execution counts are cleared; everything else is copied unchanged.
Notebooks are read and written as JSON in nbformat's own layout, so the build is fast.

Nothing a learner wrote is lost: each generated notebook carries a stamp (metadata
`course.build`, a hash of the notebook itself), so a notebook whose content no longer
matches its stamp was changed after the build — run, edited or saved by a learner — and
is copied to `backups/` before anything replaces it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

from .paths import BACKUPS, NOTEBOOKS, ROOT, SOLUTIONS  # noqa: F401  (ROOT: imported from here by tests)

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"


class BuildError(ValueError):
    pass


_BLOCKS = ("def ", "async def ", "class ", "if ", "elif ", "else", "for ", "async for ", "while ", "with ",
           "async with ", "try", "except", "finally", "match ", "case ")


def _enclosing(lines: list[str], index: int, indent: str) -> str:
    """The header of the block the region stands in (a multi-line signature's `def` line)."""
    for line in reversed(lines[:index]):
        stripped = line.strip()
        if stripped.startswith(_BLOCKS) and len(line) - len(line.lstrip()) < len(indent):
            return stripped
    return ""


def _stub(region: list[str], indent: str, header: str) -> list[str]:
    """The learner's version of one solution region."""
    comments = []
    for line in region:
        if line.strip().startswith("#"):
            comments.append(line if line.startswith(indent) else indent + line.lstrip())
        else:
            break
    stub = comments + [f"{indent}# YOUR CODE HERE\n"]
    if header.startswith(("def ", "async def ")):  # a function still runs, and fails its check clearly
        stub.append(f'{indent}raise NotImplementedError("this exercise is not written yet")\n')
    elif indent:  # a class body or another block must not be empty
        stub.append(f"{indent}pass\n")
    return stub


def strip_solutions(source: str, where: str = "cell") -> str:
    lines = source.splitlines(keepends=True)
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.strip() == BEGIN:
            indent = line[: len(line) - len(line.lstrip())]
            try:
                end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() in (END, BEGIN))
            except StopIteration:
                raise BuildError(f"{where}: {BEGIN} without {END}") from None
            if lines[end].strip() == BEGIN:
                raise BuildError(f"{where}: {BEGIN} inside another solution region")
            out += _stub(lines[i + 1 : end], indent, _enclosing(lines, i, indent) if indent else "")
            i = end + 1
            continue
        if line.strip() == END:
            raise BuildError(f"{where}: {END} without {BEGIN}")
        out.append(line)
        i += 1
    text = "".join(out)
    return text if source.endswith("\n") else text.rstrip("\n")


def _source(cell) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def learner_notebook(solution: dict, name: str = "notebook") -> dict:
    """The learner copy of one solution notebook (a new dict; the input is not changed)."""
    notebook = json.loads(json.dumps(solution))
    for index, cell in enumerate(notebook["cells"]):
        if cell["cell_type"] != "code":
            continue
        cell["source"] = strip_solutions(_source(cell), f"{name}, cell {index}")
        cell["outputs"] = []
        cell["execution_count"] = None
        cell.get("metadata", {}).pop("execution", None)
    lesson = name.split("_", 1)[0] if name[:2].isdigit() else ""
    exercises = [solution["cells"][i].get("id") for i in exercise_cells(solution)]
    notebook.setdefault("metadata", {})["course"] = {"lesson": lesson, "build": ""}
    if exercises and all(exercises):  # a release has no solutions: reset finds an exercise by these
        notebook["metadata"]["course"]["exercises"] = exercises
    notebook["metadata"]["course"]["build"] = _stamp(notebook)
    return notebook


def _stamp(notebook: dict) -> str:
    """A hash of the notebook with its own stamp blanked: the same text always gives the same stamp."""
    blank = json.loads(json.dumps(notebook))
    blank.setdefault("metadata", {}).setdefault("course", {})["build"] = ""
    return hashlib.sha256(dumps(blank).encode()).hexdigest()[:16]


def as_built(text: str) -> bool:
    """True when a notebook file is exactly what some build wrote (its stamp still matches)."""
    try:
        notebook = json.loads(text)
        stamp = notebook["metadata"]["course"]["build"]
    except (ValueError, KeyError, TypeError):
        return False
    return bool(stamp) and stamp == _stamp(notebook) and dumps(notebook) == text


def dumps(notebook: dict) -> str:
    """nbformat's own on-disk layout, so files written here match files saved by Jupyter."""
    return json.dumps(notebook, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def expected_files(solutions: Path = SOLUTIONS) -> dict[str, str]:
    """File name → the text the build writes for it."""
    return {
        path.name: dumps(learner_notebook(json.loads(path.read_text(encoding="utf-8")), path.name))
        for path in sorted(solutions.glob("*.ipynb"))
    }


def drift(solutions: Path = SOLUTIONS, notebooks: Path = NOTEBOOKS) -> list[str]:
    """What differs between notebooks/ and what the build would make; empty when in sync.

    A notebook still as some build made it means solutions/ changed since (an author's drift);
    one that no longer matches its stamp was edited after the build (a learner's work).
    """
    expected = expected_files(solutions)
    present = {path.name for path in notebooks.glob("*.ipynb")}
    problems = [f"{name}: missing from {notebooks.name}/ (run `course build`)" for name in sorted(set(expected) - present)]
    problems += [f"{name}: has no solution in {solutions.name}/" for name in sorted(present - set(expected))]
    for name in sorted(set(expected) & present):
        text = (notebooks / name).read_text(encoding="utf-8")
        if text == expected[name]:
            continue
        if as_built(text):
            problems.append(f"{name}: {solutions.name}/{name} changed since the build: run `course build` and commit "
                            f"{notebooks.name}/{name}")
        else:
            problems.append(f"{name}: edited after the build (a learner's work, or a hand edit): `course build` keeps "
                            f"a copy in backups/ and regenerates it; authors edit {solutions.name}/ instead")
    return problems


def keep_copy(path: Path, backups: Path = BACKUPS) -> Path:
    """Copy `path` to `backups/<stem>.<time>.ipynb` (never overwriting an earlier copy)."""
    backups.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    backup = backups / f"{path.stem}.{stamp}{path.suffix}"
    counter = 1
    while backup.exists():
        counter += 1
        backup = backups / f"{path.stem}.{stamp}-{counter}{path.suffix}"
    shutil.copy2(path, backup)
    return backup


def _write(target: Path, text: str, backups: Path) -> Path | None:
    """Write `text` to `target`; first keep a copy of a target a learner changed. Returns the copy."""
    backup = None
    if target.exists():
        old = target.read_text(encoding="utf-8")
        if old == text:
            return None
        if not as_built(old):
            backup = keep_copy(target, backups)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(target)  # atomic: an interrupted build never leaves half a notebook
    return backup


def build(solutions: Path = SOLUTIONS, notebooks: Path = NOTEBOOKS, backups: Path = BACKUPS) -> list[str]:
    """Regenerate notebooks/; returns the names written. A changed notebook is kept first (printed)."""
    notebooks.mkdir(exist_ok=True)
    written = []
    for name, text in expected_files(solutions).items():
        target = notebooks / name
        if target.exists() and target.read_text(encoding="utf-8") == text:
            continue
        backup = _write(target, text, backups)
        if backup is not None:
            print(f"{name} had your changes: they are kept in {_shown(backup)}")
        written.append(name)
    return written


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def _lesson_file(lesson: str, solutions: Path) -> Path:
    lesson = str(lesson).strip()
    lesson = lesson.zfill(2) if lesson.isdigit() else lesson  # 1 -> "01"
    matches = sorted(solutions.glob(f"{lesson}*.ipynb")) if lesson else []
    if len(matches) != 1:
        names = ", ".join(p.stem for p in sorted(solutions.glob("*.ipynb")))
        raise BuildError(f"no single lesson starts with {lesson!r}; lessons: {names}")
    return matches[0]


def exercise_cells(notebook: dict) -> list[int]:
    """Indexes of the cells that hold an exercise (a solution region, or in a learner copy the
    cells its build named), in order."""
    found = [i for i, cell in enumerate(notebook["cells"]) if cell["cell_type"] == "code" and BEGIN in _source(cell)]
    if found:
        return found
    named = notebook.get("metadata", {}).get("course", {}).get("exercises") or []
    return [i for i, cell in enumerate(notebook["cells"]) if cell.get("id") in named]


def reset(lesson: str, exercise: int | None = None, solutions: Path = SOLUTIONS, notebooks: Path = NOTEBOOKS,
          backups: Path = BACKUPS) -> tuple[Path, Path | None]:
    """A fresh learner copy of one lesson, or of one exercise cell in it (`exercise` counts from 1).

    Returns (the notebook written, the copy kept of the old one or None).
    """
    source = _lesson_file(lesson, solutions)
    fresh = learner_notebook(json.loads(source.read_text(encoding="utf-8")), source.name)
    target = notebooks / source.name
    if exercise is None or not target.exists():
        if exercise is not None:
            print(f"{_shown(target)} did not exist: the whole lesson is written fresh")
        notebooks.mkdir(exist_ok=True)
        return target, _write(target, dumps(fresh), backups)
    solution = json.loads(source.read_text(encoding="utf-8"))
    regions = exercise_cells(solution)
    if not 1 <= exercise <= len(regions):
        raise BuildError(f"lesson {source.stem} has exercises 1 to {len(regions)}, not {exercise}")
    cell_id = solution["cells"][regions[exercise - 1]].get("id")
    try:
        mine = json.loads(target.read_text(encoding="utf-8"))
    except ValueError:
        raise BuildError(f"{_shown(target)} is not a readable notebook: reset the whole lesson instead") from None
    fresh_cell = next(cell for cell in fresh["cells"] if cell.get("id") == cell_id)
    cells = mine.get("cells", [])
    for index, cell in enumerate(cells):
        if cell.get("id") == cell_id:
            cells[index] = fresh_cell
            break
    else:
        raise BuildError(f"exercise {exercise}'s cell is no longer in {_shown(target)}: reset the whole lesson instead")
    # The exercise's check cells lose their old report: a failing verdict under a fresh stub misleads.
    exercise_ids = {solution["cells"][i].get("id") for i in regions}
    for cell in cells[index + 1:]:
        if cell.get("id") in exercise_ids:  # the next exercise's cells are not this one's
            break
        if "check" in cell.get("metadata", {}).get("tags", []):
            cell["outputs"], cell["execution_count"] = [], None
    return target, _write(target, dumps(mine), backups)


RELOAD = ("If the notebook is open in JupyterLab:\n"
          "  1. File > Reload Notebook from Disk, and confirm with Reload\n"
          "     (if JupyterLab asks \"File Changed\" instead, choose Revert, not Overwrite);\n"
          "  2. Kernel > Restart Kernel.")


def reset_messages(lesson: str, exercise: int | None = None, **paths) -> list[str]:
    """Reset (as `reset`) and say what happened, in the words a learner needs next."""
    source = _lesson_file(lesson, paths.get("solutions", SOLUTIONS))
    target = paths.get("notebooks", NOTEBOOKS) / source.name
    before = target.read_bytes() if target.exists() else None
    target, backup = reset(lesson, exercise, **paths)
    what = f"exercise {exercise} of {target.name}" if exercise else target.name
    if before is not None and target.read_bytes() == before:
        lines = [f"{_shown(target)} on disk already has a fresh {what}: nothing was written."]
    else:
        lines = [f"Fresh copy of {what} written to {_shown(target)}."]
    if backup:
        lines.append(f"Your previous copy is kept in {_shown(backup)}.")
    elif before is not None:
        # What is on disk is the course's own build: any typing the browser holds was never saved.
        lines.append("Nothing of yours was saved on disk, so no copy was kept (work typed but not saved "
                     "lives only in the browser: save with Ctrl+S before a reset to keep a copy).")
    lines.append(RELOAD)
    return lines


if __name__ == "__main__":  # `python -m course.build`: the same as `course build` (run as __main__, no cycle)
    from course.cli import main

    sys.exit(main(["build", *sys.argv[1:]]))
