"""Lesson 04, gather: several slow upstreams at once, partial failure, deadlines, bounded
fan-out and first-completed — judged by the upstreams' exact counters and by ratios to their
own latency, measured in the same run.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import tempfile
import time

from sqlalchemy import String, select
from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from .harness import describe_exception, serve
from .observe import json_body, show_response, status_hint
from .runner import check
from .services import SlowService, UpstreamError  # noqa: F401  (UpstreamError: the lesson imports it from here)
from .timing import Timeline

class PriceService(SlowService):
    """Prices, except for discontinued items ("gone-..."), whose lookup fails."""

    def should_fail(self, key: str) -> bool:
        return key.startswith("gone-")


# The lesson's upstreams (the notebook imports them, and UpstreamError, from here).
profile_api = SlowService("profile", latency_s=0.1)
orders_api = SlowService("orders", latency_s=0.1)
recommendations_api = SlowService("recommendations", latency_s=0.1)
flaky_recommendations = SlowService("recommendations", latency_s=0.1, fails=True)
ads_api = SlowService("ads", latency_s=0.05)
prices_api = PriceService("prices", latency_s=0.05)
mirrors = [SlowService(f"mirror-{name}", latency_s=0.1) for name in ("eu", "us", "ap")]

USERS = ["ada", "grace", "linus", "guido", "barbara"]
SEQUENTIAL_RATIO = 2.0  # request time ÷ one upstream call: ~1.0 with gather, ~3.0 one after another
ADS_DEADLINE_S = 0.3
MAX_PRICES_IN_FLIGHT = 4


async def _timed_get(client, url):
    start = time.perf_counter()
    response = await client.get(url)
    return response, time.perf_counter() - start


def _fail_status(report, response, client, path):
    report.fail(f"GET {path} answers 200", observed=show_response(response, client), expected="200",
                hint=status_hint(response, "GET", path, client))


# ---- exercise 1: gather ----------------------------------------------------------------------

@check("Lesson 04 · /dashboard calls its three upstreams at once", limit_s=10)
async def check_dashboard(report, app):
    user = random.choice(USERS)
    path = f"/dashboard/{user}"
    services = (profile_api, orders_api, recommendations_api)
    client, response, took, timeline = await _recorded_get(app, path, services)
    if response.status_code != 200:
        return _fail_status(report, response, client, path)
    expected = {"profile": profile_api.answer(user), "orders": orders_api.answer(user),
                "recommendations": recommendations_api.answer(user)}
    if not report.add("answers with the three results", json_body(response) == expected,
                      observed=show_response(response), expected=str(expected)[:160],
                      hint="Return the three upstream answers under the keys profile, orders, recommendations."):
        return
    _judge_overlap(report, timeline, services, took, "Independent awaits can run at once: `asyncio.gather` "
                                                     "takes awaitables and returns their results in order.")


def _judge_overlap(report, timeline: Timeline, services, took: float, hint: str) -> None:
    """The calls' own spans say how many ran at once; their own durations are the yardstick."""
    slowest = max((span.duration for span in timeline.spans), default=0.0)
    overlap = timeline.peak_overlap()
    ratio = took / slowest if slowest else float("inf")
    report.add(
        "the upstream calls overlap", overlap == len(services) and ratio < SEQUENTIAL_RATIO,
        observed=f"at most {overlap} of {len(services)} calls in flight at once; the request took "
                 f"{took * 1000:.0f} ms = {ratio:.1f}× the slowest call",
        expected=f"{len(services)} at once, under {SEQUENTIAL_RATIO}× the slowest call",
        hint=hint,
    )
    report.figure("Your upstream calls: overlapping bars ran at once", timeline._repr_png_)
    report.metrics["in_requests_s"] = took


async def _recorded_get(app, path: str, services):
    """GET `path` once, with the services recording their calls on one new timeline."""
    timeline = Timeline(title=f"upstream calls of GET {path}")
    for service in services:
        service.reset()
        service.timeline = timeline
    try:
        async with serve(app, raise_app_exceptions=False) as client:
            response, took = await _timed_get(client, path)
    finally:
        for service in services:
            service.timeline = None
    return client, response, took, timeline


# ---- exercise 2: partial failure ---------------------------------------------------------------

@check("Lesson 04 · /dashboard survives a failing upstream", limit_s=10)
async def check_partial_failure(report, app):
    user = random.choice(USERS)
    path = f"/dashboard/{user}"
    services = (profile_api, orders_api, flaky_recommendations)
    client, response, took, timeline = await _recorded_get(app, path, services)
    if response.status_code != 200:
        report.fail(f"GET {path} answers 200 although recommendations fail", observed=show_response(response, client),
                    expected="200 with the other results",
                    hint="One failing upstream should not fail the page: `gather(..., return_exceptions=True)` "
                         "hands you the exception as a result, to turn into an error marker.")
        return
    body = json_body(response) or {}
    marker = body.get("recommendations")
    report.add(
        "the other results are there, the failed one is marked", body.get("profile") == profile_api.answer(user)
        and body.get("orders") == orders_api.answer(user) and isinstance(marker, dict) and "error" in marker,
        observed=show_response(response), expected='profile and orders, and "recommendations": {"error": ...}',
        hint="Check each result: an exception becomes {\"error\": str(exc)}, anything else stays as it is.",
    )
    _judge_overlap(report, timeline, services, took, "Keep the calls concurrent while handling the failure.")


# ---- exercise 3: a deadline -----------------------------------------------------------------------

@check("Lesson 04 · /ads gives up after 0.3 s and leaves nothing running", limit_s=10)
async def check_deadline(report, app):
    user = random.choice(USERS)
    path = f"/ads/{user}"
    async with serve(app, raise_app_exceptions=False) as client:
        ads_api.reset()
        ads_api.latency_s = 0.05
        fast, fast_took = await _timed_get(client, path)
        if fast.status_code != 200:
            return _fail_status(report, fast, client, path)
        report.add("a fast ads service: its ads are returned", json_body(fast) == {"ads": ads_api.answer(user)},
                   observed=show_response(fast), expected=str({"ads": ads_api.answer(user)}),
                   hint="Within the deadline, return what the ads service answered, under \"ads\".")
        ads_api.reset()
        ads_api.latency_s = 2.0
        slow, slow_took = await _timed_get(client, path)
        still_running = ads_api.in_flight.current
        ads_api.latency_s = 0.05
    report.add(
        "a slow ads service: the answer comes on time, without ads",
        slow.status_code == 200 and (json_body(slow) or {}).get("ads", "missing") is None
        and slow_took < 2 * ADS_DEADLINE_S,
        observed=f"{show_response(slow)} after {slow_took * 1000:.0f} ms",
        expected=f'{{"ads": null}} within {2 * ADS_DEADLINE_S * 1000:.0f} ms (deadline {ADS_DEADLINE_S * 1000:.0f} ms)',
        hint="`async with asyncio.timeout(0.3):` around the call raises TimeoutError when time is up: catch it.",
    )
    report.add(
        "nothing is left running after the answer", still_running == 0 and ads_api.cancelled == 1,
        observed=f"ads calls still running when the response arrived: {still_running}; cancelled: {ads_api.cancelled}",
        expected="0 running, 1 cancelled",
        hint="`asyncio.wait(..., timeout=...)` returns but leaves the task running; `asyncio.timeout` cancels it.",
    )


# ---- exercise 4: bounded fan-out ---------------------------------------------------------------------

@check("Lesson 04 · /prices fetches many items, at most 4 at a time", limit_s=10)
async def check_fan_out(report, app):
    skus = [f"sku-{random.randint(100, 999)}-{i}" for i in range(20)]
    for i in range(3):  # three discontinued items first: a place a failure never gives back shows at once
        skus[i] = "gone-" + skus[i]
    path = "/prices?skus=" + ",".join(skus)
    prices_api.reset()
    async with serve(app, raise_app_exceptions=False) as client:
        response, took = await _timed_get(client, path)
    if response.status_code != 200:
        return _fail_status(report, response, client, "/prices")
    expected = {"prices": [None if sku.startswith("gone-") else prices_api.answer(sku) for sku in skus]}
    report.add("all 20 prices in the order asked, null for the discontinued", json_body(response) == expected,
               observed=show_response(response), expected='{"prices": [<one per sku, in order, null where it failed>]}',
               hint="gather returns results in the order of its arguments; catch UpstreamError around one call "
                    "and return None in its place.")
    peak = prices_api.in_flight.peak
    report.add(
        f"between 3 and {MAX_PRICES_IN_FLIGHT} calls in flight at a time", 3 <= peak <= MAX_PRICES_IN_FLIGHT,
        observed=f"at most {peak} calls to prices_api at once; {len(skus)} calls took {took * 1000:.0f} ms",
        expected=f"at most {MAX_PRICES_IN_FLIGHT} (the upstream's limit), and more than one at a time",
        hint=("An `asyncio.Semaphore(4)` held with `async with` around each call lets four through at a time."
              if peak > MAX_PRICES_IN_FLIGHT else "Run the calls concurrently, each waiting for the semaphore."),
    )
    # Four at a time from first to last: about ceil(20 / 4) rounds of one call's latency.
    rounds_s = -(-len(skus) // MAX_PRICES_IN_FLIGHT) * max(prices_api.in_flight.durations, default=prices_api.latency_s)
    ratio = took / rounds_s
    report.add(
        f"{MAX_PRICES_IN_FLIGHT} at a time until the last call", peak < 3 or ratio < 2.0,
        observed=f"{len(skus)} calls took {took * 1000:.0f} ms = {ratio:.1f}× {len(skus) // MAX_PRICES_IN_FLIGHT} rounds "
                 "of the slowest call",
        expected="under 2.0×",
        hint="The first calls fail (discontinued items): does a call that fails give its place back? `async with` does.",
    )


# ---- exercise 5: first completed ------------------------------------------------------------------------

@check("Lesson 04 · /download takes the fastest mirror and cancels the others", limit_s=10)
async def check_first_completed(report, app):
    name = f"file-{random.randint(100, 999)}.zip"
    path = f"/download/{name}"
    latencies = [0.05, 0.3, 0.4]
    random.shuffle(latencies)
    for mirror, latency in zip(mirrors, latencies):
        mirror.reset()
        mirror.latency_s = latency
    fastest = min(mirrors, key=lambda m: m.latency_s)
    async with serve(app, raise_app_exceptions=False) as client:
        response, took = await _timed_get(client, path)
        # cancel() is delivered at the task's next step: give the loop a moment, far below the
        # 0.25 s the other mirrors would still need if they were left running.
        await asyncio.sleep(0.02)
        still_running = sum(m.in_flight.current for m in mirrors)
        cancelled = sum(m.cancelled for m in mirrors)
    if response.status_code != 200:
        return _fail_status(report, response, client, "/download/{file}")
    report.add("answers with the fastest mirror's result", json_body(response) == fastest.answer(name),
               observed=show_response(response), expected=str(fastest.answer(name)),
               hint="Return the first result that arrives, not the first mirror in the list.")
    report.add(
        "answers as soon as the first mirror does", took < 2 * fastest.latency_s + 0.05,
        observed=f"{took * 1000:.0f} ms; the fastest mirror took {fastest.latency_s * 1000:.0f} ms",
        expected=f"under {(2 * fastest.latency_s + 0.05) * 1000:.0f} ms",
        hint="`asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)` returns when one is done.",
    )
    report.add(
        "the other mirrors are cancelled", still_running == 0 and cancelled == len(mirrors) - 1,
        observed=f"mirror calls still running at the answer: {still_running}; cancelled: {cancelled}",
        expected=f"0 running, {len(mirrors) - 1} cancelled",
        hint="Tasks you no longer need keep running until you `.cancel()` them.",
    )


# ---- exercise 6: one session per task ------------------------------------------------------------

class Base(DeclarativeBase):
    pass


class Visit(Base):
    __tablename__ = "visits"

    id: Mapped[int] = mapped_column(primary_key=True)
    page: Mapped[str] = mapped_column(String(50))


class _Sessions:
    """Counts sessions opened, closed, and open at the same time."""

    def __init__(self) -> None:
        self.opened = self.closed = self.open_now = self.peak = 0


def _counting_session_class(counts: _Sessions):
    class Counted(AsyncSession):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._closed = False
            counts.opened += 1
            counts.open_now += 1
            counts.peak = max(counts.peak, counts.open_now)

        async def close(self):
            if not self._closed:
                self._closed = True
                counts.closed += 1
                counts.open_now -= 1
            await super().close()

    return Counted


@check("Lesson 04 · record_visits: concurrent writes, one session per task", limit_s=15)
async def check_one_session_per_task(report, record_visits):
    pages = [f"/page/{random.randint(100, 999)}-{i}" for i in range(6)]
    counts = _Sessions()
    folder = tempfile.mkdtemp(prefix="course-lesson04-")
    engine = create_async_engine(f"sqlite+aiosqlite:///{os.path.join(folder, 'visits.db')}")
    try:
        async with engine.begin() as connection:
            await connection.run_sync(Base.metadata.create_all)
        sessions = async_sessionmaker(engine, class_=_counting_session_class(counts), expire_on_commit=False)
        try:
            await record_visits(sessions, pages)
        except InvalidRequestError as exc:
            report.fail("each task has its own session", observed=describe_exception(exc),
                        hint="One AsyncSession runs one operation at a time: open a session inside each task "
                             "(`async with sessions() as session:`).")
            return
        async with engine.connect() as connection:
            stored = sorted(await connection.scalars(select(Visit.page)))
    finally:
        await engine.dispose()
        shutil.rmtree(folder, ignore_errors=True)
    report.add("every visit is stored", stored == sorted(pages), observed=f"{len(stored)} of {len(pages)} pages stored",
               expected=f"all {len(pages)}", hint="Commit each task's session.")
    report.add(
        "one session per task, open at the same time", counts.opened == len(pages) and counts.peak >= 2,
        observed=f"sessions opened: {counts.opened}, at most {counts.peak} open at once", expected=f"{len(pages)}, at least 2 at once",
        hint="Each task opens its own session; `gather` the tasks so they run together.",
    )
    report.add("every session is closed", counts.closed == counts.opened, observed=f"closed {counts.closed} of {counts.opened}",
               expected="all", hint="`async with sessions() as session:` closes it whatever happens.")
