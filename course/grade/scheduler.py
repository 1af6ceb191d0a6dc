"""The run: how many notebooks at once (more while some only wait, read from /proc), kernels
started ahead, rows and feedback written as each notebook finishes, everything ended on Ctrl-C or
SIGTERM."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .discovery import Job
from .feedback import write_feedback
from .gradebook import Gradebook, outcome_row
from .judge import grade_notebook
from .kernel_client import Kernel
from .launcher import ZYGOTE_IMPORTS, Launcher
from .lessons import Lesson
from .verdicts import NOT_COURSE, TAMPERED, Outcome


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class CpuWatch:
    """Which kernels are idle (waiting on a timer or a hung await): below 10% of a core over the last
    second, read from /proc. Where /proc is missing, no kernel counts as idle."""

    TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def __init__(self):
        self.samples: dict[int, list[tuple[float, int]]] = {}

    @staticmethod
    def ticks(pid: int) -> int | None:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return int(fields[11]) + int(fields[12])  # utime + stime, all threads
        except (OSError, IndexError, ValueError):
            return None

    def idle(self, pid: int | None, now: float) -> bool:
        if pid is None:
            return False
        ticks = self.ticks(pid)
        if ticks is None:
            return False
        history = self.samples.setdefault(pid, [])
        history.append((now, ticks))
        while len(history) > 2 and now - history[1][0] >= 1.0:
            history.pop(0)
        then, before = history[0]
        return now - then >= 0.9 and (ticks - before) / self.TICK / (now - then) < 0.1

    @staticmethod
    def machine() -> tuple[int, int] | None:
        """(idle, total) ticks of all cores since boot, from /proc/stat."""
        try:
            with open("/proc/stat", encoding="ascii") as f:
                values = [int(v) for v in f.readline().split()[1:]]
            return values[3] + values[4], sum(values[:8])
        except (OSError, ValueError, IndexError):
            return None

    def spare_cores(self, now: float, cores: int) -> float:
        """Cores left idle by everything on the machine (ours and others') over the last second."""
        sample = self.machine()
        if sample is None:
            return 0.0
        history = self.samples.setdefault(-1, [])
        history.append((now, sample))
        while len(history) > 2 and now - history[1][0] >= 1.0:
            history.pop(0)
        then, (idle0, total0) = history[0]
        if now - then < 0.9 or sample[1] == total0:
            return 0.0
        return cores * (sample[0] - idle0) / (sample[1] - total0)


async def grade_jobs(jobs: list[Job], lessons: dict[str, Lesson], book: Gradebook, *, workers: int, ahead: int,
                     timeout: float, notebook_timeout: float, fork: bool, feedback: Path | None,
                     max_workers: int | None = None, say=print, sandbox: list[Path] | None = None) -> list[Outcome]:
    """Grade `jobs`: `workers` notebooks at once, more (up to `max_workers`) while some of the
    running ones wait without using a core; `ahead` kernels started before they are needed."""
    import asyncio
    import shutil
    import tempfile
    from collections import deque

    # Short: ipc socket paths are limited to ~100 bytes. Sandboxed, not under /tmp (each kernel has its own).
    places = [p for p in ("/var/tmp", "/dev/shm") if os.access(p, os.W_OK)] if sandbox is not None else []
    runtime = Path(tempfile.mkdtemp(prefix="cg-", dir=places[0] if places else None))
    os.chmod(runtime, 0o711)  # sandboxed kernels reach their own folder in it, and list nothing
    launcher = Launcher(fork, runtime, sandbox)
    outcomes: list[Outcome] = []
    live: set[Kernel] = set()
    total = len(jobs)
    max_workers = max(workers, max_workers or workers)

    async def new_kernel(lesson: Lesson) -> Kernel:
        kernel = Kernel(launcher, runtime)
        live.add(kernel)
        imports = list(lesson.imports) + [f"checks.{c.module}" for c in lesson.check_cells.values()]
        if not fork:
            imports = [m for m in ZYGOTE_IMPORTS if not m.startswith("ipykernel")] + imports
        try:
            return await kernel.start(imports)
        except BaseException:
            kernel.close()
            raise

    def finish(outcome: Outcome) -> None:
        lesson = lessons.get(outcome.job.lesson or "")
        book.add(outcome_row(outcome, lesson))
        if feedback is not None and lesson is not None:
            write_feedback(outcome, lesson, feedback)
        outcomes.append(outcome)
        say(f"[{len(outcomes)}/{total}] {outcome.job.learner} · {outcome.job.lesson or '--'} · "
            f"{outcome.score}/{len(lesson.exercises) if lesson else 0} · {outcome.status} · {outcome.seconds:.1f} s"
            f" · {outcome.job.rel}")
        if outcome.status == TAMPERED:
            for event in outcome.events:
                say(f"    tampered: {event}")

    for job in jobs:
        if job.problem or job.lesson not in lessons:
            finish(Outcome(job, {}, NOT_COURSE, 0.0, events=[job.problem or "no lesson found"]))
    # The longest lessons first, so that no long notebook is left alone at the end.
    cost = {n: len(lesson.check_cells) * 4 + len(lesson.imports) for n, lesson in lessons.items()}
    pending = deque(sorted((j for j in jobs if not j.problem and j.lesson in lessons),
                           key=lambda j: (-cost[j.lesson], j.rel)))
    warm: deque = deque()  # (job, task starting its kernel)
    running: dict = {}  # task → (job, holder of its current kernel)
    watch = CpuWatch()
    loop = asyncio.get_running_loop()
    try:  # SIGTERM (a stopped pod, `kill`) ends the run as Ctrl-C does: kernels closed, rows kept
        import signal

        loop.add_signal_handler(signal.SIGTERM, asyncio.current_task().cancel)
    except (NotImplementedError, AttributeError, RuntimeError):
        pass
    cores, spared = cpu_count(), float("-inf")
    retried: set[str] = set()
    try:
        if pending:
            await launcher.start()
        while pending or warm or running:
            while pending and len(warm) < ahead:
                job = pending.popleft()
                warm.append((job, asyncio.create_task(new_kernel(lessons[job.lesson]))))
            now = loop.time()
            # More than `workers` at once only while cores are left idle: a running notebook that
            # waits (a hung await, a check's timers) lends its core, and a machine with a core to
            # spare for 1 s takes one more notebook (then looks again 2 s later).
            extra = sum(watch.idle(getattr(holder.get("kernel"), "pid", None), now) for _, holder in running.values())
            spare = watch.spare_cores(now, cores)
            if len(running) >= workers and spare >= 0.75 and now - spared >= 2.0:
                extra, spared = extra + 1, now
            while warm and len(running) < min(max_workers, workers + extra):
                job, first = warm.popleft()
                lesson, holder = lessons[job.lesson], {}
                task = asyncio.create_task(grade_notebook(job, lesson, first, lambda lesson=lesson: new_kernel(lesson),
                                                          timeout, notebook_timeout, holder=holder))
                running[task] = (job, holder)
                if pending:
                    job = pending.popleft()
                    warm.append((job, asyncio.create_task(new_kernel(lessons[job.lesson]))))
            done, _ = await asyncio.wait(list(running), timeout=0.25, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                job, _ = running.pop(task)
                try:
                    outcome = task.result()
                except Exception as exc:  # a fault of the grader, not of the learner: tried again, then no row
                    if job.rel not in retried:
                        retried.add(job.rel)
                        pending.append(job)
                        continue
                    print(f"course grade: {job.rel} was not graded ({type(exc).__name__}: {exc}); run again to retry",
                          file=sys.stderr)
                    continue
                finish(outcome)
    finally:
        for task in [*running, *(t for _, t in warm)]:
            task.cancel()
        for kernel in list(live):
            kernel.close()
        await launcher.close()
        shutil.rmtree(runtime, ignore_errors=True)
    return outcomes
