"""Lesson 04, exercise 5: concurrent writes, one session per task; the database refuses one
visit (picked at random), which must lose nothing else and must not be hidden."""

import asyncio
import contextlib
import time

import pytest
from sqlalchemy.exc import IntegrityError

from checks.lesson04 import Visit, check_one_session_per_task
from conftest import assert_feedback_rules, names, warnings_from_checks
from lesson04_helpers import lesson

pytestmark = pytest.mark.anyio


async def record(sessions, page):
    async with sessions() as session:
        session.add(Visit(page=page))
        await session.commit()


# ---- right answers ------------------------------------------------------------------------------

async def visits_gather(sessions, pages):
    outcomes = await asyncio.gather(*(record(sessions, p) for p in pages), return_exceptions=True)
    return [p for p, outcome in zip(pages, outcomes) if isinstance(outcome, IntegrityError)]


async def visits_task_group_each_catches(sessions, pages):
    refused = []

    async def one(page):
        try:
            # (not `sessions.begin()`: when its commit fails, SQLAlchemy 2.1 never calls close())
            async with sessions() as session, session.begin():  # commits at the end of the block
                session.add(Visit(page=page))
        except IntegrityError:
            refused.append(page)  # caught inside its own task: the group never sees it

    async with asyncio.TaskGroup() as group:
        for page in pages:
            group.create_task(one(page))
    return refused


async def visits_two_at_a_time(sessions, pages):
    limit = asyncio.Semaphore(2)

    async def one(page):
        async with limit:
            try:
                await record(sessions, page)
            except IntegrityError:
                return page

    return [p for p in await asyncio.gather(*(one(p) for p in pages)) if p is not None]


async def visits_returns_a_set(sessions, pages):
    outcomes = await asyncio.gather(*(record(sessions, p) for p in pages), return_exceptions=True)
    return {p for p, outcome in zip(pages, outcomes) if isinstance(outcome, Exception)}


@pytest.mark.parametrize("record_visits", [lesson["record_visits"], visits_gather, visits_task_group_each_catches,
                                           visits_two_at_a_time, visits_returns_a_set],
                         ids=["the lesson's", "gather, return_exceptions", "TaskGroup, each task catches",
                              "two at a time", "a set of pages"])
async def test_right_answers_pass(record_visits):
    report = await check_one_session_per_task.report(record_visits)
    assert report.passed, report.text()


# ---- wrong answers -------------------------------------------------------------------------------

async def visits_shared(sessions, pages):
    async with sessions() as session:
        async def one(page):
            session.add(Visit(page=page))
            await session.flush()
        await asyncio.gather(*(one(p) for p in pages))
        await session.commit()
    return []


async def visits_sequential(sessions, pages):
    refused = []
    for page in pages:
        try:
            await record(sessions, page)
        except IntegrityError:
            refused.append(page)
    return refused


async def visits_all_open_one_by_one(sessions, pages):
    refused = []
    async with contextlib.AsyncExitStack() as stack:
        opened = [await stack.enter_async_context(sessions()) for _ in pages]  # all open at once...
        for session, page in zip(opened, pages):  # ...writing one after another
            try:
                session.add(Visit(page=page))
                await session.commit()
            except IntegrityError:
                await session.rollback()
                refused.append(page)
    return refused


async def visits_lock(sessions, pages):
    lock = asyncio.Lock()

    async def one(page):
        async with sessions() as session:
            async with lock:  # "SQLite allows one writer"
                session.add(Visit(page=page))
                await session.commit()

    outcomes = await asyncio.gather(*(one(p) for p in pages), return_exceptions=True)
    return [p for p, outcome in zip(pages, outcomes) if isinstance(outcome, IntegrityError)]


async def visits_never_closed(sessions, pages):
    async def one(page):
        session = sessions()
        session.add(Visit(page=page))
        await session.commit()

    outcomes = await asyncio.gather(*(one(p) for p in pages), return_exceptions=True)
    return [p for p, outcome in zip(pages, outcomes) if isinstance(outcome, IntegrityError)]


async def visits_not_committed(sessions, pages):
    async def one(page):
        async with sessions() as session:
            session.add(Visit(page=page))
            await session.flush()

    outcomes = await asyncio.gather(*(one(p) for p in pages), return_exceptions=True)
    return [p for p, outcome in zip(pages, outcomes) if isinstance(outcome, IntegrityError)]


async def visits_sleep_before_commit(sessions, pages):
    async def one(page):
        async with sessions() as session:
            session.add(Visit(page=page))
            time.sleep(0.002)  # "give SQLite a moment"
            await session.commit()

    outcomes = await asyncio.gather(*(one(p) for p in pages), return_exceptions=True)
    return [p for p, outcome in zip(pages, outcomes) if isinstance(outcome, IntegrityError)]


async def visits_one_session(sessions, pages):
    async with sessions() as session:
        session.add_all([Visit(page=p) for p in pages])
        await session.commit()
    return []


async def visits_task_group(sessions, pages):
    async with asyncio.TaskGroup() as group:
        for page in pages:
            group.create_task(record(sessions, page))
    return []


async def visits_plain_gather(sessions, pages):
    await asyncio.gather(*(record(sessions, p) for p in pages))
    return []


async def visits_first_error_caught(sessions, pages):
    try:
        await asyncio.gather(*(record(sessions, p) for p in pages))
    except IntegrityError as error:
        return [error.params[0]]  # the others are still writing when this returns
    return []


async def visits_refusal_hidden(sessions, pages):
    await asyncio.gather(*(record(sessions, p) for p in pages), return_exceptions=True)
    return []


async def visits_returns_the_errors(sessions, pages):
    outcomes = await asyncio.gather(*(record(sessions, p) for p in pages), return_exceptions=True)
    return [str(outcome) for outcome in outcomes if isinstance(outcome, Exception)]


async def visits_task_group_swallowed(sessions, pages):
    refused = []
    try:
        async with asyncio.TaskGroup() as group:
            for page in pages:
                group.create_task(record(sessions, page))
    except* IntegrityError as errors:
        refused = [error.params[0] for error in errors.exceptions]
    return refused


@pytest.mark.parametrize("record_visits, failed", [
    (visits_shared, "each task has its own session"),
    (visits_sequential, "one session per task, writing at the same time"),
    (visits_all_open_one_by_one, "one session per task, writing at the same time"),
    (visits_lock, "one session per task, writing at the same time"),
    (visits_never_closed, "every session is closed when record_visits returns"),
    (visits_not_committed, "every other visit is stored"),
    (visits_sleep_before_commit, "keeps the event loop free"),
    (visits_one_session, "each task has its own session"),
    (visits_task_group, "one refused visit does not fail the call"),
    (visits_plain_gather, "one refused visit does not fail the call"),
    (visits_first_error_caught, "every session is closed when record_visits returns"),
    (visits_refusal_hidden, "returns the pages it could not store"),
    (visits_returns_the_errors, "returns the pages it could not store"),
    (visits_task_group_swallowed, "every other visit is stored"),
], ids=["shared session", "one after another", "all open, writing one by one", "a lock around the writes",
        "never closed", "not committed", "time.sleep", "one session for all", "TaskGroup", "plain gather",
        "the first error caught, the rest left running", "the refusal hidden", "the errors, not the pages",
        "TaskGroup, its group caught"])
async def test_mistakes(record_visits, failed):
    report = await check_one_session_per_task.report(record_visits)
    assert names(report)[:1] == [failed], report.text()
    assert_feedback_rules(report)


async def test_a_task_group_is_told_the_visits_are_independent():
    report = await check_one_session_per_task.report(visits_task_group)
    assert "TaskGroup cancels every other write" in report.failures[0].hint, report.text()


async def test_the_checks_own_code_raises_no_warning():
    assert await warnings_from_checks(check_one_session_per_task.report(visits_plain_gather)) == []
