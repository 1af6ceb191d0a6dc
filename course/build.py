"""Make the learner notebooks from the solution notebooks: the single source of the course.

    python -m checks.build            # rewrite notebooks/ from solutions/
    python -m checks.build --check    # exit 1 if notebooks/ is not what the build makes
    python -m checks.build --reset 01 # give a learner a fresh copy of lesson 01 (old one backed up)

In a code cell, the lines between `### BEGIN SOLUTION` and `### END SOLUTION` (nbgrader's
markers) become a stub: the region's leading comment lines (the task, in words) are kept,
and the code is replaced by `# YOUR CODE HERE`, followed inside a function by
`raise NotImplementedError(...)` and inside a class or other block by `pass`, so the cell
still runs and the check reports what is missing.
Outputs and execution counts are cleared; everything else is copied unchanged.
Notebooks are read and written as JSON in nbformat's own layout, so the build is fast.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS, NOTEBOOKS, BACKUPS = ROOT / "solutions", ROOT / "notebooks", ROOT / ".backups"


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
    return notebook


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
    """What differs between notebooks/ and what the build would make; empty when in sync."""
    expected = expected_files(solutions)
    present = {path.name for path in notebooks.glob("*.ipynb")}
    problems = [f"{name}: missing from {notebooks.name}/" for name in sorted(set(expected) - present)]
    problems += [f"{name}: has no solution in {solutions.name}/" for name in sorted(present - set(expected))]
    problems += [
        f"{name}: differs from what the build makes of {solutions.name}/{name}"
        for name in sorted(set(expected) & present)
        if (notebooks / name).read_text(encoding="utf-8") != expected[name]
    ]
    return problems


def build(solutions: Path = SOLUTIONS, notebooks: Path = NOTEBOOKS) -> list[str]:
    notebooks.mkdir(exist_ok=True)
    written = []
    for name, text in expected_files(solutions).items():
        target = notebooks / name
        if not target.exists() or target.read_text(encoding="utf-8") != text:
            target.write_text(text, encoding="utf-8")
            written.append(name)
    return written


def reset(lesson: str, solutions: Path = SOLUTIONS, notebooks: Path = NOTEBOOKS, backups: Path = BACKUPS) -> Path:
    """Write a fresh learner copy of the lesson whose name starts with `lesson`; back up the old one."""
    matches = sorted(solutions.glob(f"{lesson}*.ipynb"))
    if len(matches) != 1:
        names = ", ".join(p.stem for p in sorted(solutions.glob("*.ipynb")))
        raise BuildError(f"no single lesson starts with {lesson!r}; lessons: {names}")
    target = notebooks / matches[0].name
    if target.exists():
        backups.mkdir(exist_ok=True)
        backup = backups / f"{target.stem}.{time.strftime('%Y%m%d-%H%M%S')}.ipynb"
        shutil.copy2(target, backup)
        print(f"your previous copy is saved as {backup.relative_to(backups.parent)}")
    target.write_text(expected_files(solutions)[matches[0].name], encoding="utf-8")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m checks.build", description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--check", action="store_true", help="report drift, write nothing")
    group.add_argument("--reset", metavar="LESSON", help="fresh learner copy of one lesson, e.g. 01")
    args = parser.parse_args(argv)
    try:
        if args.check:
            problems = drift()
            for problem in problems:
                print(problem)
            if problems:
                print("notebooks/ is out of date: run `python -m checks.build`.")
            return 1 if problems else 0
        if args.reset:
            print(f"fresh copy written: {reset(args.reset).relative_to(ROOT)}")
            return 0
        written = build()
        print(f"wrote {len(written)} learner notebook(s)" + (f": {', '.join(written)}" if written else ""))
        return 0
    except BuildError as exc:
        print(f"build error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
