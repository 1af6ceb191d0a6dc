"""Lesson 04, exercise 2: a 0.3 s deadline on a service that sometimes never answers; the late
call is cancelled, not left running."""

import asyncio
import time

import pytest

from checks.lesson04 import ads_api, check_deadline
from conftest import failure_text, warnings_from_checks
from lesson04_helpers import app_with, assert_fails, lesson

pytestmark = pytest.mark.anyio


async def test_the_lessons_own_answer_passes():
    report = await check_deadline.report(lesson["ads_app"])
    assert report.passed, report.text()

async def ads_timeout(user: str):
    try:
        async with asyncio.timeout(0.3):
            return {"ads": await ads_api.get(user)}
    except TimeoutError:
        return {"ads": None}


async def ads_wait_for(user: str):
    try:
        return {"ads": await asyncio.wait_for(ads_api.get(user), timeout=0.3)}
    except TimeoutError:
        return {"ads": None}


async def ads_wait_then_cancel(user: str):
    task = asyncio.create_task(ads_api.get(user))
    done, _ = await asyncio.wait({task}, timeout=0.3)
    if done:
        return {"ads": task.result()}
    task.cancel()  # not awaited: the cancellation lands at the task's next step, after the response
    return {"ads": None}


async def ads_task_group_timeout(user: str):
    try:
        async with asyncio.timeout(0.3), asyncio.TaskGroup() as group:
            task = group.create_task(ads_api.get(user))
        return {"ads": task.result()}
    except TimeoutError:
        return {"ads": None}


async def ads_wait_left_running(user: str):
    task = asyncio.create_task(ads_api.get(user))
    done, _ = await asyncio.wait({task}, timeout=0.3)
    return {"ads": task.result() if done else None}


async def ads_no_deadline(user: str):
    return {"ads": await ads_api.get(user)}


async def ads_too_short(user: str):
    try:
        async with asyncio.timeout(0.1):
            return {"ads": await ads_api.get(user)}
    except TimeoutError:
        return {"ads": None}


async def ads_too_long(user: str):
    try:
        async with asyncio.timeout(0.8):
            return {"ads": await ads_api.get(user)}
    except TimeoutError:
        return {"ads": None}


async def ads_catches_cancelled(user: str):
    try:
        async with asyncio.timeout(0.3):
            return {"ads": await ads_api.get(user)}
    except asyncio.CancelledError:  # asyncio.timeout turns the cancellation into TimeoutError at its end
        return {"ads": None}


async def ads_shielded(user: str):
    task = asyncio.create_task(ads_api.get(user))
    try:
        return {"ads": await asyncio.wait_for(asyncio.shield(task), timeout=0.3)}
    except TimeoutError:
        return {"ads": None}


async def ads_empty_list(user: str):
    try:
        async with asyncio.timeout(0.3):
            return {"ads": await ads_api.get(user)}
    except TimeoutError:
        return {"ads": []}


async def ads_in_a_thread(user: str):
    try:
        return {"ads": await asyncio.wait_for(asyncio.to_thread(ads_api.get_blocking, user), timeout=0.3)}
    except TimeoutError:
        return {"ads": None}


async def ads_sleep_then_look(user: str):
    task = asyncio.create_task(ads_api.get(user))
    await asyncio.sleep(0)
    time.sleep(0.3)  # "wait for the deadline", holding the loop: the task cannot move meanwhile
    if task.done():
        return {"ads": task.result()}
    task.cancel()
    return {"ads": None}


_cache: dict = {}


async def ads_kept_for_later(user: str):
    # "keep the late answer for the next page view": a call that never answers is kept for ever
    task = _cache.get(user) or asyncio.create_task(ads_api.get(user))
    _cache[user] = task
    try:
        return {"ads": await asyncio.wait_for(asyncio.shield(task), timeout=0.3)}
    except TimeoutError:
        return {"ads": None}


async def ads_asked_twice(user: str):
    try:
        async with asyncio.timeout(0.3):
            return {"ads": await ads_api.get(user)}
    except TimeoutError:
        try:  # "one more chance", after the deadline
            async with asyncio.timeout(0.05):
                return {"ads": await ads_api.get(user)}
        except TimeoutError:
            return {"ads": None}


async def test_a_call_left_running_is_counted_and_stopped():
    report = await check_deadline.report(app_with("/ads/{user}", ads_wait_left_running))
    assert "1 call(s) still running after the response" in failure_text(report), report.text()
    assert not ads_api.running()


async def test_the_checks_own_code_raises_no_warning():
    assert await warnings_from_checks(check_deadline.report(app_with("/ads/{user}", ads_timeout))) == []


@pytest.mark.parametrize("endpoint", [ads_timeout, ads_wait_for, ads_wait_then_cancel, ads_task_group_timeout])
async def test_deadline_right_answers_pass(endpoint):
    report = await check_deadline.report(app_with("/ads/{user}", endpoint))
    assert report.passed, report.text()


@pytest.mark.parametrize("endpoint, failure, hint", [
    (ads_wait_left_running, "the late call is cancelled", "not stopping the call"),
    (ads_no_deadline, "a service that never answers", "deadline"),
    (ads_too_short, "an ads service that answers in", "too early"),
    (ads_too_long, "a service that never answers", "past its deadline"),
    (ads_catches_cancelled, "GET /ads/{user} answers 200", "raised"),
    (ads_shielded, "the late call is cancelled", "not stopping the call"),
    (ads_kept_for_later, "the late call is cancelled", "not stopping the call"),
    (ads_empty_list, "a service that never answers", "null"),
    (ads_in_a_thread, "the late call is cancelled", "thread"),
    (ads_sleep_then_look, "keeps the event loop free", "time.sleep"),
    (ads_asked_twice, "the late call is cancelled", "once per request"),
], ids=["asyncio.wait leaves it running", "no deadline", "deadline too short", "deadline too long",
        "catches CancelledError", "shielded", "kept running to fill a cache", "[] for no ads",
        "a thread cannot be cancelled", "time.sleep", "a retry after the deadline"])
async def test_deadline_mistakes(endpoint, failure, hint):
    report = await check_deadline.report(app_with("/ads/{user}", endpoint))
    assert_fails(report, failure, hint)
    assert not ads_api.running(), "the check stops the calls an answer left running"


async def test_deadline_is_judged_against_the_tasks_own_deadline():
    report = await check_deadline.report(app_with("/ads/{user}", ads_too_long))
    assert "between 250 and 600 ms" in failure_text(report)
