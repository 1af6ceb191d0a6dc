"""Lesson 02, exercise 1: get_session, one session per request that commits before the response."""

from typing import Annotated

import pytest
from fastapi import Depends, HTTPException, Request

from checks.lesson02 import check_sessions
from conftest import names
from lesson02_helpers import assert_fails_at, lesson, session_dep, session_try_except

pytestmark = pytest.mark.anyio


async def session_begin(request: Request):
    async with request.state.sessionmaker() as session, session.begin():
        yield session  # `begin()` commits on success and rolls back on an exception


async def session_try_else_finally(request: Request):
    session = request.state.sessionmaker()
    try:
        yield session
    except BaseException:
        await session.rollback()
        raise
    else:
        await session.commit()
    finally:
        await session.close()


async def session_guide_style(request: Request):
    async with request.state.sessionmaker() as session:
        yield session
        await session.commit()


async def session_commit_in_finally(request: Request):
    async with request.state.sessionmaker() as session:
        try:
            yield session
        finally:
            await session.commit()


async def session_never_closed(request: Request):
    session = request.state.sessionmaker()
    try:
        yield session
        await session.commit()
    except Exception:
        await session.rollback()
        raise


async def session_closed_on_success_only(request: Request):
    session = request.state.sessionmaker()
    try:
        yield session
        await session.commit()
        await session.close()
    except Exception:
        await session.rollback()
        raise


async def session_swallows(request: Request):
    async with request.state.sessionmaker() as session:
        try:
            yield session
            await session.commit()
        except Exception:
            await session.rollback()  # ...and the exception is gone


async def session_turns_errors_into_500(request: Request):
    async with request.state.sessionmaker() as session:
        try:
            yield session
            await session.commit()
        except Exception:
            await session.rollback()
            raise HTTPException(500, "database error")


async def session_cleanup_not_in_finally(request: Request):
    session = request.state.sessionmaker()
    yield session  # a raising route throws here: nothing below runs
    await session.commit()
    await session.close()


async def session_no_commit(request: Request):
    async with request.state.sessionmaker() as session:
        yield session  # closing discards everything


def shared_session():
    """One session for every request (made on first use, kept in a module-level dict)."""
    kept = {}

    async def session_shared(request: Request):
        if "session" not in kept:
            kept["session"] = request.state.sessionmaker()
        session = kept["session"]
        try:
            yield session
            await session.commit()
        except Exception:
            await session.rollback()
            raise

    return session_shared


async def sessions_report(dependency, scope="function"):
    return await check_sessions.report(lesson["items_app"], SessionDep=session_dep(dependency, scope))


@pytest.mark.parametrize("dependency", [session_try_except, session_begin, session_try_else_finally, lesson["get_session"]],
                         ids=["try/except", "session.begin()", "try/except/else/finally", "notebook"])
async def test_sessions_right_answers_pass(dependency):
    report = await sessions_report(dependency)
    assert report.passed, report.text()


async def test_sessions_notebook_alias_passes():
    report = await check_sessions.report(lesson["items_app"], SessionDep=lesson["SessionDep"])
    assert report.passed, report.text()


LATE = "a failing commit reaches the client (409)"
SESSIONS_WRONG = {
    "guide get_db, default scope": (lambda: session_dep(session_guide_style, None), LATE, "`help(Depends)`"),
    "right body, default scope": (lambda: session_dep(session_try_except, None), LATE, "after the response has been sent"),
    "right body, scope='request'": (lambda: session_dep(session_try_except, "request"), LATE, "scope='request' ends"),
    "scope misspelled": (lambda: session_dep(session_try_except, "functon"), LATE, "is not a scope FastAPI knows"),
    "commit in finally": (lambda: session_dep(session_commit_in_finally), "a request that raises is rolled back",
                          "saved although the route raised"),
    "never closed": (lambda: session_dep(session_never_closed), "every session is closed", "async with"),
    "closed on success only": (lambda: session_dep(session_closed_on_success_only), "every session is closed",
                               "when an exception passes through"),
    "swallows the exception": (lambda: session_dep(session_swallows), "a request that raises is rolled back",
                               "re-raise it"),
    "turns errors into HTTPException(500)": (lambda: session_dep(session_turns_errors_into_500),
                                             "a route's HTTPException reaches the client unchanged", "very exception"),
    "one session shared by all requests": (lambda: session_dep(shared_session()), "8 concurrent requests get 8 sessions",
                                           "One AsyncSession per request"),
    "no commit": (lambda: session_dep(session_no_commit), "a request that succeeds is committed", "commit"),
    "clean-up after yield, not in finally": (lambda: session_dep(session_cleanup_not_in_finally),
                                             "every session is closed", "async with"),
    "a Depends, not an Annotated alias": (lambda: Depends(session_try_except, scope="function"),
                                          "SessionDep is Annotated", "Annotated[AsyncSession"),
}


@pytest.mark.parametrize("mistake", SESSIONS_WRONG, ids=list(SESSIONS_WRONG))
async def test_sessions_wrong_answers_fail_with_their_hint(mistake):
    alias, item, hint = SESSIONS_WRONG[mistake]
    report = await check_sessions.report(lesson["items_app"], SessionDep=alias())
    assert_fails_at(report, item, hint)


async def test_sessions_default_scope_says_the_commit_came_after_the_response():
    report = await sessions_report(session_try_except, None)
    assert names(report) == [LATE + ", before the response"], report.text()
    assert "'response already started'" in report.failures[0].observed


async def test_sessions_a_leaked_session_stops_the_check_at_once():
    """Clean-up that a raising route skips leaves a session holding SQLite's write lock: the check says so at
    once, instead of running into 'database is locked' (5 s each) and its time limit."""
    report = await sessions_report(session_cleanup_not_in_finally)
    assert names(report)[-1] == "every session is closed, whatever happened", report.text()
    assert "after a route that raised: 1 of 1" in report.failures[-1].observed
    assert report.metrics["elapsed_s"] < 5, report.metrics


async def test_sessions_swallowed_commit_error_is_told_apart():
    report = await sessions_report(session_swallows)
    late = [i for i in report.failures if i.name.startswith(LATE)]
    assert late and "IntegrityError must leave get_session" in late[0].hint, report.text()


async def test_an_app_that_cannot_be_built_is_reported_by_the_check():
    """The check builds the app from the learner's parts itself (class 11): an error there is a report."""
    async def engine_connection():
        yield None

    async def session_on_connection(request: Request,
                                    _: Annotated[None, Depends(engine_connection, scope="function")]):
        async with request.state.sessionmaker() as session:
            yield session

    report = await check_sessions.report(lesson["items_app"], SessionDep=session_dep(session_on_connection, None))
    assert not report.passed and "DependencyScopeError" in report.failures[0].observed, report.text()
