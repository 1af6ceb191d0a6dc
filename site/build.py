"""Build the course website: one page per lesson, as a learner sees it, and a syllabus page.

    python site/build.py [--out _build/site] [--work _build/site-work] [--cache _build/site-cache] [--jobs 2]

1. The learner copies in notebooks/ (never solutions/) are executed in fresh kernels, a few at
   a time, errors allowed: their check cells fail, as they do for a learner who has not started.
   Each kernel records progress into a throw-away file (COURSE_PROGRESS_FILE), works in a
   temporary folder and imports this folder's `checks` and `course`.
2. Executed notebooks are cached under --cache, keyed by the notebook and the course's code
   (checks/, course/): an unchanged lesson is not run again. Its run time is kept with it.
3. The syllabus (index.md) is written from the notebooks themselves: title, first paragraph,
   run time. A new lesson NN_*.ipynb in notebooks/ appears by itself.
4. Sphinx (MyST-NB, sphinx-book-theme; configuration in site/conf.py) renders the pages without
   executing anything and without the network.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

SITE = Path(__file__).resolve().parent
ROOT = SITE.parent
NOTEBOOKS = ROOT / "notebooks"
LESSON = re.compile(r"^\d\d_\w+\.ipynb$")
CELL_TIMEOUT_S = 120  # a check's own limit is far below this


def lessons(folder: Path = NOTEBOOKS) -> list[Path]:
    return sorted(p for p in folder.glob("*.ipynb") if LESSON.match(p.name))


def code_key() -> str:
    """A hash of the code whose behaviour the outputs show: a change there runs the lessons again."""
    digest = hashlib.sha256(sys.version.encode())
    # Every module, in the packages' sub-packages too (checks/lesson07/, course/grade/).
    for path in sorted([*ROOT.glob("checks/**/*.py"), *ROOT.glob("course/**/*.py")]):
        if path.name == "links.py":  # addresses only: a new hub URL needs no new outputs
            continue
        digest.update(path.relative_to(ROOT).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()


def kernel_env(progress_file: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COURSE_FULL_ERRORS", "COURSE_ROOT", "JPY_PARENT_PID")}
    env["COURSE_PROGRESS_FILE"] = str(progress_file)  # never a learner's .course/progress.json
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


async def execute(path: Path, env: dict[str, str], gate: asyncio.Semaphore, log) -> tuple[dict, float]:
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    async with gate:
        with tempfile.TemporaryDirectory(prefix=f"site-{path.stem}-") as cwd:
            client = NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3", allow_errors=True,
                                    resources={"metadata": {"path": cwd}})
            start = time.perf_counter()
            await client.async_execute(env=env, stderr=log)  # the kernels' own chatter goes to the log
            seconds = time.perf_counter() - start
    return notebook, seconds


async def execute_all(paths: list[Path], cache: Path, jobs: int, log: Path) -> dict[str, tuple[Path, float]]:
    """Executed copy and run time of every lesson, from the cache when the lesson is unchanged."""
    import nbformat

    cache.mkdir(parents=True, exist_ok=True)
    code = code_key()
    results, todo = {}, []
    for path in paths:
        key = hashlib.sha256(code.encode() + path.read_bytes()).hexdigest()[:16]
        cached = cache / f"{path.stem}.{key}.ipynb"
        if cached.exists():
            seconds = json.loads(cached.read_text())["metadata"]["course"]["site"]["run_s"]
            results[path.stem] = (cached, seconds)
        else:
            todo.append((path, cached))
    if todo:
        gate = asyncio.Semaphore(jobs)
        with tempfile.TemporaryDirectory(prefix="site-progress-") as folder, log.open("w") as stderr:
            env = kernel_env(Path(folder) / "progress.json")
            runs = await asyncio.gather(*(execute(path, env, gate, stderr) for path, _ in todo))
        for (path, cached), (notebook, seconds) in zip(todo, runs):
            notebook.metadata.setdefault("course", {})["site"] = {"run_s": round(seconds, 1), "jobs": jobs}
            for old in cache.glob(f"{path.stem}.*.ipynb"):
                old.unlink()
            partial = cached.with_suffix(".tmp")
            nbformat.write(notebook, partial)
            partial.replace(cached)  # a build stopped halfway leaves no half-written cache entry
            results[path.stem] = (cached, round(seconds, 1))
            print(f"  ran {path.name} in {seconds:.1f} s")
    return results


def summary(path: Path) -> tuple[str, str]:
    """(title, first paragraph) of a lesson, from its first markdown cell."""
    notebook = json.loads(path.read_text())
    source = next("".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "markdown")
    blocks = [b.strip() for b in source.split("\n\n") if b.strip()]
    title = blocks[0].lstrip("#").strip()
    paragraph = next((b for b in blocks[1:] if not b.startswith(("#", "-", "1.", "|", "`"))), "")
    paragraph = " ".join(paragraph.split())
    return title, paragraph[:-1] + "." if paragraph.endswith(":") else paragraph  # a list followed it


def syllabus(paths: list[Path], runs: dict[str, tuple[Path, float]], jobs: int) -> str:
    rows = ["| # | lesson | what it teaches | run time |", "|---|---|---|---|"]
    for path in paths:
        title, paragraph = summary(path)
        name = title.partition(" · ")[2] or title
        teaches = paragraph.replace("|", "\\|")
        rows.append(f"| {path.name[:2]} | [{name}]({path.name}) | {teaches} | {runs[path.stem][1]:.0f} s |")
    note = (f"\n\n*Run time*: every cell of the learner's copy, executed in a fresh kernel when this site was "
            f"built ({jobs} at a time); the check cells fail there, as they do before you write the exercises.")
    return "\n".join(rows) + note


def stage(paths: list[Path], runs: dict[str, tuple[Path, float]], work: Path, jobs: int) -> Path:
    source = work / "src"
    if source.exists():
        shutil.rmtree(source)
    source.mkdir(parents=True)
    for path in paths:
        shutil.copyfile(runs[path.stem][0], source / path.name)
    index = (SITE / "index.md").read_text().replace("<!-- syllabus -->", syllabus(paths, runs, jobs))
    (source / "index.md").write_text(index)
    return source


def build(out: Path, work: Path, cache: Path, jobs: int) -> float:
    start = time.perf_counter()
    paths = lessons()
    print(f"==> executing {len(paths)} learner notebooks ({jobs} at a time; unchanged ones come from {cache})")
    work.mkdir(parents=True, exist_ok=True)
    runs = asyncio.run(execute_all(paths, cache, jobs, work / "kernels.log"))
    source = stage(paths, runs, work, jobs)
    print(f"==> rendering with Sphinx into {out}")
    from sphinx.cmd.build import build_main

    if out.exists():
        shutil.rmtree(out)
    status = build_main(["-b", "html", "-q", "-c", str(SITE), "-d", str(work / "doctrees"), str(source), str(out)])
    if status:
        raise SystemExit(f"sphinx-build failed ({status})")
    for source_map in out.glob("_static/**/*.map"):
        source_map.unlink()  # the theme's source maps: half the site, read only by a debugger
    (out / ".nojekyll").touch()  # GitHub Pages would hide _static/ and _images/ otherwise
    seconds = time.perf_counter() - start
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"==> site ready: {out / 'index.html'} ({size / 1e6:.1f} MB, {seconds:.0f} s)")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "_build" / "site")
    parser.add_argument("--work", type=Path, default=ROOT / "_build" / "site-work")
    parser.add_argument("--cache", type=Path, default=ROOT / "_build" / "site-cache")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    build(args.out.resolve(), args.work.resolve(), args.cache.resolve(), args.jobs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
