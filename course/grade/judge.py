"""Grading one notebook: run its plan step by step, read each check's verdict from its
`course-check` data, and replace a kernel that hangs or dies (the cells before are run again in a
fresh one, the failing cell is skipped) so one broken exercise does not cost the others."""

from __future__ import annotations

import asyncio

from .discovery import Job
from .kernel_client import CellRun
from .lessons import CheckCell, Lesson
from .plan import plan
from .verdicts import DIED, FAILED, GRADED, NOT_RUN, PASSED, TIMED_OUT, Outcome


def _judge(cell: CheckCell, name: str, run: CellRun, lesson: Lesson) -> tuple[str, str]:
    exercise = f"{cell.module}.{name}"
    mine = [o for o in run.outputs if (o["metadata"].get("course-grade") or {}).get("check") == exercise]
    course = [o for o in mine if o["metadata"]["course-grade"].get("role") == "course"
              and o["metadata"]["course-check"].get("id") == exercise]
    extra = [o for o in mine if o["metadata"]["course-grade"].get("role") == "extra"]
    wants_extra = name in lesson.extra_names
    if course and course[-1]["metadata"]["course-check"].get("passed") is True:
        if not wants_extra or (extra and extra[-1]["metadata"]["course-check"].get("passed") is True):
            return PASSED, ""
    if run.status == "died":
        return DIED, ("The kernel died while this check ran your code: something it called ended or crashed the "
                      "Python process (os._exit, a crash in a C extension, running out of memory).")
    if run.status == "timeout":
        return TIMED_OUT, "The check did not finish even well past its own time limit, and was stopped."
    if not course:
        return FAILED, f"the check could not run: {run.error}" if run.error else "the check recorded no result"
    return FAILED, ""


async def grade_notebook(job: Job, lesson: Lesson, first: asyncio.Task, new_kernel, timeout: float,
                         notebook_timeout: float, max_restarts: int = 2, holder: dict | None = None) -> Outcome:
    loop = asyncio.get_running_loop()
    started = loop.time()
    steps = plan(job.notebook, lesson)
    results = {exercise: NOT_RUN for exercise in lesson.exercises}
    outcome = Outcome(job, results, GRADED, 0.0)
    incidents: set[str] = set()
    skipped: set[int] = set()  # steps that killed or hung a kernel: not replayed
    restarts = 0
    holder = {} if holder is None else holder  # the kernel in use, for the scheduler's CPU watch
    try:
        kernel = holder["kernel"] = await first
    except Exception as exc:
        kernel = None
        outcome.events.append(f"A kernel did not start: {exc}")
    i = 0
    while i < len(steps):
        if kernel is None:  # (re)start, then replay the learner's cells before step i
            if restarts > max_restarts:
                break
            restarts += 1
            try:
                kernel = holder["kernel"] = await new_kernel()
            except Exception as exc:
                outcome.events.append(f"A kernel did not start: {exc}")
                incidents.add(DIED)
                break
            for j in range(i):
                if j in skipped or steps[j].check is not None:
                    continue
                replay = await kernel.run(steps[j].source, timeout)
                if replay.kernel_lost:
                    skipped.add(j)
                    kernel.close()
                    kernel = None
                    break
            if kernel is None:
                continue
        step = steps[i]
        left = notebook_timeout - (loop.time() - started)
        if left <= 0:
            incidents.add(TIMED_OUT)
            outcome.events.append(f"Grading stopped: the notebook took longer than {notebook_timeout:g} s in all.")
            break
        run = await kernel.run(step.source, min(timeout, left))
        if run.status == "timeout":
            incidents.add(TIMED_OUT)
        if run.status == "died":
            incidents.add(DIED)
        if step.check is not None:
            for name in step.check.names:
                exercise = f"{step.check.module}.{name}"
                value, note = _judge(step.check, name, run, lesson)
                results[exercise] = value
                outcome.reports[exercise] = [o for o in run.outputs
                                             if (o["metadata"].get("course-grade") or {}).get("check") == exercise]
                if note:
                    outcome.notes[exercise] = note
        if step.check is None and run.status in ("timeout", "died"):
            first = next((line.strip() for line in step.source.splitlines() if line.strip()), "")
            where = f"Your cell {step.index + 1} (it starts `{first[:60]}`)"
            what = "ran past its time limit and was stopped" if run.status == "timeout" else "made the kernel die"
            outcome.events.append(f"{where} {what}" + (
                ": a fresh kernel ran your cells before it again and went on after it." if run.kernel_lost else "."))
        if run.kernel_lost:
            skipped.add(i)
            kernel.close()
            kernel = None
        i += 1
    if kernel is not None:
        kernel.close()
    if any(value == NOT_RUN for value in results.values()) and not incidents:
        incidents.add(DIED)
    outcome.status = DIED if DIED in incidents else TIMED_OUT if TIMED_OUT in incidents else GRADED
    outcome.seconds = loop.time() - started
    return outcome
