"""`course release OUT/`: what the learners of a class get — the course without its solutions.

    course release ../class-2027/

OUT/ receives the learner notebooks as the build makes them (`notebooks/`, and the same copies in
`lessons/`, which `course reset` and `course progress` read where there is no `solutions/`), the
`checks` and `course` packages, the Binder files and what `make course` needs. Not copied:
`solutions/`, tests, benchmarks, the site's sources, instructor examples and CI files. Before it
finishes, every notebook and document written is searched for the solution regions' lines; one
found stops it (learners can read the `checks` package's source: it is no place for answers).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .build import BEGIN, END, BuildError, expected_files
from .paths import ROOT, SOLUTIONS

COPIED = ("checks", "course", "binder", "pyproject.toml", "Makefile", "README.md", ".gitignore")
SKIPPED = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", ".ipynb_checkpoints")


def release(out: Path, root: Path = ROOT, solutions: Path = SOLUTIONS) -> list[str]:
    """Write the learners' copy of the course into `out` (new or empty); return what was written."""
    out, root = Path(out).resolve(), root.resolve()
    inside = out == root or (root in out.parents and out.relative_to(root).parts[0] in
                             (*COPIED, "notebooks", "lessons", "solutions"))
    if inside:
        raise BuildError(f"{out} is part of the course itself: release into a folder of its own")
    if out.exists() and any(out.iterdir()):
        raise BuildError(f"{out} is not empty: release into a new folder")
    built = expected_files(solutions)
    out.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        source = root / name
        if source.is_dir():
            shutil.copytree(source, out / name, ignore=SKIPPED)
        elif source.exists():
            shutil.copy2(source, out / name)
    for folder in ("notebooks", "lessons"):
        (out / folder).mkdir()
        for name, text in built.items():
            (out / folder / name).write_text(text, encoding="utf-8")
    found = leaks(out, solution_lines(solutions, built))
    if found:
        shutil.rmtree(out)
        raise BuildError(f"a solution's code would have been released ({found[0]}); nothing was written")
    return sorted(p.name for p in out.iterdir())


def solution_lines(solutions: Path, built: dict[str, str]) -> set[str]:
    """The solution regions' lines of 12 characters or more that the learner copies do not also show
    (prose and demos repeat some on purpose: `task.cancel()` is no secret)."""
    learner = " ".join(_source_words(json.loads(text)) for text in built.values())
    found = set()
    for path in sorted(solutions.glob("*.ipynb")):
        for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
            inside = False
            for line in "".join(cell["source"]).splitlines():
                stripped = line.strip()
                if stripped in (BEGIN, END):
                    inside = stripped == BEGIN
                elif inside and len(stripped) >= 12 and not stripped.startswith("#"):
                    words = " ".join(stripped.split())
                    if words not in learner:
                        found.add(words)
    return found


def leaks(folder: Path, lines: set[str]) -> list[str]:
    found = []
    for path in sorted(folder.rglob("*")):
        # Notebooks and documents: the checks' own code shares lines like `except TimeoutError:`.
        if not path.is_file() or path.suffix not in (".ipynb", ".md", ".txt", ".html", ".json"):
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        # a notebook as a learner reads it, not its JSON escapes
        text = _source_words(json.loads(text)) if path.suffix == ".ipynb" else " ".join(text.split())
        found += [f"{path.relative_to(folder)}: {line}" for line in lines if line in text]
    return found


def _source_words(notebook: dict) -> str:
    return " ".join(" ".join("".join(cell["source"]).split()) for cell in notebook["cells"])
