"""Turn an async check function into a check cell's call: time limit, report, verdict.

    @check("GET /hello greets by name", limit_s=5)
    async def check_hello(report, app):
        ...report.add(...)...

In a notebook, `await check_hello(app)` shows the report and raises `CheckFailed` when
anything failed. Tests call `await check_hello.report(app)` to get the report itself.
"""

from __future__ import annotations

import functools
import gc
import re
import time
import warnings

from .harness import AppStartupError, describe_exception, in_notebook
from .report import CheckFailed, Report
from .watchdog import CheckTimeout, time_limit

BLOCKED_HINT = (
    "Code that never awaits (a busy `while` loop, `time.sleep`, heavy CPU work) inside `async def` "
    "holds the event loop, so nothing else can run. Await an async call instead, or move the "
    "blocking work to a thread (`def` route, `asyncio.to_thread`)."
)
HANG_HINT = (
    "Something was awaited that never finishes: a request that never returns, an `Event` never "
    "set, a lock never released. Check that every route returns a response."
)


class Check:
    def __init__(self, fn, title: str, limit_s: float):
        self.fn, self.title, self.limit_s = fn, title, limit_s
        functools.update_wrapper(self, fn)
        # A stable id for progress views and graders: "lesson01.check_forecast".
        # A lesson may be a package (checks.lesson09.judge): the id names the lesson, not the module.
        parts = fn.__module__.split(".")
        module = next((p for p in reversed(parts) if re.fullmatch(r"lesson\d+", p)), parts[-1])
        self.id = f"{module}.{fn.__name__}"

    async def report(self, *args, **kwargs) -> Report:
        """Run the check and return its report, without showing it or raising."""
        report = Report(self.title)
        # Garbage from an earlier attempt (a coroutine never awaited, an unclosed client) would
        # warn in the middle of this check, pointing at whatever code ran then: collect it first.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gc.collect()
        started = time.perf_counter()
        try:
            # Warnings are shown, never raised: a learner's `simplefilter("error")`, or a test
            # runner's, must not turn a deprecation notice into a failed check.
            with warnings.catch_warnings():
                warnings.simplefilter("default")
                async with time_limit(self.limit_s):
                    await self.fn(report, *args, **kwargs)
        except CheckTimeout as exc:
            report.fail(
                f"finishes within {self.limit_s:g} s",
                observed=(
                    f"stopped after {self.limit_s:g} s: {exc.what}"
                    if exc.blocked
                    else f"still waiting after {self.limit_s:g} s"
                ),
                hint=BLOCKED_HINT if exc.blocked else HANG_HINT,
            )
        except AppStartupError as exc:
            report.fail(
                "the app starts",
                observed=f"the app could not start: {exc}",
                hint="The lifespan runs before the first request: the code before its `yield` must finish "
                     "without raising. Run it on its own to see what goes wrong.",
            )
        except Exception as exc:  # the learner's code crashed somewhere the check did not expect
            report.fail(
                "runs without raising",
                observed=describe_exception(exc),
                hint="Fix the error, run the cell that defines your code again, then this check.",
            )
        report.metrics["elapsed_s"] = time.perf_counter() - started
        if not report.items:
            report.fail("checked something", observed="the check recorded nothing")
        return report

    def result(self, report: Report) -> dict:
        """The `course-check` data of one run (contract 5): what progress views and graders read."""
        return dict(report.metrics, id=self.id, title=self.title, passed=report.passed,
                    failed=[item.name for item in report.failures])

    async def __call__(self, *args, **kwargs) -> None:
        report = await self.report(*args, **kwargs)
        if in_notebook():
            from IPython.display import display

            result = self.result(report)
            display(report, metadata={"course-check": result})
            _record_progress(result)
        if not report.passed:
            raise CheckFailed(report)
        if not in_notebook():
            print(report.text())


def _record_progress(result: dict) -> None:
    """Keep the learner's result across kernel restarts (never fails the check)."""
    try:
        from course.progress import record, should_record

        if should_record():
            record(result["id"], result["title"], result["passed"], result.get("elapsed_s", 0.0))
    except Exception:
        pass


def check(title: str, *, limit_s: float = 10.0):
    """Decorator: `fn(report, *args)` becomes a `Check` with a time limit."""

    def wrap(fn) -> Check:
        return Check(fn, title, limit_s)

    return wrap
