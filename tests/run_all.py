"""Run a notebook the way JupyterLab's "Run All" does: every cell's execute request sent at once.

The kernel queues them (ipykernel 7 keeps one asyncio task per queued request on the loop the
learner's code runs on). nbclient and nbval send one cell at a time and never see what code
that touches other tasks does to the queue; this does.
"""

from __future__ import annotations

import queue
import time
from dataclasses import dataclass, field
from pathlib import Path

from jupyter_client.manager import start_new_kernel


@dataclass
class CellRun:
    index: int
    tags: list[str]
    status: str | None = None  # "ok" / "error" / None: never answered
    errors: list[tuple[str, str]] = field(default_factory=list)  # (ename, evalue)
    course_checks: list[dict] = field(default_factory=list)  # metadata "course-check" seen


def run_all(cells: list[dict], cwd: Path, timeout_s: float = 240.0) -> list[CellRun]:
    """Send every code cell at once; return what each answered within `timeout_s` in all."""
    manager, client = start_new_kernel(kernel_name="python3", cwd=str(cwd))
    try:
        runs: dict[str, CellRun] = {}
        for index, cell in enumerate(cells):
            if cell["cell_type"] != "code":
                continue
            source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            msg_id = client.execute(source, store_history=True, allow_stdin=False, stop_on_error=False)
            runs[msg_id] = CellRun(index, cell.get("metadata", {}).get("tags", []))
        deadline = time.monotonic() + timeout_s
        waiting = set(runs)
        while waiting and time.monotonic() < deadline:
            _drain_iopub(client, runs)
            try:
                reply = client.get_shell_msg(timeout=0.2)
            except queue.Empty:
                continue
            msg_id = reply["parent_header"].get("msg_id")
            if msg_id in waiting:
                runs[msg_id].status = reply["content"]["status"]
                waiting.discard(msg_id)
        time.sleep(0.2)
        _drain_iopub(client, runs)
        return sorted(runs.values(), key=lambda run: run.index)
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


def _drain_iopub(client, runs: dict[str, CellRun]) -> None:
    while True:
        try:
            message = client.get_iopub_msg(timeout=0)
        except queue.Empty:
            return
        run = runs.get(message["parent_header"].get("msg_id"))
        if run is None:
            continue
        kind, content = message["header"]["msg_type"], message["content"]
        if kind == "error":
            run.errors.append((content["ename"], content["evalue"]))
        elif kind in ("display_data", "update_display_data"):
            data = content.get("metadata", {}).get("course-check")
            if data is not None:
                run.course_checks.append(data)
