"""Do the timing checks give the same verdict on a slow, noisy machine? Count it.

    python bench/verdicts.py [--runs 50]

Runs every timing check many times against right and wrong answers, first on an idle
machine, then with every core kept busy by CPU hogs this script starts and stops by PID.
Prints wrong verdicts (false passes, false fails) and, per measured signal, the margin
between the worst right answer and the best-looking wrong one. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from fastapi import FastAPI  # noqa: E402

import test_lesson01 as l01  # noqa: E402  (the right and wrong answers the tests use)
import test_lesson04 as l04  # noqa: E402
from checks.lesson01 import check_forecast, check_report, check_signup  # noqa: E402
from checks.lesson04 import check_dashboard, check_deadline, check_first_completed, check_partial_failure  # noqa: E402


def number_after(report, item_name: str, marker: str) -> float:
    """The number that follows `marker` in an item's observed text ("= 1.0×" → 1.0)."""
    observed = next(item.observed for item in report.items if item.name == item_name)
    return float(observed.split(marker, 1)[1].split()[0].rstrip("×ms;"))


def stall_fraction(report) -> float:
    """Lesson 01: longest loop stall ÷ the time the concurrent calls took (wrong ≈ 1)."""
    items = {item.name: item for item in report.items}
    stall_ms = float(items["keeps the event loop free"].observed.split()[3])
    held_ms = float(items["keeps the event loop free"].expected.split()[6])  # "under X ms: half of the Y ms ..."
    return stall_ms / held_ms


def request_ratio(report) -> float:
    """Lesson 04: the request's time ÷ its slowest upstream call (gather ≈ 1, one by one ≈ 3)."""
    return number_after(report, "the upstream calls overlap", "ms = ")


def download_ratio(report) -> float:
    """Lesson 04: the answer's time ÷ the fastest mirror's latency."""
    observed = next(item.observed for item in report.items if item.name == "answers as soon as the first mirror does")
    took, fastest = (float(part.split()[-2]) for part in observed.split(";"))
    return took / fastest


def deadline_ms(report) -> float:
    """Lesson 04: how long the answer took when the ads service was slow."""
    observed = next(item.observed for item in report.items if item.name.startswith("a slow ads service"))
    return float(observed.rsplit("after ", 1)[1].split()[0])


# (check, method, path, right answers, wrong answers, the signal it measures)
CASES = [
    (check_forecast, "GET", "/forecast/{city}", [l01.forecast_awaits, l01.forecast_def_route, l01.forecast_to_thread],
     [l01.forecast_blocking], stall_fraction),
    (check_report, "GET", "/report/{month}", [l01.report_def_route, l01.report_to_thread, l01.report_threadpool],
     [l01.report_blocking], stall_fraction),
    (check_signup, "POST", "/signup", [l01.signup_to_thread, l01.signup_threadpool, l01.signup_executor],
     [l01.signup_blocking], stall_fraction),
    (check_dashboard, "GET", "/dashboard/{user}", [l04.dashboard_gather, l04.dashboard_task_group],
     [l04.dashboard_sequential], request_ratio),
    (check_partial_failure, "GET", "/dashboard/{user}", [l04.resilient_gather, l04.resilient_task_group],
     [l04.handled_but_sequential], request_ratio),
    (check_deadline, "GET", "/ads/{user}", [l04.ads_timeout, l04.ads_wait_for], [l04.ads_no_deadline], deadline_ms),
    (check_first_completed, "GET", "/download/{name}", [l04.download_wait, l04.download_as_completed],
     [l04.download_gather_then_pick], download_ratio),
]


def hog() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    while True:
        pass


@dataclass
class Tally:
    false_fail: int = 0
    false_pass: int = 0
    runs: int = 0
    right: list[float] = field(default_factory=list)  # the measured signal, for right answers
    wrong: list[float] = field(default_factory=list)


async def sweep(runs: int, tallies: dict) -> None:
    for check, method, path, rights, wrongs, measure in CASES:
        tally = tallies.setdefault(check.title, Tally())
        for _ in range(runs):
            for endpoint in rights + wrongs:
                app = FastAPI()
                app.add_api_route(path, endpoint, methods=[method])
                report = await check.report(app)
                right = endpoint in rights
                tally.runs += 1
                if report.passed != right:
                    setattr(tally, "false_fail" if right else "false_pass", getattr(tally, "false_fail" if right else "false_pass") + 1)
                    print(f"  false {'fail' if right else 'pass'}: {endpoint.__name__}\n{report.text()}")
                try:
                    (tally.right if right else tally.wrong).append(measure(report))
                except (StopIteration, ValueError, IndexError, KeyError):
                    pass  # the item was not reached (e.g. the request itself failed)
        await asyncio.sleep(2.5)  # let calls that wrong answers leaked finish before the next check


def summary(label: str, tallies: dict) -> None:
    print(f"\n== {label}")
    print(f"{'check':<72} {'runs':>5} {'false pass':>10} {'false fail':>10}   signal: worst right · best wrong")
    for title, t in tallies.items():
        worst_right, best_wrong = max(t.right, default=float("nan")), min(t.wrong, default=float("nan"))
        print(f"{title:<72} {t.runs:5d} {t.false_pass:10d} {t.false_fail:10d}   {worst_right:8.2f} · {best_wrong:8.2f}"
              f"  ({best_wrong / worst_right:.1f}x)")
    print("signals: lesson 01 loop stall ÷ the calls' own time (limit 0.5); /dashboard request ÷ slowest call "
          "(limit 2.0); /ads ms when slow (limit 600); /download answer ÷ fastest mirror (limit 2 + 50 ms)")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    started = time.perf_counter()
    idle: dict = {}
    asyncio.run(sweep(args.runs, idle))
    summary(f"idle, {args.runs} runs per answer", idle)

    hogs = [multiprocessing.Process(target=hog, daemon=True) for _ in range(os.cpu_count() or 2)]
    for process in hogs:
        process.start()
    try:
        loaded: dict = {}
        asyncio.run(sweep(args.runs, loaded))
    finally:
        for process in hogs:
            os.kill(process.pid, signal.SIGTERM)
            process.join(timeout=5)
    summary(f"every core busy ({len(hogs)} hogs), {args.runs} runs per answer", loaded)
    print(f"\n{time.perf_counter() - started:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
