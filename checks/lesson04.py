"""Lesson 04, gather: several slow upstreams at once, partial failure, deadlines, an app-wide
bounded fan-out, first-completed with cancellation, one database session per task.

The upstreams record every call (key, start, end, how it ended), so the checks judge by exact
counts: how many calls overlapped, how many were cancelled, how many were in flight at once
across concurrent requests. Latencies are drawn at random on every run, so an answer that
relies on completion order fails every run. Clocks are used only against yardsticks the
answer cannot change: latencies the check itself set, or the task's own deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import random
import shutil
import sqlite3
import tempfile
import threading
import time
from dataclasses import dataclass

from sqlalchemy import String, event, select
from sqlalchemy.exc import IntegrityError, InvalidRequestError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from .blocking import BlockingWatch, blocking_call
from .harness import describe_exception, serve
from .observe import json_body, show_response, status_hint
from .runner import check
from .services import SlowService, UpstreamError  # noqa: F401  (UpstreamError: the lesson imports it from here)
from .timing import Span, Timeline

# ---- the stand-in upstreams --------------------------------------------------------------------


@dataclass
class Call:
    """One call to an upstream: when it ran and how it ended."""

    key: str
    start: float
    end: float | None = None
    outcome: str = "running"  # "ok", "failed", "cancelled"
    blocking: bool = False  # made with the blocking client (in some thread)
    task: asyncio.Task | None = None  # the task that waits (async client), so a leftover can be stopped
    stop: threading.Event | None = None  # ends a blocking client's wait early (a leftover in a thread)


_waiters: list[tuple[asyncio.AbstractEventLoop, object, asyncio.Future]] = []


def _wake(loop: asyncio.AbstractEventLoop) -> None:
    for waiter_loop, predicate, future in list(_waiters):
        if waiter_loop is loop and not future.done() and predicate():
            future.set_result(True)


def _changed() -> None:
    """A call started or ended: wake the checks waiting for it (from any thread)."""
    for loop in {waiter[0] for waiter in list(_waiters)}:
        if not loop.is_closed():
            loop.call_soon_threadsafe(_wake, loop)


async def until(predicate, timeout_s: float) -> bool:
    """Wait until `predicate()` holds, re-checked whenever an upstream call starts or ends;
    False if it still does not hold after `timeout_s`."""
    if predicate():
        return True
    loop = asyncio.get_running_loop()
    waiter = (loop, predicate, loop.create_future())
    _waiters.append(waiter)
    try:
        async with asyncio.timeout(timeout_s):
            await waiter[2]
        return True
    except TimeoutError:
        return bool(predicate())
    finally:
        _waiters.remove(waiter)


class Upstream(SlowService):
    """A remote service: waits `latency_s` (or the latency a check set for that key), then
    answers, or raises `UpstreamError` when it `fails` or the key is one of `fail_keys`, or
    `KeyError` (a bug in the client, not an outage) when the key is one of `bug_keys`.

    Every call is recorded in `calls`; `reset()` starts a new record (calls still running
    from before finish without touching it).
    """

    def __init__(self, name: str, latency_s: float = 0.1, fails: bool = False):
        super().__init__(name, latency_s=latency_s, fails=fails)
        self.latency_for: dict[str, float] = {}
        self.fail_keys: set[str] = set()
        self.bug_keys: set[str] = set()
        self.calls: list[Call] = []
        self._lock = threading.Lock()

    def reset(self) -> None:
        self.stop_leftovers()
        super().reset()
        self.latency_for = {}
        self.fail_keys = set()
        self.bug_keys = set()
        self.calls = []

    def running(self) -> list[Call]:
        return [call for call in self.calls if call.end is None]

    def stop_leftovers(self) -> int:
        """Stop the calls still running (left behind by an answer): a check counts them first,
        then ends them, so nothing waits on in the kernel. Returns how many there were."""
        left = self.running()
        for call in left:
            if call.task is not None and not call.task.done():
                call.task.cancel()
            if call.stop is not None:
                call.stop.set()
        return len(left)

    def latency(self, key: str) -> float:
        return self.latency_for.get(key, self.latency_s)

    def should_fail(self, key: str) -> bool:
        return self.fails or key in self.fail_keys

    @property
    def completed(self) -> int:
        return sum(call.outcome == "ok" for call in self.calls)

    def calls_for(self, key: str) -> list[Call]:
        return [call for call in self.calls if call.key == key]

    def _begin(self, key: str, blocking: bool = False) -> tuple[Call, list[Call]]:
        call = Call(key, time.perf_counter(), blocking=blocking)
        if blocking:
            call.stop = threading.Event()
        else:
            call.task = asyncio.current_task()
        with self._lock:
            record = self.calls
            record.append(call)
        _changed()
        return call, record

    def _end(self, call: Call, record: list[Call], outcome: str) -> None:
        call.end, call.outcome = time.perf_counter(), outcome
        if outcome == "cancelled" and record is self.calls:
            self.cancelled += 1
        if self.timeline is not None:
            t0 = self.timeline.t0
            self.timeline.spans.append(Span(f"{self.name}({call.key})", call.start - t0, call.end - t0, outcome))
        _changed()

    async def get(self, key: str) -> dict:
        """The async client: waits without holding the event loop."""
        call, record = self._begin(key)
        outcome = "cancelled"
        try:
            with self.in_flight.call():
                await asyncio.sleep(self.latency(key))
                return self._respond(key, call)
        finally:
            self._end(call, record, call.outcome if call.outcome != "running" else outcome)

    def _respond(self, key: str, call: Call) -> dict:
        if self.should_fail(key) or key in self.bug_keys:
            call.outcome = "failed"
            if key in self.bug_keys:
                raise KeyError("items")  # the client read a field the response did not have: a bug
            raise UpstreamError(f"{self.name} is down")
        call.outcome = "ok"
        return self.answer(key)

    def get_blocking(self, key: str) -> dict:
        """The blocking client (think `requests.get`): holds its thread while it waits."""
        blocking_call(f"{self.name}.get_blocking()")
        call, record = self._begin(key, blocking=True)
        try:
            with self.in_flight.call():
                if call.stop.wait(self.latency(key)):  # stopped by a check: a call left behind
                    call.outcome = "cancelled"
                    raise UpstreamError(f"{self.name}: call abandoned")
                return self._respond(key, call)
        finally:
            self._end(call, record, call.outcome if call.outcome != "running" else "failed")


class PriceService(Upstream):
    """Prices, except for discontinued items ("gone-..."), whose lookup fails."""

    def should_fail(self, key: str) -> bool:
        return key.startswith("gone-") or super().should_fail(key)


async def stop_leftovers(*services: Upstream) -> int:
    """Count the calls still running, stop them, and wait until they have ended."""
    left = sum(service.stop_leftovers() for service in services)
    await until(lambda: not any(service.running() for service in services), 1.0)
    return left


def peak_overlap(calls: list[Call]) -> int:
    """The most calls in progress at one instant (ends before starts at the same instant)."""
    events = sorted([(c.start, 1) for c in calls] + [(c.end if c.end is not None else float("inf"), -1) for c in calls],
                    key=lambda e: (e[0], e[1]))
    current = peak = 0
    for _, step in events:
        current += step
        peak = max(peak, current)
    return peak


# The lesson's upstreams (the notebook imports them, and UpstreamError, from here).
profile_api = Upstream("profile", latency_s=0.1)
orders_api = Upstream("orders", latency_s=0.1)
recommendations_api = Upstream("recommendations", latency_s=0.1)
ads_api = Upstream("ads", latency_s=0.05)
prices_api = PriceService("prices", latency_s=0.05)
mirrors = [Upstream(f"mirror-{name}", latency_s=0.1) for name in ("eu", "us", "ap")]
DASHBOARD = (("profile", profile_api), ("orders", orders_api), ("recommendations", recommendations_api))

USERS = ["ada", "grace", "linus", "guido", "barbara", "edsger", "margaret", "ken"]
LATENCY_STEPS = (0.06, 0.09, 0.12)  # three upstreams finish 30 ms apart, in a random order
# Overlap is judged exactly (calls in flight at once). The clock is only a backstop for gross
# delays: the request ÷ the slowest latency the check set. Right answers measured 1.0–1.2, up to
# 2.3 on a heavily loaded machine and 2.9 for a `def` route with a core kept busy; calls one
# after another give 2.25–2.6, and are caught by the overlap count anyway.
SLOW_RATIO = 5.0
ADS_DEADLINE_S = 0.3
ADS_EARLIEST_S = 0.25  # giving up before this is not "about 0.3 s"
ADS_LATEST_S = 2 * ADS_DEADLINE_S
MAX_PRICES_IN_FLIGHT = 4


# ---- shared helpers --------------------------------------------------------------------------------


def same_json(got, want) -> bool:
    """Equal values of equal JSON types (1 is not 1.0, True, "1"; null is not [] or {})."""
    if type(got) is not type(want):
        return False
    if isinstance(want, dict):
        return got.keys() == want.keys() and all(same_json(got[k], want[k]) for k in want)
    if isinstance(want, list):
        return len(got) == len(want) and all(map(same_json, got, want))
    return got == want


def _short(value, limit: int = 160) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


async def _timed_get(client, url):
    start = time.perf_counter()
    response = await client.get(url)
    return response, start, time.perf_counter()


def _fail_status(report, response, client, path, name: str | None = None):
    report.fail(name or f"GET {path} answers 200", observed=show_response(response, client), expected="200",
                hint=status_hint(response, "GET", path, client))


def _random_order(n: int = 3, avoid: tuple | None = None) -> tuple[int, ...]:
    """A random order of n items that is not `avoid` (by default, not the order given)."""
    avoid = tuple(range(n)) if avoid is None else avoid
    return random.choice([p for p in itertools.permutations(range(n)) if p != avoid])


def _step_latencies(order) -> list[float]:
    return [LATENCY_STEPS[i] + random.uniform(-0.004, 0.004) for i in order]


def _judge_loop_free(report, watch: BlockingWatch) -> bool:
    """The exact signal: blocking calls made on the event loop's thread while the check ran."""
    # A blocking client's own wait shows as a `time.sleep` at the same line: it is not the learner's sleep.
    clients = {c.where for c in watch.on_loop if c.what.endswith("get_blocking()")}
    calls = [str(c) for c in watch.on_loop if not (c.what.startswith("time.sleep") and c.where in clients)]
    if not calls:
        return report.add("keeps the event loop free", True, observed="no blocking call on the event loop's thread")
    if any(c.startswith("time.sleep") for c in calls):
        hint = ("`time.sleep` inside `async def` stops every request of the app while it sleeps: "
                "`await asyncio.sleep(...)` waits without holding the loop.")
    else:
        hint = ("`get_blocking` holds its thread while it waits, and in `async def` that thread runs the event "
                "loop: await the async client (`await api.get(...)`).")
    return report.fail("keeps the event loop free", observed=f"blocking calls on the event loop's thread: {_summary(calls)}",
                       expected="none: every wait is awaited", hint=hint)


def _summary(calls: list[str], limit: int = 2) -> str:
    seen = list(dict.fromkeys(calls))
    more = len(calls) - sum(calls.count(c) for c in seen[:limit])
    return "; ".join(seen[:limit]) + (f" (and {more} more)" if more > 0 else "")


def _reset(*services: Upstream) -> None:
    for service in services:
        service.reset()


# ---- exercise 1: the dashboard, and what it may hide -------------------------------------------


def _set_dashboard_latencies(user: str, order) -> dict[str, float]:
    latencies = dict(zip((name for name, _ in DASHBOARD), _step_latencies(order)))
    for name, service in DASHBOARD:
        service.latency_for[user] = latencies[name]
    return latencies


async def _dashboard_run(app, users, cancel_user):
    """GET the dashboard for every user at once (upstream calls drawn on one timeline), then
    cancel one more request mid-wait; count the calls left running, and stop them."""
    timeline = Timeline(title="upstream calls")
    for _, service in DASHBOARD:
        service.timeline = timeline
    try:
        async with serve(app, raise_app_exceptions=False) as client, BlockingWatch() as watch:
            results = await asyncio.gather(*(_timed_get(client, f"/dashboard/{user}") for user in users))
            # Calls the answer did not wait for end on their own (cancelled at their next step, or
            # finished): wait for that, then count what is still running and stop it.
            await until(lambda: not any(service.running() for _, service in DASHBOARD), 1.0)
            cancelled = await _cancel_mid_wait(client, f"/dashboard/{cancel_user}", _dashboard_calls(cancel_user))
    finally:
        for _, service in DASHBOARD:
            service.timeline = None
        left = await stop_leftovers(*(service for _, service in DASHBOARD))
    return client, results, watch, timeline, cancelled, left


def _dashboard_calls(user):
    return lambda: [c for _, service in DASHBOARD for c in service.calls_for(user)]


def _judge_overlap(report, users, results, latencies, hint: str) -> None:
    """Each request's own three calls overlap; it takes about as long as its slowest latency."""
    worst = None
    for user, (_, start, end) in zip(users, results):
        calls = _dashboard_calls(user)()
        took = end - start
        slowest = max(latencies[user].values())
        row = (peak_overlap(calls), took / slowest, took, user, len(calls))
        if worst is None or (row[0], -row[1]) < (worst[0], -worst[1]):
            worst = row
    overlap, ratio, took, user, count = worst
    report.add(
        "the upstream calls overlap", overlap == len(DASHBOARD) and count == len(DASHBOARD) and ratio < SLOW_RATIO,
        observed=f"at most {overlap} of {count} calls in flight at once; the request took {took * 1000:.0f} ms = "
                 f"{ratio:.1f}× the slowest call",
        expected=f"{len(DASHBOARD)} calls at once (one per upstream), under {SLOW_RATIO}× the slowest call",
        hint=("Call each upstream once per request." if count != len(DASHBOARD) else hint if overlap < len(DASHBOARD)
              else "The calls overlapped, but the answer came long after the slowest of them: what else does the "
                   "route wait for?"),
    )


# Each request of the check is one situation; the extras may fail, the profile may not.
PAGE_CASES = {"ok": (), "one extra down": ("recommendations",), "both extras down": ("orders", "recommendations")}
PROFILE_DOWN, BUG, CANCELLED = "profile down", "a bug in recommendations", "cancelled"


def _failure_words(failing) -> str:
    return " and ".join(failing) + (" fail" if len(failing) > 1 else " fails") if failing else "nothing fails"


def _raised(client, user):
    errors = client.errors_for(f"/dashboard/{user}")
    return errors[-1].exception if errors else None


def _flat(exc) -> list[BaseException]:
    """The exceptions inside an exception (group), flattened."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _flat(inner)]
    return [exc] if exc is not None else []


@check("Lesson 04 · /dashboard: calls at once, hides an extra's outage, nothing else", limit_s=15)
async def check_dashboard(report, app):
    users = random.sample(USERS, len(PAGE_CASES) + 3)
    case_of = dict(zip(users, [*PAGE_CASES, PROFILE_DOWN, BUG, CANCELLED]))
    user_for = {case: user for user, case in case_of.items()}
    _reset(*(service for _, service in DASHBOARD))
    latencies = {}
    for index, (user, case) in enumerate(case_of.items()):
        order = _random_order() if index == 0 else random.choice(list(itertools.permutations(range(3))))
        latencies[user] = _set_dashboard_latencies(user, order)
        for name, service in DASHBOARD:
            if name in PAGE_CASES.get(case, ()):
                service.fail_keys.add(user)
    # The profile fails fast while the extras are slow: what happens to them is plain to count.
    profile_down = user_for[PROFILE_DOWN]
    profile_api.fail_keys.add(profile_down)
    profile_api.latency_for[profile_down] = random.uniform(0.03, 0.05)
    orders_api.latency_for[profile_down] = random.uniform(0.3, 0.4)
    recommendations_api.latency_for[profile_down] = random.uniform(0.3, 0.4)
    recommendations_api.bug_keys.add(user_for[BUG])
    for _, service in DASHBOARD:  # the request the check cancels: every call still waiting
        service.latency_for[user_for[CANCELLED]] = random.uniform(0.6, 0.9)
    client, results, watch, timeline, cancelled, left = await _dashboard_run(app, users[:-1], users[-1])
    response_of = {user: result for user, result in zip(users, results)}
    page_users = [user_for[case] for case in PAGE_CASES]
    for user in page_users:
        response = response_of[user][0]
        if response.status_code != 200:
            return report.fail(f"GET /dashboard/{{user}} answers 200 when {_failure_words(PAGE_CASES[case_of[user]])}",
                               observed=show_response(response, client), expected="200 with what arrived",
                               hint=_page_hint(_raised(client, user), response, client, case_of[user]))
    report.add("answers 200 when nothing fails, or only extras fail", True)
    if not _judge_loop_free(report, watch):
        return
    for user in page_users:
        problem = _partial_problem(json_body(response_of[user][0]), user, PAGE_CASES[case_of[user]])
        if problem:
            observed, hint = problem
            return report.fail("each result, or an error marker with the message, under its name",
                               observed=f"when {_failure_words(PAGE_CASES[case_of[user]])}: {observed}",
                               expected='the results that arrived, and {"error": "<the exception\'s message>"} for each failed extra',
                               hint=hint)
    report.add("each result, or an error marker with the message, under its name", True)
    _judge_overlap(report, page_users, [response_of[u] for u in page_users], latencies,
                   "Independent awaits can run at once: `asyncio.gather` or a `TaskGroup` starts them together.")
    _judge_profile_down(report, client, response_of[profile_down], profile_down)
    _judge_bug(report, client, response_of[user_for[BUG]][0], user_for[BUG])
    started, outcomes = cancelled
    report.add(
        "a dashboard cancelled while it waits cancels its calls", started and outcomes == ["cancelled"] * len(DASHBOARD),
        observed=(f"the request was cancelled with its 3 calls running; they then ended: {', '.join(outcomes)}"
                  if started else "the request never had its 3 calls running at once"),
        expected="3 cancelled",
        hint="A caller may give up (a deadline around it, a server shutting down): tasks you created yourself run "
             "on unless something cancels them. `gather` and a `TaskGroup` cancel what they wait for.",
    )
    if left:
        report.fail("nothing left running after the responses", observed=f"{left} upstream calls still running "
                    "1 s after every response was sent (the check stopped them)", expected="none",
                    hint="A call nobody waits for any more still holds a connection: cancel what you no longer need.")
    report.figure("Your upstream calls: overlapping bars ran at once", timeline._repr_png_)
    report.metrics["in_requests_s"] = max(end for _, _, end in results) - min(start for _, start, _ in results)


def _page_hint(raised, response, client, case) -> str:
    leaves = _flat(raised)
    if response.status_code == 502:
        return ("An extra's outage failed the whole page: catch it where that extra is awaited (inside its own "
                "task, where a group never sees it), and keep 502 for the profile.")
    if leaves and all(isinstance(leaf, UpstreamError) for leaf in leaves):
        if isinstance(raised, BaseExceptionGroup):
            return ("A TaskGroup fails as a whole when one child raises: an extra's outage must be caught inside "
                    "its own task, where the group never sees it.")
        if case == "both extras down":
            return "Both extras may be down, not only recommendations: each extra's outage stays inside the page."
        return ("An extra's outage should not fail the page: catch `UpstreamError` around that call (or take it "
                "as a result with `return_exceptions=True`) and put the marker in its place.")
    return status_hint(response, "GET", "/dashboard/{user}", client)


def _partial_problem(body, user: str, failing) -> tuple[str, str] | None:
    if not isinstance(body, dict) or set(body) != {name for name, _ in DASHBOARD}:
        return (_short(json.dumps(body)), "Return an object with exactly the keys profile, orders and recommendations, failed or not.")
    for name, service in DASHBOARD:
        value = body[name]
        if name in failing:
            message = f"{service.name} is down"
            if not (isinstance(value, dict) and set(value) == {"error"} and isinstance(value["error"], str)
                    and message in value["error"]):
                return (f'"{name}": {_short(json.dumps(value), 80)}',
                        f'A failed call becomes {{"error": str(exc)}}: its message ("{message}") tells the page what '
                        "went wrong; null, true or a bare string does not.")
        elif not same_json(value, service.answer(user)):
            return (f'"{name}": {_short(json.dumps(value), 80)}',
                    "The calls that succeeded keep their own result under their own name; results taken in the "
                    "order they finished end up under the wrong names.")
    return None


def _judge_profile_down(report, client, result, user) -> None:
    response, _, end = result
    raised = _raised(client, user)
    if response.status_code != 502:
        profile_leaf = any(isinstance(leaf, UpstreamError) for leaf in _flat(raised))
        hint = ("Without its profile there is no page: the outage must fail the request, not hide in a marker."
                if response.status_code == 200 else
                "`except*` takes the profile's `UpstreamError` out of the TaskGroup's ExceptionGroup; then raise "
                "`HTTPException(502)`." if isinstance(raised, BaseExceptionGroup) and profile_leaf else
                "The profile service is down: that is a bad gateway, so turn its `UpstreamError` into a 502 "
                "(`HTTPException`)." if profile_leaf else status_hint(response, "GET", "/dashboard/{user}", client))
        report.fail("no profile, no page: 502", observed=f"when the profile fails: {show_response(response, client)}",
                    expected="502", hint=hint)
        return
    report.add("no profile, no page: 502", True)
    extras = [c for name, service in DASHBOARD if name != "profile" for c in service.calls_for(user)]
    outcomes = sorted(c.outcome for c in extras)
    waited = [c for c in extras if c.outcome == "ok" and c.end <= end]
    report.add(
        "when the profile fails, the extras' calls are cancelled", outcomes == ["cancelled", "cancelled"],
        observed=f"the profile failed after {profile_api.latency(user) * 1000:.0f} ms; the extras' calls then: "
                 f"{', '.join(outcomes) or 'none'}" + (f" ({len(waited)} awaited before the 502)" if waited else ""),
        expected="2 cancelled: their results would be thrown away",
        hint=("The 502 waited for calls whose results it threw away: `return_exceptions=True` waits for every call; "
              "a TaskGroup cancels the rest when one child fails." if waited else
              "After the 502 they ran on: `gather` does not cancel the others when one fails; a TaskGroup does."
              if "ok" in outcomes or "running" in outcomes else "Start all three calls at once, once per request."),
    )


def _judge_bug(report, client, response, user) -> None:
    raised = _raised(client, user)
    bug_seen = any(isinstance(leaf, KeyError) for leaf in _flat(raised))
    report.add(
        "a bug is not hidden: 500", response.status_code == 500 and bug_seen,
        observed=f"when recommendations raises KeyError('items'): {show_response(response, client)}",
        expected="500, from the KeyError itself: an error nobody planned for reaches the server's error handling",
        hint=("An outage is `UpstreamError`; a KeyError is a bug, and an error marker hides it from every log: "
              "catch the outage by name (`return_exceptions=True` and `except Exception` take everything)."
              if response.status_code == 200 else
              "Only the service's own outage error means \"down\": a bug reported as a bad gateway is looked for "
              "in the wrong place. Let anything but `UpstreamError` propagate."),
    )


# ---- exercise 2: a deadline -----------------------------------------------------------------------

ADS_HANG_S = 30.0  # "never answers": far beyond any check; the check stops what is left of it
ADS_GIVE_UP_S = 1.2  # the check stops waiting for an answer here (a route without a deadline)


async def _timed_get_within(client, url, limit_s: float):
    """Like `_timed_get`, but gives up on the request after `limit_s` (response None)."""
    start = time.perf_counter()
    try:
        async with asyncio.timeout(limit_s):
            response = await client.get(url)
    except TimeoutError:
        response = None
    return response, start, time.perf_counter()


@check("Lesson 04 · /ads gives up after 0.3 s and leaves nothing running", limit_s=10)
async def check_deadline(report, app):
    quick_user, slow_user = random.sample(USERS, 2)
    ads_api.reset()
    ads_api.latency_for[quick_user] = quick = random.uniform(0.12, 0.2)
    ads_api.latency_for[slow_user] = ADS_HANG_S
    try:
        async with serve(app, raise_app_exceptions=False) as client, BlockingWatch() as watch:
            (fast, _, _), (late, late_start, late_end) = await asyncio.gather(
                _timed_get(client, f"/ads/{quick_user}"), _timed_get_within(client, f"/ads/{slow_user}", ADS_GIVE_UP_S))
            # A cancelled call ends at its next step: give it a moment, then count what still runs.
            await until(lambda: not ads_api.running(), 0.2)
            slow_calls = ads_api.calls_for(slow_user)
            outcomes = [c.outcome for c in slow_calls]
    finally:
        left = await stop_leftovers(ads_api)
    if late is None:
        return report.fail("a service that never answers: the answer comes at about 0.3 s, without ads",
                           observed=f"no answer after {ADS_GIVE_UP_S * 1000:.0f} ms (the check then gave up)",
                           expected=f'{{"ads": null}} at about {ADS_DEADLINE_S * 1000:.0f} ms',
                           hint="A service that never answers makes the page wait for ever, unless the route "
                                "sets itself a deadline.")
    for response, user in ((fast, quick_user), (late, slow_user)):
        if response.status_code != 200:
            return _fail_status(report, response, client, f"/ads/{user}", "GET /ads/{user} answers 200")
    if not _judge_loop_free(report, watch):
        return
    expected = {"ads": ads_api.answer(quick_user)}
    if not report.add(f"an ads service that answers in {quick * 1000:.0f} ms: its ads are returned",
                      same_json(json_body(fast), expected),
                      observed=show_response(fast), expected=_short(expected),
                      hint=("Gave up too early: the deadline is 0.3 s, and this call needed less."
                            if same_json(json_body(fast), {"ads": None}) else
                            'Within the deadline, return what the ads service answered, under "ads".')):
        return
    took = late_end - late_start
    body_ok = same_json(json_body(late), {"ads": None})
    on_time = ADS_EARLIEST_S <= took <= ADS_LATEST_S
    report.add(
        "a service that never answers: the answer comes at about 0.3 s, without ads", body_ok and on_time,
        observed=f"{show_response(late)} after {took * 1000:.0f} ms",
        expected=f'{{"ads": null}} between {ADS_EARLIEST_S * 1000:.0f} and {ADS_LATEST_S * 1000:.0f} ms '
                 f"(deadline {ADS_DEADLINE_S * 1000:.0f} ms)",
        hint=("`null` means no ads: not [], {} or a string." if on_time and not body_ok else
              f"Gave up after {took * 1000:.0f} ms: the deadline is 0.3 s." if took < ADS_EARLIEST_S else
              "The page waited past its deadline: give up at 0.3 s."),
    )
    report.add(
        "the late call is cancelled, not left running", outcomes == ["cancelled"],
        observed=f"the call to the service that never answers: {', '.join(outcomes) or 'never made'}"
                 + (f"; {left} call(s) still running after the response (the check stopped them)" if left else ""),
        expected="one call, cancelled when the deadline passed",
        hint=("A call in a thread (`get_blocking`) cannot be cancelled: it holds its thread until it ends."
              if any(c.blocking for c in slow_calls) else
              "Stopping to wait is not stopping the call: it ran on after the response, holding a connection, "
              "and a service that never answers holds it for ever. Which tools cancel what they wait for?"
              if left else
              "Call the ads service once per request." if len(outcomes) > 1 else
              "Ask the ads service (once) for every request."),
    )



# ---- exercise 3: an app-wide bounded fan-out -------------------------------------------------------


def _skus(n: int, prefix: str) -> list[str]:
    return [f"{prefix}-{random.randint(100, 999)}-{i}" for i in range(n)]


@check("Lesson 04 · /prices and /price: at most 4 calls at a time from the whole app", limit_s=15)
async def check_fan_out(report, app):
    prices_api.reset()
    first = _skus(12, "sku")
    for i in range(3):  # three discontinued items first: a place a failure never gives back shows at once
        first[i] = "gone-" + first[i]
    second = _skus(10, "item")
    singles = _skus(6, "one")
    gone_single = f"gone-one-{random.randint(100, 999)}"  # asked alone afterwards: 3 failures at once are enough
    for sku in first + second + singles + [gone_single]:
        prices_api.latency_for[sku] = random.uniform(0.03, 0.07)
    paths = ["/prices?skus=" + ",".join(first), "/prices?skus=" + ",".join(second)] + [f"/price/{s}" for s in singles]
    async with serve(app, raise_app_exceptions=False) as client, BlockingWatch() as watch:
        batch = asyncio.ensure_future(asyncio.gather(*(_timed_get(client, path) for path in paths)))
        stuck = await _stuck(batch, prices_api)
        if stuck:
            return report.fail(
                "every request finishes", observed=stuck,
                expected="each call's place is given back when it ends",
                hint="Requests wait while no call runs: places taken and never given back? Every `acquire()` needs "
                     "its `release()`, even when the call fails; `async with limit:` does both.")
        results = batch.result()
        await until(lambda: all(c.end is not None for c in prices_api.calls), 2.0)
        calls = list(prices_api.calls)
        peak = prices_api.in_flight.peak
        paths.append(f"/price/{gone_single}")
        singles.append(gone_single)
        results.append(await _timed_get(client, paths[-1]))
    for path, (response, _, _) in zip(paths, results):
        if response.status_code != 200:
            route = "/prices" if path.startswith("/prices") else "/price/{sku}"
            return _fail_status(report, response, client, path.split("?")[0], f"GET {route} answers 200")

    def price(sku):
        return None if sku.startswith("gone-") else prices_api.answer(sku)

    if not _judge_loop_free(report, watch):
        return
    for skus, (response, _, _) in zip((first, second), results):
        if not same_json(json_body(response), {"prices": [price(s) for s in skus]}):
            return report.fail(
                "GET /prices: every price in the order asked, null for the discontinued", observed=show_response(response),
                expected=f'{{"prices": [<{len(skus)} results, in the order of the skus, null where the lookup failed>]}}',
                hint="gather returns results in the order of its arguments (as_completed does not); catch UpstreamError "
                     "around one call and return None in its place.")
    for sku, (response, _, _) in zip(singles, results[2:]):
        if not same_json(json_body(response), {"price": price(sku)}):
            return report.fail(f"GET /price/{{sku}}: {{\"price\": ...}}, null for a discontinued item",
                               observed=f"GET /price/{sku}: {show_response(response)}", expected=_short({"price": price(sku)}),
                               hint="Return what prices_api.get(sku) returned under \"price\", or null when it raised UpstreamError.")
    report.add("both routes answer every sku in order, null for the discontinued", True)
    if not report.add(
        f"never more than {MAX_PRICES_IN_FLIGHT} calls at once, across all requests", peak <= MAX_PRICES_IN_FLIGHT,
        observed=f"{peak} calls to prices_api in flight at once while 2 × /prices and {len(singles) - 1} × /price/{{sku}} ran together",
        expected=f"at most {MAX_PRICES_IN_FLIGHT}: the limit is the app's, not each request's or each route's",
        hint=("Requests run at once, and each one counted only its own calls: a limit made inside a request "
              "(or one per route), or none, does not bound the app. Make one limit for the whole app when it "
              "starts (lifespan state) and take a place from it around every call of both routes."),
    ):
        return
    if not report.add(
        f"{MAX_PRICES_IN_FLIGHT} calls at once when there is enough to do", peak == MAX_PRICES_IN_FLIGHT,
        observed=f"at most {peak} calls in flight at once, with {len(calls)} to make",
        expected=f"{MAX_PRICES_IN_FLIGHT} at once: the upstream allows it",
        hint="The calls wait for each other more than they must: a Lock lets one through; a Semaphore(4) lets four.",
    ):
        return
    failed = sorted((c for c in calls if c.outcome == "failed"), key=lambda c: c.end)
    after = [c for c in calls if len(failed) >= 3 and c.start >= failed[2].end]
    again = peak_overlap(after)
    report.add(
        f"a failed call gives its place back: {MAX_PRICES_IN_FLIGHT} at once again after 3 failures", again == MAX_PRICES_IN_FLIGHT,
        observed=f"after 3 lookups of discontinued items failed, at most {again} calls ran at once ({len(after)} calls)",
        expected=f"{MAX_PRICES_IN_FLIGHT}",
        hint="Does a call that fails give its place back? `async with limit:` releases it whatever happens; "
             "an `acquire()` whose `release()` is skipped by the exception loses the place for good.",
    )
    report.metrics["in_requests_s"] = max(end for _, _, end in results) - min(start for _, start, _ in results)


async def _stuck(batch: asyncio.Future, service: Upstream, quiet_s: float = 1.0) -> str:
    """Wait for `batch`; "" when it finishes, or what was seen when no call of `service` started
    or ended for `quiet_s` (far above its latencies) while none was in flight: nothing can move."""
    batch.add_done_callback(lambda _: _changed())

    def events():
        return len(service.calls), sum(c.end is not None for c in service.calls)

    while not batch.done():
        seen = events()
        moved = await until(lambda: batch.done() or events() != seen, quiet_s)
        if not moved and not batch.done() and service.in_flight.current == 0 and seen[0] > 0:
            batch.cancel()
            with contextlib.suppress(BaseException):
                await batch
            return (f"after {seen[0]} calls, none started for {quiet_s:g} s, none was running, and requests were "
                    "still waiting")
    return ""


# ---- exercise 4: first completed ------------------------------------------------------------------------


@check("Lesson 04 · /download takes the fastest mirror and cancels the others", limit_s=15)
async def check_first_completed(report, app):
    names = [f"file-{random.randint(100, 999)}-{i}.zip" for i in range(3)]
    fastest_of = dict(zip(names, random.sample(range(len(mirrors)), len(mirrors))))  # each mirror fastest once
    second = {}
    for mirror in mirrors:
        mirror.reset()
    for name in names:
        slow = sorted(random.uniform(0.25, 0.4) for _ in range(len(mirrors) - 1))
        second[name] = slow[0]
        others = iter(random.sample(slow, len(slow)))
        for index, mirror in enumerate(mirrors):
            mirror.latency_for[name] = random.uniform(0.03, 0.06) if index == fastest_of[name] else next(others)
    cancelled_name = f"file-{random.randint(100, 999)}-cancelled.zip"
    for mirror in mirrors:
        mirror.latency_for[cancelled_name] = random.uniform(0.6, 0.9)

    def calls(name):
        return [c for m in mirrors for c in m.calls_for(name)]

    async with serve(app, raise_app_exceptions=False) as client, BlockingWatch() as watch:
        results = await asyncio.gather(*(_timed_get(client, f"/download/{name}") for name in names))
        # Cancelled tasks end at their next step: wait until every call has ended, one way or the other.
        await until(lambda: all(c.end is not None for n in names for c in calls(n)), 1.5)
        answered = _all_ok(report, client, names, results)
        if answered:
            cancelled_request = await _cancel_mid_wait(client, f"/download/{cancelled_name}", lambda: calls(cancelled_name))
    if not answered or not _judge_loop_free(report, watch):
        return
    index = max(range(len(names)), key=lambda i: (results[i][2] - results[i][1]) / second[names[i]])
    name, (_, start, end) = names[index], results[index]
    took = end - start
    finished_before = [c for c in calls(name) if c.outcome == "ok" and c.end <= end]
    # Mirror calls in threads queue for the default executor's few threads: late for that reason.
    in_threads = any(c.blocking for n in names for c in calls(n))
    fastest = mirrors[fastest_of[name]].latency_for[name]
    report.add(
        "answers as soon as the first mirror does", took < second[name] and len(finished_before) == 1,
        observed=f"slowest answer {took * 1000:.0f} ms; its fastest mirror took {fastest * 1000:.0f} ms "
                 f"(the next {second[name] * 1000:.0f} ms), and {len(finished_before)} mirror(s) had answered",
        expected=f"the answer before the second mirror's {second[name] * 1000:.0f} ms, after exactly one mirror answered",
        hint=(THREADS_HINT if in_threads else
              "`asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)` returns when one is done; "
              "`gather` waits for all of them."),
    )
    outcomes = {name: sorted(c.outcome for c in calls(name)) for name in names}
    left = sum(o.count("ok") - 1 for o in outcomes.values())
    report.add(
        "the other mirrors are cancelled", all(o == ["cancelled", "cancelled", "ok"] for o in outcomes.values()),
        observed=f"per download: {'; '.join(', '.join(o) for o in outcomes.values())}",
        expected="one ok and two cancelled calls per download",
        hint=("A call running in a thread (`get_blocking`) cannot be cancelled: await the async client in tasks."
              if in_threads else
              "Tasks you no longer need keep running until you `.cancel()` them." if left > 0 else
              "Each download asks each mirror once, takes the first answer and cancels the others."),
    )
    ended, outcomes_cancelled = cancelled_request
    report.add(
        "a download cancelled while it waits cancels its mirror calls",
        ended and outcomes_cancelled == ["cancelled"] * len(mirrors),
        observed=(f"the request was cancelled with its {len(mirrors)} mirror calls running; they then ended: "
                  f"{', '.join(outcomes_cancelled) or 'never started'}" if ended else
                  "the request never had its 3 mirror calls running at once"),
        expected=f"{len(mirrors)} cancelled",
        hint="The request itself can be cancelled (a deadline around it, a server shutting down): clean-up that "
             "runs only after `wait` returns is skipped. Cancel in a `finally:`, or let a TaskGroup do it.",
    )
    report.metrics["in_requests_s"] = max(end for _, _, end in results) - min(start for _, start, _ in results)


THREADS_HINT = ("Calls in threads (`get_blocking`) wait for a free thread and cannot be cancelled: "
                "await the async client in tasks.")


def _all_ok(report, client, names, results) -> bool:
    for name, (response, _, _) in zip(names, results):
        if response.status_code != 200:
            errors = client.errors_for(f"/download/{name}")
            text = str(errors[-1].exception) if errors else ""
            hint = ("`asyncio.wait` takes tasks, not coroutines: wrap each call in `asyncio.create_task(...)`."
                    if "coroutines is forbidden" in text else
                    "Only the tasks in `done` have a result yet: take it from there." if "Result is not set" in text else
                    status_hint(response, "GET", "/download/{name}", client))
            report.fail("GET /download/{name} answers 200", observed=show_response(response, client), expected="200",
                        hint=hint)
            return False
    for index, (name, (response, _, _)) in enumerate(zip(names, results)):
        fastest = min(mirrors, key=lambda m: m.latency_for[name])
        if not same_json(json_body(response), fastest.answer(name)):
            first_listed = same_json(json_body(response), mirrors[0].answer(name))
            in_threads = any(c.blocking for m in mirrors for c in m.calls_for(name))
            report.fail("answers with the fastest mirror's result",
                        observed=f"GET /download/{name}: {show_response(response)}; the fastest was {fastest.name}",
                        expected=_short(fastest.answer(name)),
                        hint=(THREADS_HINT if in_threads else
                              "That is the first mirror in the list, not the first to answer." if first_listed else
                              "Return the result of the first call to finish, as the mirror returned it."))
            return False
    return report.add("answers with the fastest mirror's result", True, observed=f"{len(names)} downloads at once")


async def _cancel_mid_wait(client, path: str, calls, count: int = 3) -> tuple[bool, list[str]]:
    """Start a request whose `count` upstream calls are all slow, cancel it while it waits, then
    wait until those calls have ended (cancelled now, or finished later)."""
    request = asyncio.create_task(client.get(path))
    started = await until(lambda: len(calls()) >= count or request.done(), 2.0)
    started = started and len(calls()) >= count
    request.cancel()
    try:
        await request
    except BaseException:  # noqa: BLE001  (cancelled, as asked, or whatever the app did instead)
        pass
    if not started:
        return False, []
    await until(lambda: all(c.end is not None for c in calls()), 1.5)
    return True, sorted(c.outcome for c in calls())


# ---- exercise 5: one session per task ------------------------------------------------------------


class Base(DeclarativeBase):
    pass


class Visit(Base):
    __tablename__ = "visits"

    id: Mapped[int] = mapped_column(primary_key=True)
    page: Mapped[str] = mapped_column(String(50))


class _Sessions:
    """Sessions opened and closed, and transactions open at the same time."""

    def __init__(self) -> None:
        self.opened = self.closed = 0
        self.in_transaction: set[int] = set()
        self.peak_transactions = 0
        self.refused: set[str] = set()  # pages whose flush the database refuses

    @property
    def open_now(self) -> int:
        return self.opened - self.closed


def _refused(page: str) -> IntegrityError:
    return IntegrityError("INSERT INTO visits (page) VALUES (?)", (page,),
                          sqlite3.IntegrityError("FOREIGN KEY constraint failed"))


def _counting_session_classes(counts: _Sessions):
    class CountedSync(Session):
        pass

    @event.listens_for(CountedSync, "after_begin")
    def began(session, transaction, connection):
        counts.in_transaction.add(id(session))
        counts.peak_transactions = max(counts.peak_transactions, len(counts.in_transaction))

    @event.listens_for(CountedSync, "after_commit")
    @event.listens_for(CountedSync, "after_rollback")
    def ended(session, *args):
        counts.in_transaction.discard(id(session))

    @event.listens_for(CountedSync, "before_flush")
    def refuse(session, flush_context, instances):
        # The database refuses a visit whose page was deleted meanwhile: a foreign key, here simulated.
        for page in sorted({obj.page for obj in session.new if isinstance(obj, Visit)} & counts.refused):
            raise _refused(page)

    class Counted(AsyncSession):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._counted_closed = False
            counts.opened += 1

        async def close(self):
            if not self._counted_closed:
                self._counted_closed = True
                counts.closed += 1
            await super().close()

    return Counted, CountedSync


def _one_line(exc: BaseException) -> str:
    """An exception (group) in one short line: its type and the first line of its message."""
    if isinstance(exc, BaseExceptionGroup):
        inner = ", ".join(dict.fromkeys(type(leaf).__name__ for leaf in _flat(exc)))
        return f"{type(exc).__name__} of {inner}: {_one_line(_flat(exc)[0]).split(': ', 1)[-1]}"
    return _short(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", 120)


def _pages_returned(result) -> list[str] | None:
    """The pages an answer returned as not stored, in any order; None if it is not a collection of str."""
    if isinstance(result, (list, tuple, set, frozenset)) and all(isinstance(page, str) for page in result):
        return sorted(result)
    return None


@check("Lesson 04 · record_visits: one session per task, one refusal loses nothing else", limit_s=15)
async def check_one_session_per_task(report, record_visits):
    pages = [f"/page/{random.randint(100, 999)}-{i}" for i in range(7)]
    refused = random.choice(pages)  # any of them: an answer cannot know which in advance
    counts = _Sessions()
    counts.refused = {refused}
    folder = tempfile.mkdtemp(prefix="course-lesson04-")
    engine = create_async_engine(f"sqlite+aiosqlite:///{os.path.join(folder, 'visits.db')}")
    raised = result = None
    try:
        async with engine.begin() as connection:
            await connection.run_sync(Base.metadata.create_all)
        session_class, sync_class = _counting_session_classes(counts)
        sessions = async_sessionmaker(engine, class_=session_class, sync_session_class=sync_class, expire_on_commit=False)
        async with BlockingWatch() as watch:
            try:
                result = await record_visits(sessions, list(pages))
            except Exception as exc:  # noqa: BLE001  (judged below: what it raised, and what it left open)
                raised = exc
            open_at_return = counts.open_now
            # Tasks left running still write: let them end before the database goes away.
            for _ in range(100):
                if not counts.open_now:
                    break
                await asyncio.sleep(0.01)
        async with engine.connect() as connection:
            stored = sorted(await connection.scalars(select(Visit.page)))
    finally:
        await engine.dispose()
        shutil.rmtree(folder, ignore_errors=True)
    left = f"; {open_at_return} session(s) still open when it returned" if open_at_return else ""
    # Judged by the count, not by which error came first: a shared session meets the refusal or
    # its own concurrent use first, by scheduling.
    if raised is not None and (counts.opened < len(pages) or any(
            isinstance(leaf, InvalidRequestError) and not isinstance(leaf, IntegrityError) for leaf in _flat(raised))):
        return report.fail("each task has its own session",
                           observed=f"raised {_one_line(raised)}; {counts.opened} session(s) for {len(pages)} pages",
                           expected="no error: each task writes through a session of its own",
                           hint="One AsyncSession runs one operation at a time: open a session inside each task.")
    if raised is not None:
        return report.fail(
            "one refused visit does not fail the call", observed="raised " + _one_line(raised) + left,
            expected=f"record_visits returns, with the {len(pages) - 1} others stored",
            hint=("A TaskGroup cancels every other write when one fails: here the visits do not depend on each other."
                  if isinstance(raised, BaseExceptionGroup) else
                  "The visits are independent: one write's failure is that write's, and the others go on. Which way "
                  "of waiting for them all hands you each failure instead of raising the first?"))
    if not _judge_loop_free(report, watch):
        return
    others = sorted(set(pages) - {refused})
    report.add("every other visit is stored", stored == others,
               observed=f"{len(set(stored) & set(others))} of the {len(others)} others stored",
               expected=f"all {len(others)}",
               hint=("Commit each task's session: what is not committed is rolled back at close." if not stored else
                     "Some writes were cancelled or never made: the visits are independent, and a TaskGroup cancels "
                     "the others when one fails."))
    returned = _pages_returned(result)
    report.add("returns the pages it could not store", returned == [refused],
               observed=f"returned {_short(repr(result), 100)}; the database refused {refused}",
               expected=f"[{refused!r}]: a refusal must not be hidden",
               hint="Keep what each task's failure was, with its page: the caller decides what to do with the pages "
                    "that were refused.")
    report.add(
        "one session per task, writing at the same time", counts.opened == len(pages) and counts.peak_transactions >= 2,
        observed=f"sessions opened: {counts.opened}; at most {counts.peak_transactions} transactions open at once",
        expected=f"{len(pages)} sessions, at least 2 transactions at once",
        hint=("Each task opens its own session; start the tasks together so they run at once."
              if counts.opened == len(pages) else "One session per page, opened inside the task that writes it."),
    )
    report.add("every session is closed when record_visits returns", not open_at_return and counts.closed == counts.opened,
               observed=f"{counts.opened - open_at_return} of {counts.opened} closed when it returned",
               expected="all", hint="A session is closed by `async with sessions() as session:`, and only once its task "
                                    "has ended: wait for every task before returning.")
