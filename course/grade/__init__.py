"""`course grade`: grade a folder of learners' notebooks into one gradebook.

    course grade submissions/ --out gradebook.csv [--feedback feedback/] [--jobs N]
    course grade submissions/ --out part-1.csv --shard 1/4      # one part of four
    course grade --merge part-*.csv --out gradebook.csv [--canvas canvas.csv] [--moodle moodle.csv]

Every `.ipynb` under the folder (any names, nested folders) is one learner's copy of one lesson.
It runs in a fresh kernel; the course's OWN check cells (from solutions/, matched by cell id,
re-inserted when deleted) run against the learner's code, and each check's result is read from
its `course-check` data (contract 5). One row per learner and lesson is appended to the
gradebook as soon as it is known, so an interrupted run resumes where it stopped.

Speed. Kernels are forked from a "zygote" process per grading run that has already imported
ipykernel, IPython, FastAPI, httpx, pydantic and `checks`: a new kernel is a fresh process whose
only history is those imports (nothing of any learner ever ran in the zygote), so the imports are
paid once per run instead of once per notebook. Kernels for the next notebooks are started (and
their lesson's modules imported) while the current ones run, and `--jobs` notebooks (one per core
by default) run at once. `--no-fork` starts each kernel as its own process instead.

Robustness. Every cell has a deadline (`--timeout`, extended by the running check's own
`limit_s`); a cell past it is interrupted, and a kernel that does not come back, or dies
(`os._exit`, a crash), is replaced: the learner's cells before the failing one are run again in a
fresh kernel, the failing cell is skipped, and grading goes on, so one broken exercise does not
cost the others. A cell that sends more than 20 MB of output is stopped the same way. The row's
status says what happened: graded, timed out, kernel died, output over limit, tampered, or not a
course notebook. Each run also writes a class report for the instructor (report.py).

Kernels run in a temporary folder without COURSE_PROGRESS_FILE, so grading never records into a
learner's progress (course.progress records only in notebooks/ or where that variable is set).

The package, by stage (a module imports only stages above it in this list):

    lessons.py        the lessons as the solutions define them (check cells by id, extra checks)
    discovery.py      finding submissions: which lesson, which learner; --shard
    plan.py           which cells run: the learner's, with the course's check cells in place
    in_kernel.py      what the grading cells import inside the learner's kernel (kept light)
    launcher.py       starting kernels: the forking zygote, or one process each
    kernel_client.py  one kernel: start, run a cell under a deadline, interrupt, kill
    verdicts.py       the status words and one notebook's Outcome
    judge.py          grading one notebook (replaying cells in a fresh kernel after a crash)
    gradebook.py      the CSV: rows as they come, resume, merge of shard parts
    exports.py        Canvas and Moodle import files
    feedback.py       one HTML page per learner and lesson
    report.py         the class at a glance: one HTML page for the instructor
    scheduler.py      the run: notebooks at once, kernels ahead, CPU watching, SIGTERM
    command.py        `course grade`'s command line over the stages

This file imports nothing: the kernels import `course.grade.in_kernel`, and only that.
"""
