"""Lesson 07, exercise 2's check: one limit of calls to the reports server, shared by every
route, judged by the reports client's exact in-flight counts.
"""

from __future__ import annotations

import asyncio
import inspect
import random

import anyio.to_thread

from ..harness import describe_exception, serve
from ..observe import json_body, show_response, status_hint
from ..runner import check
from .judge_common import _skipped_on_event, _wait_until
from .world import ReportsClient, SECOND_LOOP_S, on_another_loop


# ---- exercise 2: one limit for a scarce upstream, shared by several routes --------------------------

REPORTS_LIMIT = 3


def _report_name() -> str:
    return random.choice(["sales", "stock", "returns", "payroll", "visits"]) + f"-{random.randint(100, 999)}"


async def _burst(client, reports: ReportsClient, count: int):
    """`count` requests, half to each route, in random order; samples the thread pool meanwhile.
    Returns (responses, most worker threads busy at once)."""
    paths = [f"/reports/{_report_name()}" for _ in range(count // 2)] + \
            [f"/exports/{_report_name()}" for _ in range(count - count // 2)]
    random.shuffle(paths)
    threads = []
    limiter = anyio.to_thread.current_default_thread_limiter()

    async def sample():
        while True:
            threads.append(limiter.borrowed_tokens)
            await asyncio.sleep(0.005)

    sampler = asyncio.create_task(sample())
    try:
        responses = await asyncio.gather(*(client.get(path) for path in paths))
    finally:
        sampler.cancel()
    return responses, max(threads, default=0)


PING_WAIT_S = 2.0


async def _ping_while_busy(client, reports: ReportsClient):
    """With every call to the reports server held at the server, does GET /ping still answer?
    Returns (response or None if it had to wait, calls that were running)."""
    reports.gate = asyncio.Event()
    tasks = [asyncio.ensure_future(client.get(f"/reports/{_report_name()}")) for _ in range(REPORTS_LIMIT + 1)]
    try:
        await _wait_until(lambda: reports.in_flight.current >= REPORTS_LIMIT, 1.0)
        busy = reports.in_flight.current
        try:
            async with asyncio.timeout(PING_WAIT_S):
                ping = await client.get("/ping")
        except TimeoutError:
            ping = None
    finally:
        reports.gate.set()
        reports.gate = None
    await asyncio.gather(*tasks, return_exceptions=True)
    return ping, busy


def _draw_in_flight(reports: ReportsClient, limit: int):
    def draw(ax):
        log = sorted(reports.log)
        times, counts, current = [0.0], [0], 0
        for when, step in log:
            current += step
            times.append(when * 1000)
            counts.append(current)
        t0 = times[1] if len(times) > 1 else 0.0
        ax.step([t - t0 if i else 0.0 for i, t in enumerate(times)], counts, where="post", color="#2f81f7")
        ax.axhline(limit, color="#cf222e", linestyle="--", linewidth=1)
        ax.text(0, limit, f" the server's limit: {limit}", color="#cf222e", va="bottom", fontsize=8)
        ax.set_xlabel("time (ms)")
        ax.set_ylabel("calls in flight")
        ax.set_ylim(0, max(max(counts), limit) + 1)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)

    def png():
        from ..plots import render_png

        return render_png(draw, height=2.2)

    return png


class _SemaphoresMade:
    """Counts the `asyncio.Semaphore`s created while active (per-request semaphores show up here)."""

    def __enter__(self) -> "_SemaphoresMade":
        self.count, self._init = 0, asyncio.Semaphore.__init__
        watch, original = self, self._init

        def counted(semaphore, *args, **kwargs):
            watch.count += 1
            original(semaphore, *args, **kwargs)

        asyncio.Semaphore.__init__ = counted
        return self

    def __exit__(self, *exc_info) -> None:
        asyncio.Semaphore.__init__ = self._init


def _limits_on(app, paths: tuple[str, ...]) -> list:
    """The dependencies with `max_concurrency` on these routes: (function, does it yield)."""
    found = []

    def walk(dependant) -> None:
        for sub in getattr(dependant, "dependencies", []) or []:
            if getattr(sub, "concurrency", None) is not None:
                call = getattr(sub, "call", None)
                found.append((call, inspect.isasyncgenfunction(call) or inspect.isgeneratorfunction(call)))
            walk(sub)

    for route in getattr(getattr(app, "router", None), "routes", []) or []:
        if getattr(route, "path", None) in paths:
            walk(getattr(route, "dependant", None))
    return found


def _unlimited_hint(app, per_request_semaphores: int) -> str:
    """Why nothing held the calls back, from what the app holds (exact), not from a guess."""
    limits = _limits_on(app, ("/reports/{name}", "/exports/{name}"))
    returning = [call for call, yields in limits if not yields]
    if returning:
        name = getattr(returning[0], "__name__", "the dependency")
        return (f"`{name}` has `max_concurrency` but returns instead of yielding: a dependency without `yield` "
                f"gives its place back when it returns, before the route calls the server. Yield the client, so "
                f"the place is held until the request is over.")
    if per_request_semaphores:
        return (f"{per_request_semaphores} semaphores were made while those 12 requests ran: a semaphore made inside "
                f"the request limits that request only. One limit for every request: `Depends(..., "
                f"max_concurrency=3)` on the dependency that gives the routes the client.")
    if not limits:
        return ("Nothing on these routes limits the calls: put `max_concurrency` on the dependency that gives the "
                "routes the reports client (FastAPI's guidance: on the dependency that owns the resource).")
    return "The routes' limit did not hold the calls back: the place must be held while the route calls the server."


LOOP_BOUND_HINT = ("A semaphore made once (at import, or when the app is built) belongs to the first event loop that "
                   "waited on it, and raises on any other: each test of a suite runs on a loop of its own, and so "
                   "does each worker. `Depends(..., max_concurrency=N)` keeps one semaphore per event loop.")


async def _judge_second_loop(report, app, reports: ReportsClient) -> None:
    """The same app, started again on a new event loop (the next test of a suite): the limit still holds."""
    reports.in_flight.reset()
    paths = [f"/reports/{_report_name()}" for _ in range(6)] + [f"/exports/{_report_name()}" for _ in range(6)]
    try:
        results = await on_another_loop(app, paths)
    except TimeoutError:
        report.fail("the limit works on another event loop too", observed=f"12 requests from a second event loop: "
                    f"not all answered within {SECOND_LOOP_S:g} s", expected="12 × 200",
                    hint="Something the routes wait for belongs to the first event loop: make the limit with "
                         "`Depends(..., max_concurrency=N)`, which keeps one per loop.")
        return
    errors = [r for r in results if isinstance(r, BaseException)]
    failed = [r for r in results if not isinstance(r, BaseException) and r.status_code != 200]
    if errors or failed:
        text = describe_exception(errors[0]) if errors else f"{failed[0].status_code} {failed[0].text[:100]}"
        bound = bool(errors) and "different event loop" in str(errors[0])
        report.fail("the limit works on another event loop too",
                    observed=f"12 requests from a second event loop (as the next test of a suite makes): "
                             f"{len(errors) + len(failed)} failed, e.g. {text}",
                    expected="12 × 200, at most 3 calls at once",
                    hint=LOOP_BOUND_HINT if bound else "Look at the error: the app must work on any event loop.")
        return
    report.add("the limit works on another event loop too", reports.in_flight.peak == REPORTS_LIMIT,
               observed=f"12 requests from a second event loop: at most {reports.in_flight.peak} calls at once",
               expected=f"{REPORTS_LIMIT}", hint=LOOP_BOUND_HINT)


@check("Lesson 07 · one limit of 3 calls to the reports server, shared by every route", limit_s=15)
async def check_shared_limit(report, make_app, add_report_routes):
    reports = ReportsClient(latency_s=(random.uniform(0.05, 0.06), random.uniform(0.08, 0.1)))
    app = make_app(add_report_routes, reports)
    async with serve(app, raise_app_exceptions=False) as client:
        for route, key, expected in (("reports", "rows", ReportsClient.rows), ("exports", "csv", ReportsClient.csv)):
            name = _report_name()
            response = await client.get(f"/{route}/{name}")
            want = {"name": name, key: expected(name)}
            if response.status_code != 200 or json_body(response) != want:
                _skipped_on_event(report, app)
                report.fail(f"GET /{route}/{{name}} answers", observed=show_response(response, client),
                            expected=f"200 {str(want)[:120]}", hint=status_hint(response, "GET", f"/{route}/{{name}}", client))
                return
        report.add("GET /reports/{name} and GET /exports/{name} answer", True)
        reports.in_flight.reset()
        for kind in reports.by_kind.values():
            kind.reset()
        reports.log.clear()
        responses, threads = await _burst(client, reports, 12)
        peak = reports.in_flight.peak
        failed = [r for r in responses if r.status_code != 200]
        picture = _draw_in_flight(reports, REPORTS_LIMIT)
        # after two failed calls, is every place still there?
        for _ in range(2):
            await client.get(f"/reports/missing-{random.randint(100, 999)}")
        reports.in_flight.reset()
        await _burst(client, reports, 12)
        peak_after = reports.in_flight.peak
        ping, busy = await _ping_while_busy(client, reports)
        one_route, made = None, 0
        if peak > REPORTS_LIMIT:  # which mistake? 12 requests to one route alone tell them apart
            reports.in_flight.reset()
            with _SemaphoresMade() as semaphores:
                await asyncio.gather(*(client.get(f"/reports/{_report_name()}") for _ in range(12)))
            one_route, made = reports.in_flight.peak, semaphores.count
    report.figure(f"Calls to the reports server in flight: 12 requests on two routes at once, 2 that fail, 12 more "
                  f"(limit {REPORTS_LIMIT})",
                  picture)
    if failed:
        report.fail("12 requests at once all answer 200", observed=f"{len(failed)} failed, e.g. {show_response(failed[0], client)}",
                    expected="all 200", hint=status_hint(failed[0], "GET", failed[0].request.url.path, client))
        return
    if one_route is None:
        hint, alone = "", ""
    elif one_route <= REPORTS_LIMIT:
        hint = ("Each route kept its own limit: every `Depends(..., max_concurrency=N)` object is a limit of its "
                "own, even for the same function. Declare it once (an `Annotated` alias) and use that in both.")
        alone = f"; 12 requests to /reports alone: at most {one_route} at once"
    elif one_route >= 12:
        hint = _unlimited_hint(app, made)
        alone = f"; 12 requests to /reports alone: {one_route} at once"
    else:
        hint = f"The limit lets {one_route} through at a time: the server takes {REPORTS_LIMIT}."
        alone = f"; 12 requests to /reports alone: at most {one_route} at once"
    report.add(f"never more than {REPORTS_LIMIT} calls at once, both routes together", peak <= REPORTS_LIMIT,
               observed=f"{peak} calls at once from the two routes{alone}",
               expected=f"at most {REPORTS_LIMIT}", hint=hint)
    if peak <= REPORTS_LIMIT:
        report.add(f"{REPORTS_LIMIT} calls at once when requests wait", peak == REPORTS_LIMIT,
                   observed=f"at most {peak} at once, with 12 requests waiting",
                   expected=f"{REPORTS_LIMIT}: the server takes that many",
                   hint=f"The limit is lower than the {REPORTS_LIMIT} the server allows: requests wait for nothing.")
    report.add("waiting requests hold no thread", threads <= REPORTS_LIMIT,
               observed=f"up to {threads} worker threads busy while requests waited",
               expected=f"at most {REPORTS_LIMIT}",
               hint="A `threading` lock or semaphore waits by blocking a worker thread (40 in all, shared by every "
                    "`def` route and sync dependency). Wait with `await` instead: FastAPI's limit needs no thread.")
    report.add("GET /ping does not wait for the reports server", ping is not None and ping.status_code == 200,
               observed=(f"/ping still unanswered after {PING_WAIT_S:g} s" if ping is None else f"/ping answered {ping.status_code}")
                        + f", while {busy} report call(s) were held at the server",
               expected="200 at once: /ping does not call the reports server",
               hint="Only the routes that call the reports server should wait: put the limit on their dependency, "
                    "not on every request (middleware).")
    if peak == REPORTS_LIMIT:
        report.add("a failed call gives its place back", peak_after == REPORTS_LIMIT,
                   observed=f"after 2 calls that raised ReportNotFound: at most {peak_after} calls at once",
                   expected=f"{REPORTS_LIMIT} again",
                   hint="A place taken must be given back when the call raises: `async with` (or a `yield` "
                        "dependency, whose exit always runs) does it; a release after the call does not.")
    if report.passed:
        await _judge_second_loop(report, app, reports)
