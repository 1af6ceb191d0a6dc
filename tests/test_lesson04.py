"""Lesson 04's checks: every right way to combine awaits passes; each classic mistake fails."""

import asyncio

import pytest
from fastapi import FastAPI

from checks.lesson04 import (
    ads_api, check_dashboard, check_deadline, check_fan_out, check_first_completed, check_partial_failure,
    UpstreamError, flaky_recommendations, mirrors, orders_api, prices_api, profile_api, recommendations_api,
)
from conftest import assert_feedback_rules, failure_text, names

pytestmark = pytest.mark.anyio


def app_with(path, endpoint):
    app = FastAPI()
    app.add_api_route(path, endpoint, methods=["GET"])
    return app


# ---- exercise 1 --------------------------------------------------------------------------------

async def dashboard_gather(user: str):
    p, o, r = await asyncio.gather(profile_api.get(user), orders_api.get(user), recommendations_api.get(user))
    return {"profile": p, "orders": o, "recommendations": r}


async def dashboard_task_group(user: str):
    async with asyncio.TaskGroup() as group:
        tasks = {name: group.create_task(api.get(user)) for name, api in
                 (("profile", profile_api), ("orders", orders_api), ("recommendations", recommendations_api))}
    return {name: task.result() for name, task in tasks.items()}


async def dashboard_sequential(user: str):
    return {"profile": await profile_api.get(user), "orders": await orders_api.get(user),
            "recommendations": await recommendations_api.get(user)}


@pytest.mark.parametrize("endpoint", [dashboard_gather, dashboard_task_group])
async def test_dashboard_right_answers_pass(endpoint):
    report = await check_dashboard.report(app_with("/dashboard/{user}", endpoint))
    assert report.passed, report.text()


async def test_sequential_awaits_fail_on_overlap():
    report = await check_dashboard.report(app_with("/dashboard/{user}", dashboard_sequential))
    assert names(report) == ["the upstream calls overlap"]
    assert "at most 1 of 3" in failure_text(report) and "gather" in failure_text(report)
    assert_feedback_rules(report)


# ---- exercise 2 --------------------------------------------------------------------------------

async def resilient_gather(user: str):
    results = await asyncio.gather(profile_api.get(user), orders_api.get(user), flaky_recommendations.get(user),
                                   return_exceptions=True)
    return {k: {"error": repr(v)} if isinstance(v, Exception) else v
            for k, v in zip(("profile", "orders", "recommendations"), results)}


async def resilient_task_group(user: str):
    async def safe(call):
        try:
            return await call
        except Exception as error:
            return {"error": str(error)}

    async with asyncio.TaskGroup() as group:
        p, o, r = (group.create_task(safe(c)) for c in
                   (profile_api.get(user), orders_api.get(user), flaky_recommendations.get(user)))
    return {"profile": p.result(), "orders": o.result(), "recommendations": r.result()}


async def gather_unhandled(user: str):
    p, o, r = await asyncio.gather(profile_api.get(user), orders_api.get(user), flaky_recommendations.get(user))
    return {"profile": p, "orders": o, "recommendations": r}


async def handled_but_sequential(user: str):
    try:
        recommendations = await flaky_recommendations.get(user)
    except Exception as error:
        recommendations = {"error": str(error)}
    return {"profile": await profile_api.get(user), "orders": await orders_api.get(user),
            "recommendations": recommendations}


@pytest.mark.parametrize("endpoint", [resilient_gather, resilient_task_group])
async def test_partial_failure_right_answers_pass(endpoint):
    report = await check_partial_failure.report(app_with("/dashboard/{user}", endpoint))
    assert report.passed, report.text()


@pytest.mark.parametrize(
    "endpoint, failed, hint",
    [
        (gather_unhandled, ["GET /dashboard/{user} answers 200 although recommendations fail"], "return_exceptions"),
        (handled_but_sequential, ["the upstream calls overlap"], "concurrent"),
    ],
    ids=["gather without handling", "handled but sequential"],
)
async def test_partial_failure_mistakes(endpoint, failed, hint):
    report = await check_partial_failure.report(app_with("/dashboard/{user}", endpoint))
    assert [n.replace(n.split(" ")[1], "/dashboard/{user}") if n.startswith("GET") else n for n in names(report)] == failed
    assert hint in failure_text(report)
    assert_feedback_rules(report)


# ---- exercise 3 --------------------------------------------------------------------------------

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


async def ads_wait_left_running(user: str):
    task = asyncio.create_task(ads_api.get(user))
    done, _ = await asyncio.wait({task}, timeout=0.3)
    return {"ads": task.result() if done else None}


async def ads_no_deadline(user: str):
    return {"ads": await ads_api.get(user)}


@pytest.mark.parametrize("endpoint", [ads_timeout, ads_wait_for])
async def test_deadline_right_answers_pass(endpoint):
    report = await check_deadline.report(app_with("/ads/{user}", endpoint))
    assert report.passed, report.text()


@pytest.mark.parametrize(
    "endpoint, failed",
    [
        (ads_wait_left_running, ["nothing is left running after the answer"]),
        (ads_no_deadline, ["a slow ads service: the answer comes on time, without ads", "nothing is left running after the answer"]),
    ],
    ids=["asyncio.wait leaves it running", "no deadline"],
)
async def test_deadline_mistakes(endpoint, failed):
    report = await check_deadline.report(app_with("/ads/{user}", endpoint))
    assert names(report) == failed, report.text()
    assert_feedback_rules(report)
    await asyncio.sleep(0)  # a leaked call is the mistake under test; it ends on its own


# ---- exercise 4 --------------------------------------------------------------------------------

async def price_or_none(sku):
    try:
        return await prices_api.get(sku)
    except UpstreamError:
        return None


async def prices_semaphore(skus: str):
    limit = asyncio.Semaphore(4)

    async def one(sku):
        async with limit:
            return await price_or_none(sku)

    return {"prices": await asyncio.gather(*(one(s) for s in skus.split(",")))}


async def prices_batches(skus: str):
    items, out = skus.split(","), []
    for start in range(0, len(items), 4):
        out += await asyncio.gather(*(price_or_none(s) for s in items[start:start + 4]))
    return {"prices": out}


async def prices_unbounded(skus: str):
    return {"prices": await asyncio.gather(*(price_or_none(s) for s in skus.split(",")))}


async def prices_semaphore_per_call(skus: str):
    async def one(sku):
        async with asyncio.Semaphore(4):  # a new semaphore for each call bounds nothing
            return await price_or_none(sku)

    return {"prices": await asyncio.gather(*(one(s) for s in skus.split(",")))}


async def prices_sequential(skus: str):
    return {"prices": [await price_or_none(s) for s in skus.split(",")]}


async def prices_permit_leaked_on_error(skus: str):
    limit = asyncio.Semaphore(4)

    async def one(sku):
        await limit.acquire()
        try:
            result = await prices_api.get(sku)
        except UpstreamError:
            return None  # returns without release(): this place is lost for good
        limit.release()
        return result

    return {"prices": await asyncio.gather(*(one(s) for s in skus.split(",")))}


@pytest.mark.parametrize("endpoint", [prices_semaphore, prices_batches])
async def test_fan_out_right_answers_pass(endpoint):
    report = await check_fan_out.report(app_with("/prices", endpoint))
    assert report.passed, report.text()


@pytest.mark.parametrize("endpoint, hint", [
    (prices_unbounded, "Semaphore(4)"), (prices_semaphore_per_call, "Semaphore(4)"), (prices_sequential, "concurrently"),
    (prices_permit_leaked_on_error, "give its place back"),
], ids=["unbounded", "semaphore per call", "sequential", "permit leaked on error"])
async def test_fan_out_mistakes(endpoint, hint):
    report = await check_fan_out.report(app_with("/prices", endpoint))
    assert len(names(report)) == 1, report.text()
    assert hint in failure_text(report)
    assert_feedback_rules(report)


# ---- exercise 5 --------------------------------------------------------------------------------

async def download_wait(name: str):
    tasks = [asyncio.create_task(m.get(name)) for m in mirrors]
    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    return done.pop().result()


async def download_as_completed(name: str):
    tasks = [asyncio.create_task(m.get(name)) for m in mirrors]
    try:
        for first in asyncio.as_completed(tasks):
            return await first
    finally:
        for task in tasks:
            task.cancel()


async def download_not_cancelled(name: str):
    tasks = [asyncio.create_task(m.get(name)) for m in mirrors]
    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    return done.pop().result()


async def download_gather_then_pick(name: str):
    results = await asyncio.gather(*(m.get(name) for m in mirrors))
    return results[min(range(len(mirrors)), key=lambda i: mirrors[i].latency_s)]


async def download_first_in_list(name: str):
    return await mirrors[0].get(name)


@pytest.mark.parametrize("endpoint", [download_wait, download_as_completed])
async def test_first_completed_right_answers_pass(endpoint):
    report = await check_first_completed.report(app_with("/download/{name}", endpoint))
    assert report.passed, report.text()


@pytest.mark.parametrize("endpoint, expected_failure", [
    (download_not_cancelled, "the other mirrors are cancelled"),
    (download_gather_then_pick, "answers as soon as the first mirror does"),
], ids=["not cancelled", "gather then pick"])
async def test_first_completed_mistakes(endpoint, expected_failure):
    report = await check_first_completed.report(app_with("/download/{name}", endpoint))
    assert expected_failure in names(report), report.text()
    assert_feedback_rules(report)


async def test_asking_only_the_first_mirror_fails_whichever_is_fastest():
    # When the first mirror is the fastest, its answer is right, but the others were never asked.
    report = await check_first_completed.report(app_with("/download/{name}", download_first_in_list))
    assert set(names(report)) & {"answers with the fastest mirror's result", "the other mirrors are cancelled"}
    assert_feedback_rules(report)


async def test_the_checks_own_code_raises_no_warning():
    from conftest import warnings_from_checks

    assert await warnings_from_checks(
        check_dashboard.report(app_with("/dashboard/{user}", dashboard_sequential)),
        check_deadline.report(app_with("/ads/{user}", ads_timeout)),
        check_fan_out.report(app_with("/prices", prices_unbounded)),
        check_first_completed.report(app_with("/download/{name}", download_wait)),
    ) == []


# ---- exercise 6 ------------------------------------------------------------------------------------------

from checks.lesson04 import Visit, check_one_session_per_task  # noqa: E402


async def visits_gather(sessions, pages):
    async def record(page):
        async with sessions() as session:
            session.add(Visit(page=page))
            await session.commit()
    await asyncio.gather(*(record(p) for p in pages))


async def visits_task_group(sessions, pages):
    async def record(page):
        async with sessions() as session, session.begin():
            session.add(Visit(page=page))
    async with asyncio.TaskGroup() as group:
        for page in pages:
            group.create_task(record(page))


async def visits_shared(sessions, pages):
    async with sessions() as session:
        async def record(page):
            session.add(Visit(page=page))
            await session.flush()
        await asyncio.gather(*(record(p) for p in pages))
        await session.commit()


async def visits_sequential(sessions, pages):
    for page in pages:
        async with sessions() as session:
            session.add(Visit(page=page))
            await session.commit()


async def visits_never_closed(sessions, pages):
    async def record(page):
        session = sessions()
        session.add(Visit(page=page))
        await session.commit()
    await asyncio.gather(*(record(p) for p in pages))


async def visits_not_committed(sessions, pages):
    async def record(page):
        async with sessions() as session:
            session.add(Visit(page=page))
            await session.flush()
    await asyncio.gather(*(record(p) for p in pages))


@pytest.mark.parametrize("record_visits", [visits_gather, visits_task_group])
async def test_one_session_per_task_right_answers_pass(record_visits):
    report = await check_one_session_per_task.report(record_visits)
    assert report.passed, report.text()


@pytest.mark.parametrize("record_visits, failed", [
    (visits_shared, ["each task has its own session"]),
    (visits_sequential, ["one session per task, open at the same time"]),
    (visits_never_closed, ["every session is closed"]),
    (visits_not_committed, ["every visit is stored"]),
], ids=["shared session", "one after another", "never closed", "not committed"])
async def test_one_session_per_task_mistakes(record_visits, failed):
    report = await check_one_session_per_task.report(record_visits)
    assert names(report) == failed, report.text()
    assert_feedback_rules(report)
