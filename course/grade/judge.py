"""Grading one notebook: run its plan step by step, read each check's verdict from its
`course-check` data, and replace a kernel that hangs or dies (the cells before are run again in a
fresh one, the failing cell is skipped) so one broken exercise does not cost the others."""

from __future__ import annotations

import asyncio

from .discovery import Job
from .kernel_client import CellRun, output_cap
from .lessons import CheckCell, Lesson
from .plan import plan
from .verdicts import DIED, FAILED, GRADED, NOT_RUN, OVER_OUTPUT, PASSED, TAMPERED, TIMED_OUT, Outcome

FORGED = "a `course-check` result that the course's check did not produce"


def read_marks(step, run: CellRun) -> tuple[dict, dict]:
    """The reports the course's checks made in this check cell, and what was forged or patched.

    A report counts only between its own start and end marks (with this cell's nonce), once per
    check and role; any other `course-check` output in the cell, or a mark saying a display
    function, a hook or a check was changed, makes that exercise *tampered*."""
    exercises = [f"{step.check.module}.{name}" for name in step.check.names]
    accepted: dict = {}  # (exercise, role) → output
    tampered: dict = {}  # exercise → reasons
    ended, open_ = set(), None

    def flag(exercise, why):
        for target in [exercise] if exercise in exercises else exercises:
            reasons = tampered.setdefault(target, [])
            if why not in reasons:
                reasons.append(why)

    for kind, item in run.sequence:
        if kind == "mark":
            exercise, role, event = item.get("check"), item.get("role"), item.get("event")
            if item.get("nonce") != step.nonce or exercise not in exercises:
                flag(exercise, "a grading mark that the grading cell did not make")
                continue
            for why in item.get("tampered") or []:
                flag(exercise, str(why))
            if event == "start":
                open_ = (exercise, role)
            elif event == "end" and open_ == (exercise, role) and open_ in accepted:
                ended.add(open_)
                open_ = None
            else:
                flag(exercise, "grading marks out of order")
            continue
        grade = item["metadata"].get("course-grade") or {}
        data = item["metadata"]["course-check"]
        key = (grade.get("check"), grade.get("role"))
        if (open_ == key and key not in accepted and grade.get("nonce") == step.nonce
                and (key[1] != "course" or data.get("id") == key[0])):
            accepted[key] = item
        else:
            flag(key[0] if key[0] in exercises else data.get("id"), FORGED)
    if run.status == "ok":
        for key in set(accepted) - ended:
            flag(key[0], "a check's report was not followed by its end mark")
    return accepted, tampered


def _judge(cell: CheckCell, name: str, run: CellRun, lesson: Lesson, accepted: dict,
           tampered: dict) -> tuple[str, str]:
    exercise = f"{cell.module}.{name}"
    if tampered.get(exercise):
        return TAMPERED, ("Not graded: this exercise's result was forged or its check was changed while it ran "
                          f"({'; '.join(tampered[exercise][:3])}).")
    course, extra = accepted.get((exercise, "course")), accepted.get((exercise, "extra"))
    wants_extra = name in lesson.extra_names
    if course and course["metadata"]["course-check"].get("passed") is True:
        if not wants_extra or (extra and extra["metadata"]["course-check"].get("passed") is True):
            return PASSED, ""
    if run.status == "died":
        return DIED, ("The kernel died while this check ran your code: something it called ended or crashed the "
                      "Python process (os._exit, a crash in a C extension, running out of memory).")
    if run.status == "output":
        return FAILED, (f"Output over {output_cap() >> 20} MB: stopped. This check's cell sent more output than "
                        "grading takes from one cell (something it called printed in a loop?).")
    if run.status == "timeout":
        return TIMED_OUT, "The check did not finish even well past its own time limit, and was stopped."
    if not course:
        return FAILED, f"the check could not run: {run.error}" if run.error else "the check recorded no result"
    return FAILED, ""


class GraderFault(RuntimeError):
    """No kernel could be started: the grader's fault, never written as the learner's 0."""


async def _start(new_kernel, tries: int = 3):
    for attempt in range(tries):
        try:
            return await new_kernel()
        except Exception as exc:
            error = exc
    raise GraderFault(f"no kernel would start ({tries} tries): {error}")


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
    except Exception:
        kernel = holder["kernel"] = await _start(new_kernel)
    i = 0
    while i < len(steps):
        if kernel is None:  # (re)start, then replay the learner's cells before step i
            if restarts > max_restarts:
                break
            restarts += 1
            kernel = holder["kernel"] = await _start(new_kernel)
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
        if run.status == "output":
            incidents.add(OVER_OUTPUT)
        if step.check is not None:
            accepted, tampered = read_marks(step, run)
            for name in step.check.names:
                exercise = f"{step.check.module}.{name}"
                value, note = _judge(step.check, name, run, lesson, accepted, tampered)
                results[exercise] = value
                outcome.reports[exercise] = [] if value == TAMPERED else [
                    accepted[(exercise, role)] for role in ("course", "extra") if (exercise, role) in accepted]
                if note:
                    outcome.notes[exercise] = note
        if step.check is None and run.status in ("timeout", "died", "output"):
            first = next((line.strip() for line in step.source.splitlines() if line.strip()), "")
            where = f"Your cell {step.index + 1} (it starts `{first[:60]}`)"
            what = {"timeout": "ran past its time limit and was stopped", "died": "made the kernel die",
                    "output": f"printed more than {output_cap() >> 20} MB (output over {output_cap() >> 20} MB: "
                              "stopped)"}[run.status]
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
    outcome.status = next((s for s in (DIED, TIMED_OUT, OVER_OUTPUT) if s in incidents), GRADED)
    if TAMPERED in results.values():
        outcome.status = TAMPERED
        outcome.events += [f"{exercise}: {outcome.notes[exercise]}" for exercise, value in results.items()
                           if value == TAMPERED]
    outcome.seconds = loop.time() - started
    return outcome
