"""Lesson 07, exercise 1's check: one client and one engine for the whole app, from the lifespan,
closed at shutdown. Judged by the rates server's connection counts and `ResourceWatch`.
"""

from __future__ import annotations

import asyncio
import inspect
import random
import time

import httpx

from ..harness import describe_exception, serve
from ..observe import json_body, show_response, status_hint
from ..runner import check
from .judge_common import _skipped_on_event, _wait_until
from .world import CURRENCIES, ResourceWatch, rates_server, reset_database


# ---- exercise 1: one client, one engine, from the lifespan -----------------------------------------

MAX_RATES_CONNECTIONS = 10
BURST = 30  # concurrent requests: more than the connections the rates service allows
CLOSE_WAIT_S = 1.0  # how long a closed client's connections may take to reach the server


async def _lifespan_without_yield(report, app, lifespan) -> bool:
    """A lifespan function with no `yield` cannot start an app: run it to say what it does."""
    original = inspect.unwrap(lifespan) if callable(lifespan) else None
    if original is lifespan or not inspect.iscoroutinefunction(original):
        return False
    try:
        await original(app)
    except Exception as exc:
        report.fail("the app starts", observed=f"the app could not start: its lifespan raised {describe_exception(exc)}",
                    hint="The lifespan runs before the first request: the code before its `yield` must finish "
                         "without raising.")
        return True
    report.fail("the lifespan yields", observed="lifespan() returned without ever reaching a `yield`",
                expected="one `yield` between startup and shutdown",
                hint="An `@asynccontextmanager` lifespan yields once: the code before `yield` runs at startup, "
                     "the code after it at shutdown; what it yields becomes `request.state`.")
    return True


STALL_S = 3.0  # no response at all for this long, with requests waiting: they are stuck


async def _until_done_or_stalled(coroutines, stall_s: float, progress) -> tuple[list, int]:
    """Run them at once until all are done, or until nothing moved for `stall_s`: no request
    finished and `progress()` (counts of what the requests do) did not change. The rest are then
    cancelled. Returns (results, how many were still waiting)."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    pending = set(tasks)
    last, still_since = None, time.perf_counter()
    while pending:
        _, pending = await asyncio.wait(pending, timeout=0.05)
        now = (len(pending), progress())
        if now != last:
            last, still_since = now, time.perf_counter()
        elif time.perf_counter() - still_since > stall_s:
            break
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=1.0)
    results = [task.exception() or task.result() if task.done() and not task.cancelled() else None for task in tasks]
    return results, len(pending)


QUIET_S = 0.3


async def _until_quiet(state, quiet_s: float, done, limit_s: float = 5.0) -> None:
    """Wait until `done()`, or until `state()` has not changed for `quiet_s` (bounded by `limit_s`)."""
    last, since, started = state(), time.perf_counter(), time.perf_counter()
    while not done() and time.perf_counter() - started < limit_s:
        await asyncio.sleep(0.01)
        now = state()
        if now != last:
            last, since = now, time.perf_counter()
        elif time.perf_counter() - since > quiet_s:
            return


def _price_hint(response, client, path) -> str:
    errors = client.errors_for(response.request.url.path) if client is not None else []
    text = str(errors[-1].exception) if errors else ""
    if "has been closed" in text:
        return ("The client was closed before the requests came. Everything between startup and shutdown "
                "happens at the `yield`: keep the client open across it (yield inside the `async with`).")
    if "State" in text and "has no attribute" in text:
        return ("`request.state` has only what the lifespan yielded (a dict): yield the client and the "
                "session factory, and read them back under the same names.")
    return status_hint(response, "GET", path, client)


@check("Lesson 07 · one client and one engine for the whole app, closed at shutdown", limit_s=20)
async def check_lifespan(report, make_app, lifespan, get_http, get_session):
    products = await reset_database()
    rates_server.reset(latency_s=(random.uniform(0.005, 0.015), random.uniform(0.02, 0.04)))
    watch = ResourceWatch()
    try:
        with watch:
            await _judge_lifespan(report, watch, products, make_app, lifespan, get_http, get_session)
    finally:
        await watch.close_leftovers()


async def _judge_lifespan(report, watch, products, make_app, lifespan, get_http, get_session) -> None:
    app = make_app(lifespan, get_http, get_session)
    if await _lifespan_without_yield(report, app, lifespan):
        return
    skus = list(products)
    sku, currency = random.choice(skus), random.choice(CURRENCIES)
    path = f"/prices/{sku}?currency={currency}"
    watch.phase = "startup"
    async with serve(app, raise_app_exceptions=False) as client:
        watch.phase = "serving"
        first = await client.get(path)
        expected = {"sku": sku, "currency": currency, "price": round(products[sku] * rates_server.rate(currency), 2)}
        if first.status_code != 200 or json_body(first) != expected:
            _skipped_on_event(report, app)
            report.fail("GET /prices/{sku} answers with the converted price",
                        observed=show_response(first, client), expected=f"200 {expected}",
                        hint=_price_hint(first, client, "/prices/{sku}"))
            watch.phase = "shutdown"
            return
        report.add("GET /prices/{sku} answers with the converted price", True, observed=f"{sku} in {currency}")
        for _ in range(4):  # one after the other: a shared client reuses its connection
            await client.get(f"/prices/{random.choice(skus)}?currency={random.choice(CURRENCIES)}")
        paths = [f"/prices/{random.choice(skus)}?currency={random.choice(CURRENCIES)}" for _ in range(BURST)]
        progress = lambda: (len(watch.clients), len(watch.engines), watch.checkouts, watch.checkins,  # noqa: E731
                            rates_server.requests, rates_server.in_flight)
        # The rates service holds its answers until the requests stop piling up: how many connections
        # the client opens at once is then counted exactly, whatever the machine's speed.
        rates_server.hold()
        try:
            tasks = [asyncio.ensure_future(client.get(p)) for p in paths]
            await _until_quiet(lambda: (rates_server.in_flight, progress()), QUIET_S,
                               done=lambda: rates_server.in_flight >= BURST or all(t.done() for t in tasks))
        finally:
            rates_server.release()
        burst, waiting = await _until_done_or_stalled(tasks, STALL_S, progress)
        held = watch.connections_held
        watch.phase = "shutdown"
    watch.phase = "after"
    if waiting:
        report.fail("every session gives its connection back" if held else f"{BURST} requests at once all answer",
                    observed=f"{waiting} of {BURST} requests still waiting, nothing moving for {STALL_S:g} s; "
                             f"{held} database connection(s) checked out and not given back",
                    expected="every request answered",
                    hint=("A session that is never closed keeps its connection, and once the pool has none left the "
                          "other requests wait for one: open it with `async with sessions() as session:` around the "
                          "`yield`." if held else "Something the requests share never lets them finish: a lock or "
                                                   "a resource never given back."))
        return
    failed = [r for r in burst if not isinstance(r, httpx.Response) or r.status_code != 200]
    if failed:
        sample = failed[0]
        report.fail(f"{BURST} requests at once all answer 200", observed=f"{len(failed)} failed, e.g. "
                    + (show_response(sample, client) if isinstance(sample, httpx.Response) else describe_exception(sample)),
                    expected="all 200", hint="Shared resources must serve concurrent requests: look at the error.")
        return
    startup_clients, serving_clients = watch.clients_in("startup"), watch.clients_in("serving")
    made = f"{len(startup_clients)} httpx client(s) made at startup, {len(serving_clients)} while serving {BURST + 5} requests"
    if serving_clients:
        hint = (f"A client per request pays its setup on every request (SSL certificates loaded on the event "
                f"loop) and opens new connections: create one client in the lifespan and yield it.")
    elif not startup_clients:
        hint = ("No client was made when the app started: one made at import (a module global) belongs to no "
                "app, outlives it and is shared by every app of the process. Create it in the lifespan.")
    else:
        hint = "Create exactly one client in the lifespan and share it through the dependency."
    one_client = report.add("one httpx client, made when the app starts",
                            len(startup_clients) == 1 and not serving_clients, observed=made,
                            expected="1 at startup, 0 while serving", hint=hint)
    if one_client:
        report.add(f"at most {MAX_RATES_CONNECTIONS} connections to the rates service at once",
                   rates_server.peak_open <= MAX_RATES_CONNECTIONS,
                   observed=f"{BURST} requests at once opened {rates_server.peak_open} connections at the same time "
                            f"({rates_server.connections} in all)",
                   expected=f"at most {MAX_RATES_CONNECTIONS}",
                   hint="A client's pool opens as many connections as requests in flight unless told otherwise: "
                        "give the client `limits=httpx.Limits(...)`.")
    startup_engines, serving_engines = watch.engines_in("startup"), watch.engines_in("serving")
    report.add("one database engine, made when the app starts", len(startup_engines) == 1 and not serving_engines,
               observed=f"{len(startup_engines)} engine(s) made at startup, {len(serving_engines)} while serving",
               expected="1 at startup, 0 while serving",
               hint=("An engine is a connection pool: one per request pools nothing and leaves connections behind. "
                     "Create it once in the lifespan and yield a session factory." if serving_engines else
                     "Create the engine in the lifespan (an engine made at import belongs to no app)."))
    report.add("every session gives its connection back", held == 0,
               observed=f"{held} database connection(s) still checked out after all responses were sent",
               expected="0", hint="A session that is never closed keeps its connection: open it with "
                                  "`async with sessions() as session:` around the `yield`.")
    closed = await _wait_until(lambda: rates_server.open_now == 0 and not watch.open_clients, CLOSE_WAIT_S)
    if watch.clients or not closed:
        report.add("shutdown closes the client", closed,
                   observed=f"after shutdown: {len(watch.open_clients)} client(s) not closed, "
                            f"{rates_server.open_now} connection(s) to the rates service still open",
                   expected="0 and 0",
                   hint="After the lifespan's `yield`, close what it opened: `await client.aclose()`, or yield "
                        "inside `async with httpx.AsyncClient(...) as client:`.")
    idle_open = watch.connections_open - watch.connections_held  # a session's connection is not the pool's to close
    report.add("shutdown disposes of the engine", idle_open == 0,
               observed=f"{idle_open} of {watch.connects} database connection(s) still open after shutdown",
               expected="0", hint="After the `yield`: `await engine.dispose()` closes the pool's connections.")
    # A second app, as a test suite or a restart makes: it must get resources of its own.
    before = len(watch.clients)
    second = make_app(lifespan, get_http, get_session)
    async with serve(second, raise_app_exceptions=False) as client:
        again = await client.get(path)
    own = len(watch.clients) > before
    report.add("a second app, started after the first stopped, works too", again.status_code == 200 and own,
               observed=show_response(again, client) + ("" if own else "; it made no client of its own"),
               expected="200, with a client of its own",
               hint="Whatever the first app closed at shutdown is gone: a resource made at import is shared by "
                    "every app of the process. Make everything in the lifespan, once per app.")
