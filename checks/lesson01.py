"""Lesson 01, the event loop: three routes that must not block it.

The services below are what the lesson's app calls; the checks read their exact
in-flight counters, and judge stalls by ratios to one call's time measured in the same run.
"""

from __future__ import annotations

import random

from .harness import serve
from .observe import json_body, show_response, status_hint
from .runner import check
from .services import LegacyReports, PasswordHasher, SlowService, UserStore
from .timing import ConcurrencyRun, InFlight, measure_concurrency

forecast_api = SlowService("forecast", latency_s=0.1)
legacy_reports = LegacyReports(latency_s=0.1)
hash_password = PasswordHasher(target_s=0.2)
user_store = UserStore()

N = 5  # requests sent at once
# Blocking code holds the loop for every call in turn: about the sum of the N calls' times.
# A stall over half of that sum means the loop was held; right answers stay under 0.2 of it.
STALL_FRACTION = 0.5
MIN_PEAK = 3  # of N calls in flight at once; blocking code never gets past 1
MAX_IO_RATIO = 2.5  # total ÷ one request: ~1.05 when they overlap, ≥ 5 when they queue

CITIES = ["Lisbon", "Nairobi", "Osaka", "Quito", "Tromsø", "Hobart", "Tbilisi"]
MONTHS = ["2026-01", "2026-02", "2026-03", "2026-04", "2026-05", "2026-06"]


def _judge_timing(report, run: ConcurrencyRun, counter: InFlight, call: str, io_bound: bool, hint: str) -> None:
    """Judge the N concurrent requests by the service's own counter, measured in this run."""
    concurrent_calls = counter.durations[1:]  # the first call was the warm-up request's
    held_s = sum(concurrent_calls)  # how long the calls would hold the loop if run on it
    limit_ms = STALL_FRACTION * held_s * 1000
    gap_ms = run.max_gap_s * 1000
    report.add(
        "keeps the event loop free",
        gap_ms < limit_ms,
        observed=f"longest event-loop stall {gap_ms:.0f} ms while {N} requests ran",
        expected=(
            f"under {limit_ms:.0f} ms: half of the {held_s * 1000:.0f} ms that the {len(concurrent_calls)} "
            f"calls to {call} took, which is how long they would hold the loop if they ran on it"
        ),
        hint=hint,
    )
    overlap = f"at most {counter.peak} of {N} calls to {call} ran at once"
    ratio = f"{N} requests took {run.total_s * 1000:.0f} ms = {run.ratio:.1f}× one request"
    concurrent = counter.peak >= MIN_PEAK and (run.ratio < MAX_IO_RATIO or not io_bound)
    report.add(
        "serves requests concurrently",
        concurrent,
        observed=f"{overlap}; {ratio}",
        expected=f"at least {MIN_PEAK} at once" + (f", under {MAX_IO_RATIO}× one request" if io_bound else ""),
        hint="Requests that wait one after another mean each one held the event loop while it worked.",
    )
    report.figure(f"Your {N} requests: overlapping bars are concurrent, a staircase is not", run.timeline._repr_png_)
    # Time spent inside the learner's requests: the check's own overhead is the rest.
    report.metrics["in_requests_s"] = run.single_s + run.total_s


def _first_ok(report, run: ConcurrencyRun, client, method: str, path: str, check_body) -> bool:
    """Judge the warm-up response and all concurrent ones; False when timing is not worth judging."""
    responses = [run.first, *run.responses]
    for response in responses:
        if isinstance(response, BaseException):
            report.fail(f"{method} {path} answers", observed=f"the request failed: {response!r}")
            return False
        if response.status_code != 200:
            report.fail(f"{method} {path} answers 200", observed=show_response(response, client), expected="200",
                        hint=status_hint(response, method, path, client))
            return False
        problem = check_body(response)
        if problem:
            report.fail(f"{method} {path} answers with the right body", observed=show_response(response), expected=problem,
                        hint="Return what the task asks for; the check compares the body exactly.")
            return False
    report.add(f"{method} {path} answers 200 with the right body", True)
    return True


@check("Lesson 01 · GET /forecast/{city} awaits the forecast service", limit_s=10)
async def check_forecast(report, app):
    city = random.choice(CITIES)
    path = f"/forecast/{city}"
    expected = forecast_api.answer(city)
    forecast_api.in_flight.reset()
    async with serve(app, raise_app_exceptions=False) as client:
        run = await measure_concurrency(client, "GET", path, n=N)
        if _first_ok(report, run, client, "GET", path, lambda r: None if json_body(r) == expected else str(expected)):
            _judge_timing(report, run, forecast_api.in_flight, "forecast_api", io_bound=True,
                          hint="`get_blocking` holds the thread while it waits, and in `async def` that thread runs "
                               "the event loop. The service also has a client you can await.")


@check("Lesson 01 · GET /report/{month} keeps the blocking SDK off the loop", limit_s=10)
async def check_report(report, app):
    month = random.choice(MONTHS)
    path = f"/report/{month}"
    expected = {"month": month, "pages": len(month) + 3}
    legacy_reports.in_flight.reset()
    async with serve(app, raise_app_exceptions=False) as client:
        run = await measure_concurrency(client, "GET", path, n=N)
        if _first_ok(report, run, client, "GET", path, lambda r: None if json_body(r) == expected else str(expected)):
            _judge_timing(report, run, legacy_reports.in_flight, "legacy_reports.render()", io_bound=True,
                          hint="The SDK has no async API, so it must not run on the event loop's thread. "
                               "Which kind of route does FastAPI run in its thread pool?")


@check("Lesson 01 · POST /signup hashes in a thread, then awaits the store", limit_s=10)
async def check_signup(report, app):
    email = f"learner{random.randint(100, 999)}@example.com"
    password = f"correct-horse-{random.randint(1000, 9999)}"
    hash_password.in_flight.reset()
    user_store.users.clear()

    def body_problem(response) -> str | None:
        body = json_body(response)
        if not isinstance(body, dict) or body.get("email") != email or not isinstance(body.get("id"), int):
            return f'{{"id": <int>, "email": "{email}"}}'
        saved = user_store.users.get(body["id"])
        if saved is None or saved["password_hash"] != hash_password.results.get(password):
            return "a user saved with `await user_store.save(email, hash_password(password))`"
        return None

    async with serve(app, raise_app_exceptions=False) as client:
        run = await measure_concurrency(client, "POST", "/signup", n=N, json={"email": email, "password": password})
        if _first_ok(report, run, client, "POST", "/signup", body_problem):
            _judge_timing(report, run, hash_password.in_flight, "hash_password()", io_bound=False,
                          hint="Hashing is CPU work: inside `async def` it holds the event loop. The route must stay "
                               "`async def` to await the store, so hand just the hashing to a thread and await that.")
