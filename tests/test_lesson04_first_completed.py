"""Lesson 04, exercise 4: the first mirror to answer wins; the others, and a cancelled request's
calls, are cancelled."""

import asyncio
import time

import pytest

from checks.lesson04 import check_first_completed, mirrors
from conftest import warnings_from_checks
from lesson04_helpers import app_with, assert_fails, lesson

pytestmark = pytest.mark.anyio


async def test_the_lessons_own_answer_passes():
    report = await check_first_completed.report(lesson["download_app"])
    assert report.passed, report.text()

async def download_wait(name: str):
    tasks = [asyncio.create_task(m.get(name)) for m in mirrors]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        return done.pop().result()
    finally:
        for task in tasks:
            task.cancel()  # not awaited: each ends at its next step


async def download_as_completed(name: str):
    tasks = [asyncio.create_task(m.get(name)) for m in mirrors]
    try:
        for first in asyncio.as_completed(tasks):
            return await first
    finally:
        for task in tasks:
            task.cancel()


class _Found(Exception):
    pass


async def download_task_group(name: str):
    found = []

    async def ask(mirror):
        found.append(await mirror.get(name))
        raise _Found  # the TaskGroup cancels the others, and cancels all if the request is cancelled

    try:
        async with asyncio.TaskGroup() as group:
            for mirror in mirrors:
                group.create_task(ask(mirror))
    except* _Found:
        pass
    return found[0]


async def download_cancel_and_wait(name: str):
    tasks = [asyncio.create_task(m.get(name)) for m in mirrors]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        return done.pop().result()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def download_not_cancelled(name: str):
    tasks = [asyncio.create_task(m.get(name)) for m in mirrors]
    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    return done.pop().result()


async def download_cancel_only_on_success(name: str):
    # the old reference: cancels after `wait` returns, so not when the request itself is cancelled
    tasks = [asyncio.create_task(m.get(name)) for m in mirrors]
    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    return done.pop().result()


async def download_gather_then_pick(name: str):
    results = await asyncio.gather(*(m.get(name) for m in mirrors))
    return results[min(range(len(mirrors)), key=lambda i: mirrors[i].latency(name))]


async def download_first_in_list(name: str):
    return await mirrors[0].get(name)


async def download_by_index(name: str):
    tasks = [asyncio.create_task(m.get(name)) for m in mirrors]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        return tasks[0].result()  # the first task, not the first done
    finally:
        for task in tasks:
            task.cancel()


async def download_wait_coroutines(name: str):
    done, pending = await asyncio.wait([m.get(name) for m in mirrors], return_when=asyncio.FIRST_COMPLETED)
    return done.pop().result()


async def download_as_completed_not_cancelled(name: str):
    for first in asyncio.as_completed([m.get(name) for m in mirrors]):
        return await first


async def download_wait_all(name: str):
    tasks = [asyncio.create_task(m.get(name)) for m in mirrors]
    await asyncio.wait(tasks, return_when=asyncio.ALL_COMPLETED)
    return min(zip((m.latency(name) for m in mirrors), (t.result() for t in tasks)), key=lambda p: p[0])[1]


async def download_in_threads(name: str):
    tasks = [asyncio.create_task(asyncio.to_thread(m.get_blocking, name)) for m in mirrors]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        return done.pop().result()
    finally:
        for task in tasks:
            task.cancel()


async def download_polls(name: str):
    tasks = [asyncio.create_task(m.get(name)) for m in mirrors]
    try:
        while not any(t.done() for t in tasks):
            await asyncio.sleep(0)
            time.sleep(0.001)  # "don't spin too fast"
        return next(t for t in tasks if t.done()).result()
    finally:
        for task in tasks:
            task.cancel()


@pytest.mark.parametrize("endpoint", [download_wait, download_as_completed, download_task_group, download_cancel_and_wait])
async def test_first_completed_right_answers_pass(endpoint):
    report = await check_first_completed.report(app_with("/download/{name}", endpoint))
    assert report.passed, report.text()


@pytest.mark.parametrize("endpoint, failure, hint", [
    (download_not_cancelled, "the other mirrors are cancelled", ".cancel()"),
    (download_cancel_only_on_success, "a download cancelled while it waits", "finally"),
    (download_gather_then_pick, "answers as soon as the first mirror does", "FIRST_COMPLETED"),
    (download_first_in_list, "answers with the fastest mirror's result", "first mirror in the list"),
    (download_by_index, "GET /download/{name} answers 200", "`done`"),
    (download_wait_coroutines, "GET /download/{name} answers 200", "create_task"),
    (download_as_completed_not_cancelled, "the other mirrors are cancelled", ".cancel()"),
    (download_wait_all, "answers as soon as the first mirror does", "FIRST_COMPLETED"),
    # Nine calls queue for the default executor's six threads (2 cores): late, or not the fastest, by luck.
    (download_in_threads, ("the other mirrors are cancelled", "answers with the fastest", "answers as soon as"), "thread"),
    (download_polls, "keeps the event loop free", "time.sleep"),
], ids=["not cancelled", "cancelled only after wait returns", "gather then pick", "first in the list",
        "the first task's result", "coroutines to wait", "as_completed, not cancelled", "wait for all",
        "threads cannot be cancelled", "polling with time.sleep"])
async def test_first_completed_mistakes(endpoint, failure, hint):
    report = await check_first_completed.report(app_with("/download/{name}", endpoint))
    assert_fails(report, failure, hint)


async def test_the_checks_own_code_raises_no_warning():
    assert await warnings_from_checks(check_first_completed.report(app_with("/download/{name}", download_wait))) == []
