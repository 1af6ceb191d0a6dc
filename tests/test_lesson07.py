"""Lesson 07's checks: resources made once in the lifespan, closed at shutdown, an app-wide limit
shared by routes, and a single-flight cache. Right answers written several ways pass; the usual
mistakes (per request, never closed, made at import, on_event, a limit per request or per route,
a stampeding cache, a cached failure...) fail with the hint that names their cause."""

import asyncio
import threading
import time
import warnings
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Annotated

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, Request
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from checks.lesson07 import (
    DATABASE_URL, RATES_URL, ReportsClient, ResourceWatch, check_lifespan, check_shared_limit, check_single_flight,
    rates_app, rates_server, reports_app,
)
from conftest import assert_feedback_rules, failure_text, names, notebook_namespace, warnings_from_checks

# Wrong answers that never close a session leave SQLAlchemy to warn when it collects them: expected here.
pytestmark = [pytest.mark.anyio, pytest.mark.filterwarnings("ignore::sqlalchemy.exc.SAWarning")]
lesson = notebook_namespace("07_lifespan")
prices_app = lesson["prices_app"]
LIMITS = httpx.Limits(max_connections=10)


async def failing(check, *args):
    report = await check.report(*args)
    assert_feedback_rules(report)
    return report


# ---- exercise 1: the lifespan --------------------------------------------------------------------------

@asynccontextmanager
async def lifespan_explicit(app):
    engine = create_async_engine(DATABASE_URL)
    http = httpx.AsyncClient(limits=httpx.Limits(max_connections=8), timeout=5)
    try:
        yield {"engine": engine, "http": http}
    finally:
        await http.aclose()
        await engine.dispose()


async def http_from_state(request: Request):
    return request.state.http


async def session_on_engine(request: Request):
    session = AsyncSession(request.state.engine, expire_on_commit=False)
    try:
        yield session
    finally:
        await session.close()


@asynccontextmanager
async def lifespan_app_state(app):
    async with AsyncExitStack() as stack:
        limits = httpx.Limits(max_connections=10, max_keepalive_connections=5)
        app.state.http = await stack.enter_async_context(httpx.AsyncClient(limits=limits))
        engine = create_async_engine(DATABASE_URL)
        stack.push_async_callback(engine.dispose)
        app.state.sessions = async_sessionmaker(engine)
        yield


def http_from_app_state(request: Request):  # a plain def: it only reads an attribute
    return request.app.state.http


async def session_from_app_state(request: Request):
    async with request.app.state.sessions() as session:
        yield session


@asynccontextmanager
async def engine_only(app):
    """A right engine, no client: for the mistakes that are all about the client."""
    engine = create_async_engine(DATABASE_URL)
    yield {"sessions": async_sessionmaker(engine)}
    await engine.dispose()


@asynccontextmanager
async def client_only(app, **client_options):
    async with httpx.AsyncClient(limits=LIMITS, **client_options) as http:
        yield {"http": http}


async def session_from_state(request: Request):
    async with request.state.sessions() as session:
        yield session


@pytest.mark.parametrize("parts", [
    (lesson["lifespan"], lesson["get_http"], lesson["get_session"]),
    (lifespan_explicit, http_from_state, session_on_engine),
    (lifespan_app_state, http_from_app_state, session_from_app_state),
], ids=["the notebook's", "try/finally, a session on the engine", "AsyncExitStack and app.state"])
async def test_lifespan_right_answers_pass(parts):
    report = await check_lifespan.report(prices_app, *parts)
    assert report.passed, report.text()


# the mistakes, each a (lifespan, get_http, get_session) the check is given

async def client_per_request(request: Request):
    async with httpx.AsyncClient() as http:
        yield http


async def client_per_request_never_closed(request: Request):
    return httpx.AsyncClient()


@asynccontextmanager
async def no_limits(app):
    engine = create_async_engine(DATABASE_URL)
    async with httpx.AsyncClient() as http:
        yield {"http": http, "sessions": async_sessionmaker(engine)}
    await engine.dispose()


@asynccontextmanager
async def client_never_closed(app):
    engine = create_async_engine(DATABASE_URL)
    yield {"http": httpx.AsyncClient(limits=LIMITS), "sessions": async_sessionmaker(engine)}
    await engine.dispose()


async def engine_per_request(request: Request):
    engine = create_async_engine(DATABASE_URL)
    async with async_sessionmaker(engine)() as session:
        yield session
    await engine.dispose()


@asynccontextmanager
async def engine_never_disposed(app):
    async with httpx.AsyncClient(limits=LIMITS) as http:
        yield {"http": http, "sessions": async_sessionmaker(create_async_engine(DATABASE_URL))}


async def session_never_closed(request: Request):
    return request.state.sessions()


IMPORTED_CLIENT = httpx.AsyncClient(limits=LIMITS)  # a module global, made at import


@asynccontextmanager
async def global_on_app_state(app):
    app.state.http = IMPORTED_CLIENT  # state set from something made at import
    engine = create_async_engine(DATABASE_URL)
    yield {"sessions": async_sessionmaker(engine)}
    await engine.dispose()


def closing_global_lifespan():
    shared = httpx.AsyncClient(limits=LIMITS)

    @asynccontextmanager
    async def closes_the_global(app):
        engine = create_async_engine(DATABASE_URL)
        yield {"http": shared, "sessions": async_sessionmaker(engine)}
        await shared.aclose()
        await engine.dispose()

    return closes_the_global


@asynccontextmanager
async def returns_instead_of_yield(app):  # no yield: not a generator at all
    return {"http": httpx.AsyncClient(limits=LIMITS)}


@asynccontextmanager
async def closed_before_yield(app):
    engine = create_async_engine(DATABASE_URL)
    async with httpx.AsyncClient(limits=LIMITS) as http:
        pass
    yield {"http": http, "sessions": async_sessionmaker(engine)}
    await engine.dispose()


@asynccontextmanager
async def on_event_inside(app):
    engine = create_async_engine(DATABASE_URL)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)

        @app.on_event("startup")
        async def open_client():
            app.state.http = httpx.AsyncClient(limits=LIMITS)

    yield {"sessions": async_sessionmaker(engine)}
    await engine.dispose()


def with_on_event(lifespan, get_http, get_session):
    """Older code kept beside a new lifespan: an on_event startup handler on the same app."""
    app = prices_app(lifespan, get_http, get_session)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)

        @app.on_event("startup")
        async def open_client():
            app.state.http = httpx.AsyncClient(limits=LIMITS)

    return app


LIFESPAN_MISTAKES = {
    "client per request": ((engine_only, client_per_request, session_from_state),
                           ["one httpx client, made when the app starts"], "per request"),
    "client per request, never closed": ((engine_only, client_per_request_never_closed, session_from_state),
                                         ["one httpx client, made when the app starts", "shutdown closes the client"],
                                         "per request"),
    "no limits": ((no_limits, http_from_state, session_from_state),
                  ["at most 10 connections to the rates service at once"], "httpx.Limits"),
    "client never closed": ((client_never_closed, http_from_state, session_from_state),
                            ["shutdown closes the client"], "aclose"),
    "engine per request": ((client_only, http_from_state, engine_per_request),
                           ["one database engine, made when the app starts"], "one per request"),
    "engine never disposed": ((engine_never_disposed, http_from_state, session_from_state),
                              ["shutdown disposes of the engine"], "dispose"),
    "session never closed": ((lesson["lifespan"], http_from_state, session_never_closed),
                             ["every session gives its connection back"], "async with"),
    "state set from an import-time client": ((global_on_app_state, http_from_app_state, session_from_state),
                                             ["one httpx client, made when the app starts", "shutdown closes the client",
                                              "a second app, started after the first stopped, works too"], "module global"),
    "a global closed by the first app": ((closing_global_lifespan(), http_from_state, session_from_state),
                                         ["one httpx client, made when the app starts",
                                          "a second app, started after the first stopped, works too"], "at import"),
    "return instead of yield": ((returns_instead_of_yield, http_from_state, session_from_state),
                                ["the lifespan yields"], "`yield`"),
    "closed before the yield": ((closed_before_yield, http_from_state, session_from_state),
                                ["GET /prices/{sku} answers with the converted price"], "yield inside the `async with`"),
    "on_event inside the lifespan": ((on_event_inside, http_from_app_state, session_from_state),
                                     ["no `on_event` handlers beside `lifespan=`",
                                      "GET /prices/{sku} answers with the converted price"], "skipped"),
}


@pytest.mark.parametrize("parts, failed, hint", LIFESPAN_MISTAKES.values(), ids=LIFESPAN_MISTAKES.keys())
async def test_lifespan_mistakes(parts, failed, hint):
    report = await failing(check_lifespan, prices_app, *parts)
    assert names(report) == failed, report.text()
    assert hint in failure_text(report)


async def test_on_event_beside_lifespan_is_named():
    report = await failing(check_lifespan, with_on_event, engine_only, http_from_app_state, session_from_state)
    assert names(report)[0] == "no `on_event` handlers beside `lifespan=`", report.text()
    assert "open_client" in failure_text(report)


async def test_nothing_is_left_open_after_a_wrong_answer():
    watch = ResourceWatch()
    with watch:
        await check_lifespan.report(prices_app, engine_never_disposed, client_per_request_never_closed, session_never_closed)
    for _ in range(200):  # the server sees a close a moment after the client makes it
        if rates_server.open_now == 0:
            break
        await asyncio.sleep(0.01)
    assert rates_server.open_now == 0
    assert not watch.open_clients and watch.connections_open == 0 and watch.connections_held == 0


# ---- exercise 2: one limit, shared ---------------------------------------------------------------------

def routes_with(dependency_for):
    """An installer whose two routes take the client from `dependency_for(route)` (an Annotated type)."""
    def install(app):
        @app.get("/reports/{name}")
        async def report(name: str, reports: dependency_for("reports")):
            return {"name": name, "rows": await reports.fetch(name)}

        @app.get("/exports/{name}")
        async def export(name: str, reports: dependency_for("exports")):
            return {"name": name, "csv": await reports.export(name)}

    return install


async def reports_slot(request: Request):
    yield request.state.reports


async def reports_no_yield(request: Request):
    return request.state.reports


SharedFunctionScope = Annotated[ReportsClient, Depends(reports_slot, scope="function", max_concurrency=3)]


def semaphore_per_app(app):
    limit = asyncio.Semaphore(3)

    async def slot(request: Request):
        async with limit:
            yield request.state.reports

    routes_with(lambda route: Annotated[ReportsClient, Depends(slot)])(app)


def router_wide_limit(app):
    async def hold():
        yield

    router = APIRouter(dependencies=[Depends(hold, max_concurrency=3)])

    @router.get("/reports/{name}")
    async def report(name: str, request: Request):
        return {"name": name, "rows": await request.state.reports.fetch(name)}

    @router.get("/exports/{name}")
    async def export(name: str, request: Request):
        return {"name": name, "csv": await request.state.reports.export(name)}

    app.include_router(router)


async def reports_with_cleanup(request: Request):
    reports = request.state.reports
    try:
        yield reports
    finally:
        pass  # a real client would give back a session here


def alias_with_cleanup(app):
    alias = Annotated[ReportsClient, Depends(reports_with_cleanup, max_concurrency=3)]
    routes_with(lambda route: alias)(app)


@pytest.mark.parametrize("install", [
    lesson["add_report_routes"],
    routes_with(lambda route: SharedFunctionScope),
    router_wide_limit,
    alias_with_cleanup,
], ids=["the notebook's", "a module alias, scope=function", "an APIRouter's dependencies",
        "an alias made per app, try/finally around the yield"])
async def test_shared_limit_right_answers_pass(install):
    report = await check_shared_limit.report(reports_app, install)
    assert report.passed, report.text()


# Made at import (cell run): bound to the first event loop that waits on it. One per answer, because
# each test here runs on a loop of its own.
GLOBAL_IN_ROUTE = asyncio.Semaphore(3)
GLOBAL_IN_DEPENDENCY = asyncio.Semaphore(3)


def global_semaphore_in_route(app):
    async def get_reports(request: Request):
        return request.state.reports

    ReportsDep = Annotated[ReportsClient, Depends(get_reports)]

    @app.get("/reports/{name}")
    async def report(name: str, reports: ReportsDep):
        async with GLOBAL_IN_ROUTE:
            return {"name": name, "rows": await reports.fetch(name)}

    @app.get("/exports/{name}")
    async def export(name: str, reports: ReportsDep):
        async with GLOBAL_IN_ROUTE:
            return {"name": name, "csv": await reports.export(name)}


def global_semaphore_in_dependency(app):
    async def slot(request: Request):
        async with GLOBAL_IN_DEPENDENCY:
            yield request.state.reports

    alias = Annotated[ReportsClient, Depends(slot)]
    routes_with(lambda route: alias)(app)


def semaphore_in_route(app):  # no dependency limit, no semaphore in a dependency: one per request, in the route
    @app.get("/reports/{name}")
    async def report(name: str, request: Request):
        async with asyncio.Semaphore(3):
            return {"name": name, "rows": await request.state.reports.fetch(name)}

    @app.get("/exports/{name}")
    async def export(name: str, request: Request):
        async with asyncio.Semaphore(3):
            return {"name": name, "csv": await request.state.reports.export(name)}


def semaphore_per_request(app):
    async def slot(request: Request):
        async with asyncio.Semaphore(3):
            yield request.state.reports

    routes_with(lambda route: Annotated[ReportsClient, Depends(slot)])(app)


def limit_per_route(app):
    routes_with(lambda route: Annotated[ReportsClient, Depends(reports_slot, max_concurrency=3)])(app)


def limit_without_yield(app):
    routes_with(lambda route: Annotated[ReportsClient, Depends(reports_no_yield, max_concurrency=3)])(app)


def no_limit(app):
    routes_with(lambda route: Annotated[ReportsClient, Depends(reports_slot)])(app)


def limit_of(n):
    def install(app):
        alias = Annotated[ReportsClient, Depends(reports_slot, max_concurrency=n)]
        routes_with(lambda route: alias)(app)

    return install


def released_only_on_success(app):
    limit = asyncio.Semaphore(3)

    async def slot(request: Request):
        await limit.acquire()
        yield request.state.reports
        limit.release()  # not reached when the route raised: that place is lost

    routes_with(lambda route: Annotated[ReportsClient, Depends(slot)])(app)


def thread_semaphore(app):
    limit = threading.BoundedSemaphore(3)

    def slot(request: Request):  # a sync dependency: FastAPI runs it in a worker thread
        with limit:
            yield request.state.reports

    routes_with(lambda route: Annotated[ReportsClient, Depends(slot)])(app)


def middleware_limit(app):
    limit = asyncio.Semaphore(3)

    @app.middleware("http")
    async def one_at_a_time(request, call_next):
        async with limit:
            return await call_next(request)

    routes_with(lambda route: Annotated[ReportsClient, Depends(reports_slot)])(app)


def on_event_semaphore(app):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)

        @app.on_event("startup")
        async def make_limit():
            app.state.limit = asyncio.Semaphore(3)

    async def slot(request: Request):
        async with request.app.state.limit:
            yield request.state.reports

    routes_with(lambda route: Annotated[ReportsClient, Depends(slot)])(app)


ONE_LIMIT = ["never more than 3 calls at once, both routes together"]
OTHER_LOOP = ["the limit works on another event loop too"]
LIMIT_MISTAKES = {
    "a semaphore made at import, in the route": (global_semaphore_in_route, OTHER_LOOP,
                                                 "belongs to the first event loop that waited on it"),
    "a semaphore made at import, in a yield dependency": (global_semaphore_in_dependency, OTHER_LOOP,
                                                          "belongs to the first event loop that waited on it"),
    "a semaphore made with the app": (semaphore_per_app, OTHER_LOOP, "keeps one semaphore per event loop"),
    "a semaphore per request, in the route": (semaphore_in_route, ONE_LIMIT,
                                              "12 semaphores were made while those 12 requests ran"),
    "a semaphore per request": (semaphore_per_request, ["never more than 3 calls at once, both routes together"],
                                "made inside the request"),
    "a limit per route": (limit_per_route, ["never more than 3 calls at once, both routes together"],
                          "`Annotated` alias"),
    "a limit on a dependency without yield": (limit_without_yield, ONE_LIMIT,
                                              "`reports_no_yield` has `max_concurrency` but returns instead of yielding"),
    "no limit": (no_limit, ONE_LIMIT, "Nothing on these routes limits the calls"),
    "a limit of 1": (limit_of(1), ["3 calls at once when requests wait"], "lower than the 3"),
    "a limit of 4": (limit_of(4), ["never more than 3 calls at once, both routes together"], "lets 4 through"),
    "released only on success": (released_only_on_success, ["a failed call gives its place back"], "`async with`"),
    "a threading semaphore": (thread_semaphore, ["waiting requests hold no thread"], "worker thread"),
    "a middleware limits every request": (middleware_limit, ["GET /ping does not wait for the reports server"],
                                          "middleware"),
    "on_event beside the lifespan": (on_event_semaphore, ["no `on_event` handlers beside `lifespan=`",
                                                          "GET /reports/{name} answers"], "skipped"),
}


@pytest.mark.parametrize("install, failed, hint", LIMIT_MISTAKES.values(), ids=LIMIT_MISTAKES.keys())
async def test_shared_limit_mistakes(install, failed, hint):
    report = await failing(check_shared_limit, reports_app, install)
    assert names(report) == failed, report.text()
    assert hint in failure_text(report)
    if failed == ONE_LIMIT and "made" not in hint:  # no semaphore is blamed where the app made none
        assert "made inside the request" not in failure_text(report), report.text()


# ---- exercise 3: single flight ---------------------------------------------------------------------------

class FutureCache:
    """A future per key, filled by a task of its own; callers await the future through a shield."""

    def __init__(self, fetch, ttl_s, clock=time.monotonic):
        self.fetch, self.ttl_s, self.clock = fetch, ttl_s, clock
        self.values, self.pending, self.tasks = {}, {}, set()

    async def get(self, key):
        if key in self.values and self.clock() < self.values[key][1]:
            return self.values[key][0]
        if key not in self.pending:
            self.pending[key] = asyncio.get_running_loop().create_future()
            task = asyncio.create_task(self._fill(key, self.pending[key]))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        return await asyncio.shield(self.pending[key])

    async def _fill(self, key, future):
        try:
            value = await self.fetch(key)
        except Exception as error:
            future.set_exception(error)
        else:
            self.values[key] = (value, self.clock() + self.ttl_s)
            future.set_result(value)
        finally:
            del self.pending[key]


class TaskEntryCache:
    """Entries hold the fill's task itself; a failed one is dropped by a done-callback."""

    def __init__(self, fetch, ttl_s, clock=time.monotonic):
        self.fetch, self.ttl_s, self.clock = fetch, ttl_s, clock
        self.entries = {}  # key -> (task, started_at)

    async def get(self, key):
        entry = self.entries.get(key)
        if entry is None or (entry[0].done() and self.clock() - entry[1] >= self.ttl_s):
            task = asyncio.create_task(self.fetch(key))
            entry = self.entries[key] = (task, self.clock())
            task.add_done_callback(lambda done, key=key: self._forget_failure(key, done))
        return await asyncio.shield(entry[0])

    def _forget_failure(self, key, task):
        if task.exception() is not None and self.entries.get(key, (None,))[0] is task:
            del self.entries[key]


@pytest.mark.parametrize("cache_class", [lesson["SingleFlightCache"], FutureCache, TaskEntryCache],
                         ids=["the notebook's", "a future per key", "the task as the entry"])
async def test_single_flight_right_answers_pass(cache_class):
    report = await check_single_flight.report(rates_app, cache_class)
    assert report.passed, report.text()


class Base:
    def __init__(self, fetch, ttl_s, clock=time.monotonic):
        self.fetch, self.ttl_s, self.clock = fetch, ttl_s, clock
        self.values = {}

    def fresh(self, key):
        hit = self.values.get(key)
        return hit is not None and self.clock() - hit[1] < self.ttl_s

    async def store(self, key):
        value = await self.fetch(key)
        self.values[key] = (value, self.clock())
        return value


class NoSingleFlight(Base):
    async def get(self, key):
        return self.values[key][0] if self.fresh(key) else await self.store(key)


class OneLockForAll(Base):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.lock = asyncio.Lock()

    async def get(self, key):
        if self.fresh(key):
            return self.values[key][0]
        async with self.lock:
            return self.values[key][0] if self.fresh(key) else await self.store(key)


class LockPerKey(Base):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.locks = {}

    async def get(self, key):
        if self.fresh(key):
            return self.values[key][0]
        async with self.locks.setdefault(key, asyncio.Lock()):
            return self.values[key][0] if self.fresh(key) else await self.store(key)


class FailureCached(Base):
    """The fill's task is the cache entry, failed or not."""

    async def get(self, key):
        hit = self.values.get(key)
        if hit is None or (hit[0].done() and self.clock() - hit[1] >= self.ttl_s):
            hit = self.values[key] = (asyncio.create_task(self.fetch(key)), self.clock())
        return await asyncio.shield(hit[0])


class NeverExpires(Base):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fills = {}

    async def get(self, key):
        if key in self.values:
            return self.values[key][0]
        if key not in self.fills:
            self.fills[key] = asyncio.create_task(self._fill(key))
        return await asyncio.shield(self.fills[key])

    async def _fill(self, key):
        try:
            return await self.store(key)
        finally:
            del self.fills[key]


class WallClock(NeverExpires):
    """Expires, but by `time.monotonic()`, not by the clock it was given."""

    async def get(self, key):
        hit = self.values.get(key)
        if hit is not None and time.monotonic() - hit[2] < self.ttl_s:
            return hit[0]
        if key not in self.fills:
            self.fills[key] = asyncio.create_task(self._fill(key))
        return await asyncio.shield(self.fills[key])

    async def store(self, key):
        value = await self.fetch(key)
        self.values[key] = (value, self.clock(), time.monotonic())
        return value


class NoShield(NeverExpires):
    async def get(self, key):
        if self.fresh(key):
            return self.values[key][0]
        if key not in self.fills:
            self.fills[key] = asyncio.create_task(self._fill(key))
        return await self.fills[key]  # a caller cancelled cancels the task for everyone


class InlineFiller(Base):
    """The first caller fetches itself and hands the value to the others through a future."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pending = {}

    async def get(self, key):
        if self.fresh(key):
            return self.values[key][0]
        if key in self.pending:
            return await asyncio.shield(self.pending[key])
        future = self.pending[key] = asyncio.get_running_loop().create_future()
        try:
            value = await self.store(key)
        except Exception as error:
            future.set_exception(error)
            raise
        else:
            future.set_result(value)
            return value
        finally:
            del self.pending[key]


class EventThenRetry(Base):
    """The first caller fetches; the others wait for an event and, finding no value, try again."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.filling = {}

    async def get(self, key):
        while True:
            if self.fresh(key):
                return self.values[key][0]
            event = self.filling.get(key)
            if event is None:
                break
            await event.wait()  # then: a value, or (the filler gave up) another go
        event = self.filling[key] = asyncio.Event()
        try:
            return await self.store(key)
        finally:
            del self.filling[key]
            event.set()


class SwallowsErrors(NeverExpires):
    """Single flight and expiry right, but a failed fill answers None instead of raising."""

    async def get(self, key):
        if self.fresh(key):
            return self.values[key][0]
        if key not in self.fills:
            self.fills[key] = asyncio.create_task(self._fill(key))
        return await asyncio.shield(self.fills[key])

    async def _fill(self, key):
        try:
            return await self.store(key)
        except Exception:
            return None
        finally:
            del self.fills[key]


class EvictionLoop(NeverExpires):
    """Right, except for a clean-up loop started in __init__ that nothing ever stops."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.cleaner = asyncio.create_task(self._evict())

    async def _evict(self):
        while True:
            await asyncio.sleep(0.05)
            for key in [k for k in self.values if not self.fresh(k)]:
                del self.values[key]

    async def get(self, key):
        if self.fresh(key):
            return self.values[key][0]
        self.values.pop(key, None)
        return await super().get(key)


GIVES_UP = "one caller giving up does not fail the others: the first caller"
CACHE_MISTAKES = {
    "no single flight (a stampede)": (NoSingleFlight, ["50 requests at once for one cold key: one upstream call"],
                                      "the first start the fill"),
    # A lock: when the caller holding it gives up, the next one fetches again (a second fetch).
    "one lock for every key": (OneLockForAll, ["different keys do not wait for each other",
                                               "a failing fill: one call, and every waiter gets its error", GIVES_UP],
                               "per key"),
    "a lock per key: waiters retry a failure": (LockPerKey, ["a failing fill: one call, and every waiter gets its error",
                                                             GIVES_UP], "slow"),
    "a failure is cached": (FailureCached, ["a failure is not cached: the next call tries again"], "forget"),
    "no expiry": (NeverExpires, ["fetched again once ttl_s has passed"], "expire"),
    "expiry by the wall clock": (WallClock, ["fetched again once ttl_s has passed"], "not `time.monotonic()`"),
    "a shared task without shield": (NoShield, [GIVES_UP], "shield"),
    "the first caller fills inline": (InlineFiller, [GIVES_UP], "shield"),
    "the filler gives up, a waiter fetches again": (EventThenRetry, ["a failing fill: one call, and every waiter gets its "
                                                    "error", GIVES_UP], "a second fetch started"),
    "errors swallowed": (SwallowsErrors, ["a failing fill: one call, and every waiter gets its error"], "re-raise"),
    "a clean-up loop never stopped": (EvictionLoop, ["no task left running"], "`__init__`"),
}


@pytest.mark.parametrize("cache_class, failed, hint", CACHE_MISTAKES.values(), ids=CACHE_MISTAKES.keys())
async def test_single_flight_mistakes(cache_class, failed, hint):
    report = await failing(check_single_flight, rates_app, cache_class)
    assert names(report) == failed, report.text()
    assert hint in failure_text(report)


# ---- all three ---------------------------------------------------------------------------------------------

async def test_the_checks_raise_no_warning_of_their_own():
    assert not await warnings_from_checks(
        check_lifespan.report(prices_app, lesson["lifespan"], lesson["get_http"], lesson["get_session"]),
        check_lifespan.report(prices_app, client_never_closed, http_from_state, session_from_state),
        check_shared_limit.report(reports_app, lesson["add_report_routes"]),
        check_single_flight.report(rates_app, lesson["SingleFlightCache"]),
        check_single_flight.report(rates_app, NoShield),
    )


async def test_the_rates_server_counts_connections_exactly():
    rates_server.reset()
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=2)) as client:
        answers = await asyncio.gather(*(client.get(f"{RATES_URL}/rates/GBP") for _ in range(6)))
    assert {a.json()["rate"] for a in answers} == {rates_server.rate("GBP")}
    assert rates_server.connections == 2 and rates_server.peak_open == 2 and rates_server.requests == 6
