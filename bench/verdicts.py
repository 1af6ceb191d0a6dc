"""Do the timing checks give the same verdict on a slow, noisy machine? Count it.

    python bench/verdicts.py [--runs 50] [--idle-only] [--only 04]

Runs every check of lessons 01, 04 and 05 whose verdict rests on a clock or on scheduling
(a bounded wait, "N at once") many times against right and wrong answers taken from the
tests, first on an idle machine, then with every core kept busy by CPU hogs this script
starts and stops by PID. Prints wrong verdicts per check (a right answer failed; a wrong one
passed the item the tests say it fails) and, per measured signal, the worst right answer and
the best-looking wrong one against the check's own bar. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from fastapi import FastAPI  # noqa: E402

import test_lesson01 as l01  # noqa: E402  (the right and wrong answers the tests use)
import types  # noqa: E402

import test_lesson04_dashboard  # noqa: E402
import test_lesson04_deadline  # noqa: E402
import test_lesson04_fan_out  # noqa: E402
import test_lesson04_first_completed  # noqa: E402
import test_lesson04_sessions  # noqa: E402
import test_lesson05_asgi  # noqa: E402
import test_lesson05_request_headers  # noqa: E402
from checks.lesson01 import check_forecast, check_report, check_signup  # noqa: E402
from checks.lesson04 import (  # noqa: E402
    check_dashboard, check_deadline, check_fan_out, check_first_completed, check_one_session_per_task,
)
# Lesson 04's answers live in one test module per exercise.
l04 = types.SimpleNamespace(**{name: value for module in (
    test_lesson04_dashboard, test_lesson04_deadline, test_lesson04_fan_out, test_lesson04_first_completed,
    test_lesson04_sessions) for name, value in vars(module).items() if not name.startswith("_")})
# Lesson 05's answers live in one test module per exercise.
l05 = types.SimpleNamespace(**{name: value for module in (test_lesson05_request_headers, test_lesson05_asgi)
                                for name, value in vars(module).items() if not name.startswith("_")})
from checks.lesson05 import RequestContext, check_asgi_middleware, check_request_headers  # noqa: E402


# ---- signals: numbers read back from what the checks print ------------------------------------

def _number(text: str, pattern: str) -> float | None:
    found = re.search(pattern, text)
    return float(found.group(1)) if found else None


def ratio(observed: str, expected: str | None = None, of: str | None = None):
    """A number in an item's observed text ÷ one in its expected text (or a second one in observed)."""
    def measure(item, report):
        top = _number(item.observed, observed)
        bottom = _number(item.expected, expected) if expected else _number(item.observed, of)
        return None if top is None or not bottom else top / bottom
    return measure


def number(pattern: str, when_passed: float | None = None):
    """A number in an item's observed text (some items print nothing when they pass)."""
    def measure(item, report):
        return when_passed if item.passed and when_passed is not None else _number(item.observed, pattern)
    return measure


def process_time_slack(item, report):
    """Lesson 05: how far X-Process-Time sits inside [backend call, client's wait], in ms (bar: -1)."""
    low, high = report.metrics.get("process_time_slack_low_ms"), report.metrics.get("process_time_slack_high_ms")
    return None if low is None or high is None else min(low, high)


@dataclass
class Signal:
    label: str
    item: str  # the report item it is read from, by the start of its name
    measure: object  # (item, report) -> float | None (None: not printed)
    low: float = -math.inf  # the item needs low <= value <= high
    high: float = math.inf
    additive: bool = False  # counts and ms: room is a difference, not a ratio
    right: list[float] = field(default_factory=list)
    wrong: list[float] = field(default_factory=list)  # only from wrong answers the tests say fail this item

    def read(self, report) -> float | None:
        item = next((item for item in report.items if item.name.startswith(self.item)), None)
        return None if item is None else self.measure(item, report)

    def room(self, value: float) -> float:
        """How far inside the bar: > 1 (a ratio) or >= 0 (a difference) passes; below, the value fails."""
        if self.additive:
            return min(value - self.low, self.high - value)
        return min(value / self.low if self.low > 0 else math.inf, self.high / value if value > 0 else math.inf)

    def bar(self) -> str:
        if self.low == self.high:
            return f"= {self.low:g}"
        if self.low > -math.inf and self.high < math.inf:
            return f"{self.low:g}..{self.high:g}"
        return f">= {self.low:g}" if self.low > -math.inf else f"< {self.high:g}"


LOOP = "keeps the event loop free"
TOGETHER = "serves requests concurrently"
OVERLAP = "the upstream calls overlap"
LATE_ADS = "a service that never answers"
FIRST = "answers as soon as the first mirror does"
AT_ONCE_4 = "4 calls at once when there is enough to do"
AGAIN = "a failed call gives its place back"
SESSIONS = "one session per task"


def lesson01_signals():
    # Which of the three signals of "keeps the event loop free" spoke is told by its words.
    return [Signal("loop sampler: stay in learner code ÷ its bar", LOOP,
                   ratio(r"(?:computed for|waited|stayed) (\d+) ms", r"under (\d+) ms"), high=1.0),
            Signal("loop clock: longest stall ÷ its bar", LOOP,
                   ratio(r"(?:longest stall|stalled) (\d+) ms", r"stalls under (\d+) ms"), high=1.0),
            Signal("calls at once (of 5)", TOGETHER, number(r"at most (\d+) of"), low=3, additive=True)]


def overlap_signals():
    return [Signal("request ÷ slowest call (a backstop)", OVERLAP, number(r"= ([\d.]+)×"),
                   high=5.0)]


def headers_signals():
    return [Signal("X-Process-Time inside [backend, client], ms", l05.TIMING, process_time_slack, low=-1.0,
                   additive=True),
            Signal("/slow calls at once (of 5, gate 1 s)", l05.AT_ONCE, number(r"at most (\d+) of", when_passed=5),
                   low=5, additive=True)]


# ---- the cases: a check, how to build its arguments, right answers, wrong answers ------------

def route(method: str, path: str):
    def build(endpoint):
        app = FastAPI()
        app.add_api_route(path, endpoint, methods=[method])
        return (app,)
    return build


def named(answer, name: str):
    answer.__name__ = name
    return answer


@dataclass
class Case:
    check: object
    build: object  # answer -> the check's arguments
    rights: list
    wrongs: list  # (answer, the item(s) the tests say it fails, each by the start of its name)
    signals: list[Signal]
    false_pass: int = 0
    false_fail: int = 0
    runs: int = 0


# Per check: the right answers most exposed to a slow machine (threads, TaskGroups, cancels left
# to land later) and the wrong answers whose verdict rests on a measured time or on scheduling,
# the nearest to their bar first. Far-off or exact-only mistakes are left to the tests: each
# answer costs 0.2-2 s a run.
CASES = [
    # Lesson 01: these wrong answers are seen only by the sampler (a clock), not by BlockingWatch.
    Case(check_forecast, route("GET", "/forecast/{city}"),
         [l01.forecast_awaits, l01.forecast_through_helper, l01.forecast_with_deadline],
         [(l01.forecast_waits_on_thread, (LOOP, TOGETHER))], lesson01_signals()),
    Case(check_report, route("GET", "/report/{month}"),
         [l01.report_def_route, l01.report_to_thread],
         [(l01.report_waits_on_thread, (LOOP, TOGETHER)), (l01.report_with_checksums, LOOP)], lesson01_signals()),
    Case(check_signup, route("POST", "/signup"),
         [l01.signup_to_thread, l01.signup_def_route_from_thread],
         [(l01.signup_waits_on_thread, (LOOP, TOGETHER)), (l01.signup_scores_in_python, LOOP)], lesson01_signals()),
    # Lesson 04: overlap, cancellation and limits are exact counts, but what there is to count
    # depends on scheduling; the clocks: the ratio backstop, the /ads window, first-completed.
    Case(check_dashboard, route("GET", "/dashboard/{user}"),
         [l04.dashboard_tasks_cancelled_in_finally,
          l04.dashboard_first_exception, l04.dashboard_task_group_wrapped_profile],
         [(l04.sequential, OVERLAP)], overlap_signals()),
    Case(check_deadline, route("GET", "/ads/{user}"),
         [l04.ads_timeout, l04.ads_wait_then_cancel, l04.ads_task_group_timeout],
         [(l04.ads_too_long, LATE_ADS), (l04.ads_too_short, "an ads service that answers in")],
         [Signal("slow ads: the answer's ms", LATE_ADS, number(r"after (\d+) ms"), low=250, high=600)]),
    Case(check_fan_out, lambda make_app: (make_app(),),
         [l04.fan_out_lifespan_semaphore, l04.fan_out_capacity_limiter, l04.fan_out_def_routes_shared_pool],
         [(l04.fan_out_leaks_on_error, AGAIN)],
         [Signal("prices_api calls at once", AT_ONCE_4, number(r"at most (\d+) calls in flight"),
                 low=4, high=4, additive=True),
          Signal("at once again after failures", AGAIN, number(r"at most (\d+) calls ran"),
                 low=4, high=4, additive=True)]),
    Case(check_first_completed, route("GET", "/download/{name}"),
         [l04.download_wait, l04.download_as_completed, l04.download_task_group, l04.download_cancel_and_wait],
         [(l04.download_gather_then_pick, FIRST)],
         [Signal("slowest answer ÷ the second mirror's latency", FIRST,
                 ratio(r"slowest answer (\d+) ms", of=r"the next (\d+) ms"), high=1.0),
          Signal("mirrors answered before it", FIRST, number(r"(\d+) mirror\(s\)"), low=1, high=1, additive=True)]),
    Case(check_one_session_per_task, lambda record_visits: (record_visits,),
         [l04.visits_gather, l04.visits_task_group_each_catches, l04.visits_two_at_a_time],
         [(l04.visits_lock, SESSIONS)],
         [Signal("transactions open at once", SESSIONS, number(r"at most (\d+) transactions"), low=2, additive=True)]),
    # Lesson 05: X-Process-Time is judged by enclosure (clock against clock, same request); the gate
    # behind "5 at once" and the stream's chunk acknowledgement are bounded waits (1 s, 0.3 s).
    Case(check_request_headers, lambda middleware: (l05.lesson_app, middleware),
         [named(l05.lesson["add_request_context"], "the notebook's add_request_context"), l05.ContextDispatch,
          l05.monotonic_middleware],
         [(named(l05.variant(cpu_time=True), "time.process_time()"), l05.TIMING)], headers_signals()),
    Case(check_asgi_middleware, lambda middleware: (l05.lesson_app, middleware),
         [named(l05.lesson["RequestContextMiddleware"], "the notebook's RequestContextMiddleware"), l05.ReRaises],
         [(named(l05.pure(buffer=True), "buffers the body"), l05.CHUNKS)], headers_signals()),
]


async def sweep(runs: int) -> None:
    for case in selected():
        wrongs = {answer: (items,) if isinstance(items, str) else items for answer, items in case.wrongs}
        for _ in range(runs):
            for answer in case.rights + list(wrongs):
                report = await case.check.report(*case.build(answer))
                right = answer in case.rights
                case.runs += 1
                if right and not report.passed:
                    case.false_fail += 1
                    print(f"  false fail: {answer.__name__}\n{report.text()}")
                missed = [] if right else [name for name in wrongs[answer]
                                           if not any(item.name.startswith(name) for item in report.failures)]
                if missed:
                    case.false_pass += 1
                    print(f"  false pass ({', '.join(missed)} not failed): {answer.__name__}\n{report.text()}")
                for sig in case.signals:
                    value = sig.read(report)
                    if value is not None and (right or sig.item in wrongs[answer]):
                        (sig.right if right else sig.wrong).append(value)
        await asyncio.sleep(0.5)  # let calls that answers left running end before the next check


ONLY: set[str] = set()  # lessons picked with --only (empty: every case)


def selected() -> list[Case]:
    return [case for case in CASES if not ONLY or case.check.id.split(".")[0] in ONLY]


def shown(sig: Signal, values: list[float], right: bool) -> str:
    """The right value nearest its bar (with the room left), or the wrong one nearest to passing
    (with how far past the bar it is)."""
    if not values:
        return "—"
    value = (min if right else max)(values, key=sig.room)
    room = sig.room(value) if right else -sig.room(value) if sig.additive else 1 / sig.room(value)
    return f"{value:8.2f} ({room:+.1f})" if sig.additive else f"{value:8.2f} ({room:.2f}x)"


def summary(label: str) -> None:
    print(f"\n== {label}")
    print(f"{'check':<84} {'runs':>5} {'false pass':>10} {'false fail':>10}")
    for case in selected():
        print(f"{case.check.title:<84} {case.runs:5d} {case.false_pass:10d} {case.false_fail:10d}")
    print(f"\n{'signal':<74} {'bar':>8}   {'worst right (room)':>20}   {'best wrong (past bar)':>21}")
    for case in selected():
        for sig in case.signals:
            name = f"{case.check.id.removeprefix('lesson')}: {sig.label}"
            print(f"{name:<74} {sig.bar():>8}   {shown(sig, sig.right, True):>20}   {shown(sig, sig.wrong, False):>21}")
    print("room / past bar: a ratio to the nearest bar (x, above 1 is on the right side), or a difference for counts "
          "and ms (+; 0 = exactly on a bar that must be met exactly). —: not printed (the sampler speaks only when "
          "it flags a stay; wrong answers count only for the item the tests say they fail).")


def reset() -> None:
    for case in CASES:
        case.runs = case.false_pass = case.false_fail = 0
        for sig in case.signals:
            sig.right.clear()
            sig.wrong.clear()


async def run(runs: int, idle_only: bool) -> None:
    # Both passes on one event loop, as a kernel runs every check cell on one.
    started = time.perf_counter()
    await sweep(runs)
    summary(f"idle, {runs} runs per answer, {time.perf_counter() - started:.0f} s")
    if idle_only:
        return
    reset()
    # Separate interpreters, not forks: a fork of this process would copy its running threads' locks.
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
    started = time.perf_counter()
    try:
        await sweep(runs)
    finally:
        for process in hogs:
            os.kill(process.pid, signal.SIGTERM)
            process.wait(timeout=5)
    summary(f"every core busy ({len(hogs)} hogs), {runs} runs per answer, {time.perf_counter() - started:.0f} s")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--idle-only", action="store_true", help="no hogs: to try the script on a shared machine")
    parser.add_argument("--only", action="append", default=[], metavar="LESSON",
                        help="only the checks of this lesson (04, or lesson04; may be repeated)")
    args = parser.parse_args()
    ONLY.update(f"lesson{name.removeprefix('lesson')}" for name in args.only)
    started = time.perf_counter()
    asyncio.run(run(args.runs, args.idle_only))
    print(f"\n{time.perf_counter() - started:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
