"""Lesson 07, exercise 2: one limit, shared by the routes of the whole app."""

import asyncio
import threading
import warnings
from typing import Annotated

import pytest
from fastapi import APIRouter, Depends, Request

from checks.lesson07 import ReportsClient, check_shared_limit, reports_app
from conftest import failure_text, names
from lesson07_helpers import failing, lesson

# Wrong answers that never close a session leave SQLAlchemy to warn when it collects them: expected here.
pytestmark = [pytest.mark.anyio, pytest.mark.filterwarnings("ignore::sqlalchemy.exc.SAWarning")]


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
