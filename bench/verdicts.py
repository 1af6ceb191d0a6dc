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

import test_lesson01 as answers  # noqa: E402  (the right and wrong answers the tests use)
from checks.lesson01 import check_forecast, check_report, check_signup  # noqa: E402

CASES = [
    (check_forecast, "GET", "/forecast/{city}", [answers.forecast_awaits, answers.forecast_def_route,
                                                answers.forecast_to_thread], [answers.forecast_blocking]),
    (check_report, "GET", "/report/{month}", [answers.report_def_route, answers.report_to_thread,
                                             answers.report_threadpool], [answers.report_blocking]),
    (check_signup, "POST", "/signup", [answers.signup_to_thread, answers.signup_threadpool,
                                       answers.signup_executor], [answers.signup_blocking]),
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
    # the loop stall as a fraction of the time the calls would hold it if run on it; calls at once
    right_stall: list[float] = field(default_factory=list)
    wrong_stall: list[float] = field(default_factory=list)
    right_peak: list[int] = field(default_factory=list)
    wrong_peak: list[int] = field(default_factory=list)


def signals(report) -> tuple[float, int]:
    """Read the stall fraction and the peak back from the report's observed texts."""
    items = {item.name: item for item in report.items}
    stall_ms = float(items["keeps the event loop free"].observed.split()[3])
    held_ms = float(items["keeps the event loop free"].expected.split()[6])  # "under X ms: half of the Y ms ..."
    peak = int(items["serves requests concurrently"].observed.split()[2])
    return stall_ms / held_ms, peak


async def sweep(runs: int, tallies: dict) -> None:
    for check, method, path, rights, wrongs in CASES:
        tally = tallies.setdefault(check.title, Tally())
        for i in range(runs):
            for endpoint in rights + wrongs:
                app = FastAPI()
                app.add_api_route(path, endpoint, methods=[method])
                report = await check.report(app)
                right = endpoint in rights
                tally.runs += 1
                if report.passed != right:
                    if right:
                        tally.false_fail += 1
                        print(f"  false fail: {endpoint.__name__}\n{report.text()}")
                    else:
                        tally.false_pass += 1
                        print(f"  false pass: {endpoint.__name__}\n{report.text()}")
                try:
                    stall, peak = signals(report)
                except (KeyError, ValueError, IndexError):
                    continue
                (tally.right_stall if right else tally.wrong_stall).append(stall)
                (tally.right_peak if right else tally.wrong_peak).append(peak)


def summary(label: str, tallies: dict) -> None:
    print(f"\n== {label}")
    print(f"{'check':<64} {'runs':>5} {'false pass':>10} {'false fail':>10}  stall ÷ time held: worst right · best wrong (margin)   peak: min right · max wrong")
    for title, t in tallies.items():
        worst_right, best_wrong = max(t.right_stall), min(t.wrong_stall)
        print(f"{title:<64} {t.runs:5d} {t.false_pass:10d} {t.false_fail:10d}  "
              f"{worst_right:.2f} · {best_wrong:.2f} ({best_wrong / worst_right:.1f}x)"
              f"{'':>24}{min(t.right_peak)} · {max(t.wrong_peak)}")


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
