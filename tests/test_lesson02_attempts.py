"""Lesson 02, exercise 3: a record that outlives the request's transaction."""

from typing import Annotated

import pytest
from fastapi import BackgroundTasks, Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from checks.lesson02 import check_attempts

from lesson02_helpers import assert_fails_at, lesson

pytestmark = pytest.mark.anyio


NewOrder, Attempt = lesson["NewOrder"], lesson["Attempt"]
NotebookSessionDep = lesson["SessionDep"]
get_session = lesson["get_session"]
kept_attempts: list = []


async def attempt_own_maker(new: NewOrder, request: Request) -> None:
    async with request.state.sessionmaker() as session:
        session.add(Attempt(title=new.title))
        await session.commit()


async def attempt_fresh_dependency(
        new: NewOrder, session: Annotated[AsyncSession, Depends(get_session, scope="function", use_cache=False)]) -> None:
    session.add(Attempt(title=new.title))
    await session.commit()


async def attempt_other_scope(new: NewOrder, session: Annotated[AsyncSession, Depends(get_session)]) -> None:
    session.add(Attempt(title=new.title))  # the default scope: another cache key, so another session
    await session.commit()


async def attempt_begin_block(new: NewOrder, request: Request) -> None:
    async with request.state.sessionmaker() as session, session.begin():
        session.add(Attempt(title=new.title))


async def attempt_shared(new: NewOrder, session: NotebookSessionDep) -> None:
    session.add(Attempt(title=new.title))


async def attempt_shared_commits(new: NewOrder, session: NotebookSessionDep) -> None:
    session.add(Attempt(title=new.title))
    await session.commit()  # commits the hold too


async def attempt_same_depends_again(
        new: NewOrder, session: Annotated[AsyncSession, Depends(get_session, scope="function")]) -> None:
    session.add(Attempt(title=new.title))  # the same function and scope: the request's session after all


async def attempt_fresh_uncommitted(
        new: NewOrder, session: Annotated[AsyncSession, Depends(get_session, scope="function", use_cache=False)]) -> None:
    session.add(Attempt(title=new.title))  # its own session, but get_session rolls it back on the refusal


async def attempt_fresh_flushed(new: NewOrder, session: Annotated[AsyncSession, Depends(get_session, use_cache=False)]):
    session.add(Attempt(title=new.title))
    await session.flush()  # written, not committed: the refusal rolls it back


async def attempt_savepoint(new: NewOrder, session: NotebookSessionDep) -> None:
    async with session.begin_nested():  # a savepoint inside the request's transaction
        session.add(Attempt(title=new.title))


async def attempt_never_closed(new: NewOrder, request: Request) -> None:
    session = request.state.sessionmaker()
    session.add(Attempt(title=new.title))
    await session.commit()


async def attempt_in_memory(new: NewOrder) -> None:
    kept_attempts.append(new.title)  # support reads the database, not this list


async def attempt_in_background(new: NewOrder, request: Request, tasks: BackgroundTasks) -> None:
    async def write() -> None:
        async with request.state.sessionmaker() as session:
            session.add(Attempt(title=new.title))
            await session.commit()

    tasks.add_task(write)  # runs after a response that succeeded; an error response runs no task


def shared_attempt_session():
    kept = {}

    async def attempt_one_session_for_all(new: NewOrder, request: Request) -> None:
        if "session" not in kept:
            kept["session"] = request.state.sessionmaker()
        kept["session"].add(Attempt(title=new.title))
        await kept["session"].commit()

    return attempt_one_session_for_all


async def attempts_report(record_attempt):
    return await check_attempts.report(lesson["orders_app"], record_attempt=record_attempt, SessionDep=NotebookSessionDep)


@pytest.mark.parametrize("record_attempt", [lesson["record_attempt"], attempt_own_maker, attempt_fresh_dependency,
                                            attempt_other_scope, attempt_begin_block],
                         ids=["notebook", "its own sessionmaker", "use_cache=False, committed",
                              "another scope, committed", "session.begin()"])
async def test_attempts_right_answers_pass(record_attempt):
    report = await attempts_report(record_attempt)
    assert report.passed, report.text()


REFUSED = "a refused order: 402, no order and no hold, and still one attempt"
ATTEMPTS_WRONG = {
    "the request's session": (attempt_shared, REFUSED, "needs a session of its own"),
    "the request's session, committed": (attempt_shared_commits, REFUSED, "commits whatever else was in it"),
    "Depends(get_session) again, same scope": (attempt_same_depends_again, REFUSED, "the same way gets the same value"),
    "its own session, never committed": (attempt_fresh_uncommitted, "POST /orders answers 201", "one transaction write at a time"),
    "its own session, flushed only": (attempt_fresh_flushed, "POST /orders answers 201", "one transaction write at a time"),
    "a savepoint in the request's session": (attempt_savepoint, REFUSED, "needs a session of its own"),
    "never closed": (attempt_never_closed, "every session is closed", "async with"),
    "a Python list": (attempt_in_memory, "an order that is paid", "write an Attempt row"),
    "in a background task": (attempt_in_background, REFUSED, "Commit the attempt before the route"),
    "one session kept for every request": (shared_attempt_session(), "4 orders at once", "never one kept"),
}


@pytest.mark.parametrize("mistake", ATTEMPTS_WRONG, ids=list(ATTEMPTS_WRONG))
async def test_attempts_wrong_answers_fail_with_their_hint(mistake):
    record_attempt, item, hint = ATTEMPTS_WRONG[mistake]
    report = await attempts_report(record_attempt)
    assert_fails_at(report, item, hint)


async def test_the_cache_key_includes_the_scope():
    """The lesson's claim, shown by its demo: another scope or use_cache=False is another value."""
    from checks import serve

    Default = Annotated[object, Depends(lesson["connection"])]
    seen = []
    for Second in (Default, Annotated[object, Depends(lesson["connection"], scope="function")],
                   Annotated[object, Depends(lesson["connection"], use_cache=False)]):
        async with serve(lesson["same_value_app"](Default, Second)) as client:
            seen.append((await client.get("/same")).json())
    assert seen == [True, False, False]


async def test_default_scope_and_function_scope_open_two_sessions():
    """The same get_session asked for with the default scope and with scope="function": two sessions."""
    from fastapi import FastAPI

    from checks import serve
    from checks.lesson02 import stats

    app = FastAPI(lifespan=lesson["lifespan"])

    @app.get("/two")
    async def two(a: NotebookSessionDep, b: Annotated[AsyncSession, Depends(get_session)]) -> bool:
        return a is b

    stats.reset()
    async with serve(app) as client:
        same = (await client.get("/two")).json()
    assert same is False and stats.opened == 2
