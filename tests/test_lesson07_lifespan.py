"""Lesson 07, exercise 1: the lifespan makes the client and the engine once, and closes them."""

import asyncio
import warnings
from contextlib import AsyncExitStack, asynccontextmanager

import httpx
import pytest
from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from checks.lesson07 import DATABASE_URL, ResourceWatch, check_lifespan, rates_server
from conftest import failure_text, names
from lesson07_helpers import failing, lesson, prices_app

# Wrong answers that never close a session leave SQLAlchemy to warn when it collects them: expected here.
pytestmark = [pytest.mark.anyio, pytest.mark.filterwarnings("ignore::sqlalchemy.exc.SAWarning")]


LIMITS = httpx.Limits(max_connections=10)


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
