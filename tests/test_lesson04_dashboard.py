"""Lesson 04, exercise 1: the dashboard calls its three services at once, hides an extra's
outage, and hides nothing else: no profile means 502 with the extras cancelled, a bug means
500, and a cancelled request cancels its calls."""

import asyncio
import concurrent.futures

import pytest
from fastapi import HTTPException

from checks.lesson04 import UpstreamError, check_dashboard, orders_api, profile_api, recommendations_api
from conftest import failure_text, warnings_from_checks
from lesson04_helpers import APIS, NAMES, app_with, assert_fails, lesson

pytestmark = pytest.mark.anyio


async def extra(call):
    try:
        return await call
    except UpstreamError as error:
        return {"error": str(error)}


def page(profile, orders, recommendations):
    return {"profile": profile, "orders": orders, "recommendations": recommendations}


# ---- right answers ------------------------------------------------------------------------------

async def dashboard_tasks_cancelled_in_finally(user: str):
    tasks = [asyncio.create_task(profile_api.get(user)), asyncio.create_task(extra(orders_api.get(user))),
             asyncio.create_task(extra(recommendations_api.get(user)))]
    try:
        return page(*await asyncio.gather(*tasks))
    except UpstreamError:
        raise HTTPException(502, "no profile")
    finally:
        for task in tasks:
            task.cancel()


async def dashboard_first_exception(user: str):
    tasks = [asyncio.create_task(profile_api.get(user)), asyncio.create_task(extra(orders_api.get(user))),
             asyncio.create_task(extra(recommendations_api.get(user)))]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            task.cancel()
    for task in done:
        if task.exception() is not None:
            if task is tasks[0] and isinstance(task.exception(), UpstreamError):
                raise HTTPException(502, "no profile")
            raise task.exception()  # a bug: a 500
    return page(*(task.result() for task in tasks))


async def dashboard_task_group_wrapped_profile(user: str):
    class NoProfile(Exception):
        pass

    async def profile():
        try:
            return await profile_api.get(user)
        except UpstreamError as error:
            raise NoProfile from error

    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(profile()), group.create_task(extra(orders_api.get(user))),
                     group.create_task(extra(recommendations_api.get(user)))]
    except* NoProfile:
        raise HTTPException(502, "no profile")
    return page(*(task.result() for task in tasks))


@pytest.mark.parametrize("endpoint", [lesson["dashboard"], dashboard_tasks_cancelled_in_finally,
                                      dashboard_first_exception, dashboard_task_group_wrapped_profile],
                         ids=["the lesson's TaskGroup", "tasks cancelled in finally", "FIRST_EXCEPTION",
                              "TaskGroup, the profile's outage renamed"])
async def test_dashboard_right_answers_pass(endpoint):
    report = await check_dashboard.report(app_with("/dashboard/{user}", endpoint))
    assert report.passed, report.text()


async def test_the_lessons_own_app_passes():
    report = await check_dashboard.report(lesson["dashboard_app"])
    assert report.passed, report.text()


# ---- wrong answers -------------------------------------------------------------------------------

async def sequential(user: str):
    try:
        profile = await profile_api.get(user)
    except UpstreamError:
        raise HTTPException(502)
    return page(profile, await extra(orders_api.get(user)), await extra(recommendations_api.get(user)))


async def everything_returned_as_results(user: str):
    p, o, r = await asyncio.gather(*(api.get(user) for api in APIS), return_exceptions=True)
    if isinstance(p, Exception):
        raise HTTPException(502)
    return page(p, *({"error": str(x)} if isinstance(x, Exception) else x for x in (o, r)))


async def plain_gather(user: str):
    try:
        return page(*await asyncio.gather(profile_api.get(user), extra(orders_api.get(user)),
                                          extra(recommendations_api.get(user))))
    except UpstreamError:
        raise HTTPException(502)


async def extras_catch_everything(user: str):
    async def extra_any(call):
        try:
            return await call
        except Exception as error:  # "an extra must never break the page"
            return {"error": str(error)}

    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(profile_api.get(user)), group.create_task(extra_any(orders_api.get(user))),
                     group.create_task(extra_any(recommendations_api.get(user)))]
    except* UpstreamError:
        raise HTTPException(502)
    return page(*(task.result() for task in tasks))


async def task_group_unhandled(user: str):
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(api.get(user)) for api in APIS]
    except* UpstreamError:
        raise HTTPException(502)
    return page(*(task.result() for task in tasks))


async def profile_hidden_too(user: str):
    results = await asyncio.gather(*(extra(api.get(user)) for api in APIS))
    return dict(zip(NAMES, results))


async def only_recommendations_handled(user: str):
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(profile_api.get(user)), group.create_task(orders_api.get(user)),
                     group.create_task(extra(recommendations_api.get(user)))]
    except* UpstreamError:
        raise HTTPException(502)
    return page(*(task.result() for task in tasks))


async def marker_none(user: str):
    async def extra_none(call):
        try:
            return await call
        except UpstreamError:
            return None

    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(profile_api.get(user)), group.create_task(extra_none(orders_api.get(user))),
                     group.create_task(extra_none(recommendations_api.get(user)))]
    except* UpstreamError:
        raise HTTPException(502)
    return page(*(task.result() for task in tasks))


async def as_completed_zipped(user: str):
    calls = [profile_api.get(user), extra(orders_api.get(user)), extra(recommendations_api.get(user))]
    try:
        return dict(zip(NAMES, [await f for f in asyncio.as_completed(calls)]))
    except UpstreamError:
        raise HTTPException(502)


async def blocking_client(user: str):
    def safe(api):
        try:
            return api.get_blocking(user)
        except UpstreamError as error:
            return {"error": str(error)}

    try:
        profile = profile_api.get_blocking(user)
    except UpstreamError:
        raise HTTPException(502)
    return page(profile, safe(orders_api), safe(recommendations_api))


async def tasks_awaited_in_turn(user: str):
    # cancels the extras when the profile fails, but not when the request itself is cancelled
    tasks = [asyncio.create_task(profile_api.get(user)), asyncio.create_task(extra(orders_api.get(user))),
             asyncio.create_task(extra(recommendations_api.get(user)))]
    try:
        profile = await tasks[0]
    except UpstreamError:
        for task in tasks[1:]:
            task.cancel()
        raise HTTPException(502)
    return page(profile, await tasks[1], await tasks[2])


async def every_error_a_bad_gateway(user: str):
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(profile_api.get(user)), group.create_task(extra(orders_api.get(user))),
                     group.create_task(extra(recommendations_api.get(user)))]
    except* Exception:
        raise HTTPException(502)
    return page(*(task.result() for task in tasks))


async def profile_outage_not_mapped(user: str):
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(profile_api.get(user)), group.create_task(extra(orders_api.get(user))),
                 group.create_task(extra(recommendations_api.get(user)))]
    return page(*(task.result() for task in tasks))


def def_route_threads(user: str):
    # a plain `def` route: the blocking clients in threads, which nothing can cancel
    def safe(api):
        try:
            return api.get_blocking(user)
        except UpstreamError as error:
            return {"error": str(error)}

    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        profile = pool.submit(profile_api.get_blocking, user)
        extras = [pool.submit(safe, api) for api in (orders_api, recommendations_api)]
        try:
            return page(profile.result(), *(future.result() for future in extras))
        except UpstreamError:
            raise HTTPException(502)


@pytest.mark.parametrize("endpoint, failure, hint", [
    (sequential, "the upstream calls overlap", "at once"),
    (everything_returned_as_results, "when the profile fails, the extras' calls are cancelled", "waits for every call"),
    (plain_gather, "when the profile fails, the extras' calls are cancelled", "does not cancel the others"),
    (extras_catch_everything, "a bug is not hidden", "by name"),
    (task_group_unhandled, "GET /dashboard/{user} answers 200 when", "failed the whole page"),
    (profile_hidden_too, "no profile, no page", "must fail the request"),
    (only_recommendations_handled, "GET /dashboard/{user} answers 200 when orders", "failed the whole page"),
    (marker_none, "each result, or an error marker", "message"),
    (as_completed_zipped, "each result, or an error marker", "order they finished"),
    (blocking_client, "keeps the event loop free", "get_blocking"),
    (tasks_awaited_in_turn, "a dashboard cancelled while it waits", "cancel what they wait for"),
    (every_error_a_bad_gateway, "a bug is not hidden", "bad gateway"),
    (profile_outage_not_mapped, "no profile, no page", "except*"),
    (def_route_threads, "when the profile fails, the extras' calls are cancelled", "waits for every call"),
], ids=["sequential", "return_exceptions for all three", "plain gather", "extras catch every exception",
        "TaskGroup, nothing caught inside", "the profile hidden too", "only recommendations handled",
        "null marker", "as_completed zipped with names", "blocking client", "tasks awaited in turn",
        "every error a 502", "the profile's outage not mapped", "def route, threads"])
async def test_dashboard_mistakes(endpoint, failure, hint):
    report = await check_dashboard.report(app_with("/dashboard/{user}", endpoint))
    assert_fails(report, failure, hint)
    assert not any(api.running() for api in APIS)


async def test_sequential_is_judged_by_exact_overlap():
    report = await check_dashboard.report(app_with("/dashboard/{user}", sequential))
    assert "at most 1 of 3" in failure_text(report)


async def test_the_checks_own_code_raises_no_warning():
    assert await warnings_from_checks(check_dashboard.report(app_with("/dashboard/{user}", plain_gather))) == []
