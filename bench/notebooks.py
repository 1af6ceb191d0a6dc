"""How long the course takes to run, and what its checks cost beyond the work they time.

    python bench/notebooks.py [solutions/01_event_loop.ipynb ...]

Prints, for each solution notebook: seconds to execute it in a fresh kernel, the floor (kernel
start + the course's imports, measured in this same run) and the ratio; then, for each check
cell: its wall time, the time spent inside the learner's requests (the intentional waits the
check reports), and the difference: the check's own latency. A benchmark, not a test.
"""

from __future__ import annotations

import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
FLOOR_CELL = "import fastapi, httpx, asgi_lifespan, pydantic\nimport checks"


def run(notebook, cwd: Path) -> float:
    start = time.perf_counter()
    NotebookClient(notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return time.perf_counter() - start


def cell_seconds(cell) -> float:
    timing = cell.metadata.get("execution", {})
    busy, idle = timing.get("iopub.status.busy"), timing.get("iopub.status.idle")
    if not (busy and idle):
        return float("nan")
    return (datetime.fromisoformat(idle.replace("Z", "+00:00")) - datetime.fromisoformat(busy.replace("Z", "+00:00"))).total_seconds()


def check_metrics(cell) -> dict:
    for output in cell.outputs:
        if output.get("output_type") == "display_data" and "course-check" in output.get("metadata", {}):
            return output["metadata"]["course-check"]
    return {}


def main(paths: list[str]) -> int:
    notebooks = [Path(p) for p in paths] or sorted((ROOT / "solutions").glob("*.ipynb"))
    floors = [run(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(FLOOR_CELL)]), ROOT) for _ in range(3)]
    floor = statistics.median(floors)  # one slow kernel start should not set it
    print(f"floor (kernel start + imports): {floor:.2f} s  (runs: {', '.join(f'{f:.2f}' for f in floors)})\n")
    print(f"{'notebook':<24} {'seconds':>8} {'÷ floor':>8}")
    rows, total, slowest = [], 0.0, []
    for path in notebooks:
        notebook = nbformat.read(path, as_version=4)
        seconds = run(notebook, path.parent)
        total += seconds
        print(f"{path.stem:<24} {seconds:8.2f} {seconds / floor:8.1f}")
        slowest.append((path.stem, sorted(
            ((cell_seconds(cell), index, cell.source.splitlines()[0] if cell.source else "")
             for index, cell in enumerate(notebook.cells) if cell.cell_type == "code"), reverse=True)[:3]))
        for index, cell in enumerate(notebook.cells):
            if "check" in cell.metadata.get("tags", []):
                metrics = check_metrics(cell)
                wall = cell_seconds(cell)
                waits = metrics.get("in_requests_s", 0.0)
                rows.append((path.stem, index, wall, waits, metrics.get("passed")))
    print(f"{'all notebooks':<24} {total:8.2f}\n")
    print(f"{'check cell':<30} {'wall s':>7} {'waits s':>8} {'own s':>7}  passed")
    for stem, index, wall, waits, passed in rows:
        print(f"{stem + ' #' + str(index):<30} {wall:7.3f} {waits:8.3f} {wall - waits:7.3f}  {passed}")
    # Where a notebook's time goes: demos that wait on purpose (sleeps, slow stand-in services) are
    # expected here; a slow cell that does not wait is worth a look.
    print("\nslowest cells per notebook (seconds, cell, first line)")
    for stem, cells in slowest:
        print(f"{stem}: " + "; ".join(f"{wall:.2f} #{index} {line[:40]!r}" for wall, index, line in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
