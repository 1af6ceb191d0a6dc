"""Lesson 04's checks: every right way to combine awaits passes; each realistic mistake fails
with the hint about its own cause. Latencies are random on every run (the checks draw them),
so answers that rely on completion order fail every run, not some of the time."""

import asyncio
import concurrent.futures
import contextlib
import json
import time
from contextlib import asynccontextmanager
from typing import Annotated

import anyio
import pytest
from fastapi import Depends, FastAPI, Request

from checks.lesson04 import (
    ads_api, check_dashboard, check_deadline, check_fan_out, check_first_completed, check_partial_failure,
    UpstreamError, mirrors, orders_api, prices_api, profile_api, recommendations_api,
)
from conftest import assert_feedback_rules, failure_text, names, notebook_namespace

pytestmark = pytest.mark.anyio
lesson = notebook_namespace("04_gather")
NAMES = ("profile", "orders", "recommendations")
APIS = (profile_api, orders_api, recommendations_api)


def app_with(path, endpoint, lifespan=None):
    app = FastAPI(lifespan=lifespan)
    app.add_api_route(path, endpoint, methods=["GET"])
    return app


def assert_fails(report, first_failure: str, hint: str):
    """The first failed item is `first_failure` (by the start of its name) and its hint names the cause."""
    firsts = (first_failure,) if isinstance(first_failure, str) else first_failure
    assert names(report) and names(report)[0].startswith(firsts), report.text()
    assert hint in report.failures[0].hint, report.text()
    assert_feedback_rules(report)


@pytest.mark.parametrize("check, name", [
    (check_dashboard, "dashboard_app"), (check_partial_failure, "resilient_app"), (check_deadline, "ads_app"),
    (check_fan_out, "prices_app"), (check_first_completed, "download_app"),
], ids=lambda value: value if isinstance(value, str) else "")
async def test_the_lessons_own_answers_pass(check, name):
    report = await check.report(lesson[name])
    assert report.passed, report.text()


# ---- exercise 1: the dashboard ---------------------------------------------------------------

async def dashboard_gather(user: str):
    p, o, r = await asyncio.gather(profile_api.get(user), orders_api.get(user), recommendations_api.get(user))
    return {"profile": p, "orders": o, "recommendations": r}


async def dashboard_task_group(user: str):
    async with asyncio.TaskGroup() as group:
        tasks = {name: group.create_task(api.get(user)) for name, api in zip(NAMES, APIS)}
    return {name: task.result() for name, task in tasks.items()}


async def dashboard_create_tasks(user: str):
    tasks = [asyncio.create_task(api.get(user)) for api in APIS]  # all three start now
    return {name: await task for name, task in zip(NAMES, tasks)}


def dashboard_def_route(user: str):
    # A plain `def` route runs in the thread pool: the blocking clients hold those threads, not the loop.
    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        futures = [pool.submit(api.get_blocking, user) for api in APIS]
        return {name: future.result() for name, future in zip(NAMES, futures)}


async def dashboard_sequential(user: str):
    return {"profile": await profile_api.get(user), "orders": await orders_api.get(user),
            "recommendations": await recommendations_api.get(user)}


async def dashboard_as_completed(user: str):
    results = [await f for f in asyncio.as_completed([api.get(user) for api in APIS])]
    return dict(zip(NAMES, results))  # completion order, not argument order


async def dashboard_blocking_client(user: str):
    return {name: api.get_blocking(user) for name, api in zip(NAMES, APIS)}


async def dashboard_list(user: str):
    return await asyncio.gather(*(api.get(user) for api in APIS))


async def dashboard_two_then_one(user: str):
    profile, orders = await asyncio.gather(profile_api.get(user), orders_api.get(user))
    return {"profile": profile, "orders": orders, "recommendations": await recommendations_api.get(user)}


async def dashboard_sleeps(user: str):
    results = await asyncio.gather(*(api.get(user) for api in APIS))
    time.sleep(0.005)  # "let the upstreams settle": 5 ms, far below any clock's threshold
    return dict(zip(NAMES, results))


async def dashboard_strings(user: str):
    results = await asyncio.gather(*(api.get(user) for api in APIS))
    return {name: json.dumps(result) for name, result in zip(NAMES, results)}


async def dashboard_short_keys(user: str):
    p, o, r = await asyncio.gather(*(api.get(user) for api in APIS))
    return {"profile": p, "orders": o, "recs": r}


async def dashboard_to_thread_one_by_one(user: str):
    return {name: await asyncio.to_thread(api.get_blocking, user) for name, api in zip(NAMES, APIS)}


async def dashboard_refreshes(user: str):
    p, o, r = await asyncio.gather(*(api.get(user) for api in APIS))
    r = await recommendations_api.get(user)  # "fresher" recommendations: a fourth call, after the others
    return {"profile": p, "orders": o, "recommendations": r}


@pytest.mark.parametrize("endpoint", [dashboard_gather, dashboard_task_group, dashboard_create_tasks, dashboard_def_route])
async def test_dashboard_right_answers_pass(endpoint):
    report = await check_dashboard.report(app_with("/dashboard/{user}", endpoint))
    assert report.passed, report.text()


@pytest.mark.parametrize("endpoint, failure, hint", [
    (dashboard_sequential, "the upstream calls overlap", "gather"),
    (dashboard_as_completed, "answers with the three results", "order they finished"),
    (dashboard_blocking_client, "keeps the event loop free", "get_blocking"),
    (dashboard_list, "answers with the three results", "exactly the keys"),
    (dashboard_two_then_one, "the upstream calls overlap", "gather"),
    (dashboard_sleeps, "keeps the event loop free", "time.sleep"),
    (dashboard_strings, "answers with the three results", "exactly the keys"),
    (dashboard_short_keys, "answers with the three results", "exactly the keys"),
    (dashboard_to_thread_one_by_one, "the upstream calls overlap", "gather"),
    (dashboard_refreshes, "the upstream calls overlap", "once per request"),
], ids=["sequential", "as_completed zipped with names", "blocking client", "a list", "two then one",
        "a short time.sleep", "values as strings", "a key renamed", "threads one by one", "a fourth call"])
async def test_dashboard_mistakes(endpoint, failure, hint):
    report = await check_dashboard.report(app_with("/dashboard/{user}", endpoint))
    assert_fails(report, failure, hint)


async def test_dashboard_sequential_is_judged_by_exact_overlap():
    report = await check_dashboard.report(app_with("/dashboard/{user}", dashboard_sequential))
    assert "at most 1 of 3" in failure_text(report)


# ---- exercise 2: partial failure ------------------------------------------------------------------

async def resilient_gather(user: str):
    results = await asyncio.gather(*(api.get(user) for api in APIS), return_exceptions=True)
    return {k: {"error": repr(v)} if isinstance(v, Exception) else v for k, v in zip(NAMES, results)}


async def resilient_task_group(user: str):
    async def safe(call):
        try:
            return await call
        except UpstreamError as error:
            return {"error": str(error)}

    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(safe(api.get(user))) for api in APIS]
    return {name: task.result() for name, task in zip(NAMES, tasks)}


async def resilient_wait(user: str):
    tasks = [asyncio.create_task(api.get(user)) for api in APIS]
    await asyncio.wait(tasks)
    return {name: {"error": f"{type(t.exception()).__name__}: {t.exception()}"} if t.exception() else t.result()
            for name, t in zip(NAMES, tasks)}


async def gather_unhandled(user: str):
    return dict(zip(NAMES, await asyncio.gather(*(api.get(user) for api in APIS))))


async def handled_but_sequential(user: str):
    out = {}
    for name, api in zip(NAMES, APIS):
        try:
            out[name] = await api.get(user)
        except UpstreamError as error:
            out[name] = {"error": str(error)}
    return out


async def only_recommendations_handled(user: str):
    async def recommendations():
        try:
            return await recommendations_api.get(user)
        except UpstreamError as error:
            return {"error": str(error)}

    p, o, r = await asyncio.gather(profile_api.get(user), orders_api.get(user), recommendations())
    return {"profile": p, "orders": o, "recommendations": r}


async def marker_none(user: str):
    results = await asyncio.gather(*(api.get(user) for api in APIS), return_exceptions=True)
    return {k: None if isinstance(v, Exception) else v for k, v in zip(NAMES, results)}


async def marker_true(user: str):
    results = await asyncio.gather(*(api.get(user) for api in APIS), return_exceptions=True)
    return {k: {"error": True} if isinstance(v, Exception) else v for k, v in zip(NAMES, results)}


async def marker_without_message(user: str):
    results = await asyncio.gather(*(api.get(user) for api in APIS), return_exceptions=True)
    return {k: {"error": "unavailable"} if isinstance(v, Exception) else v for k, v in zip(NAMES, results)}


async def task_group_unhandled(user: str):
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(api.get(user)) for api in APIS]
    return {name: task.result() for name, task in zip(NAMES, tasks)}


async def drops_failed_key(user: str):
    results = await asyncio.gather(*(api.get(user) for api in APIS), return_exceptions=True)
    return {k: v for k, v in zip(NAMES, results) if not isinstance(v, Exception)}


async def resilient_as_completed(user: str):
    async def safe(call):
        try:
            return await call
        except UpstreamError as error:
            return {"error": str(error)}

    return dict(zip(NAMES, [await f for f in asyncio.as_completed([safe(api.get(user)) for api in APIS])]))


async def whole_gather_in_try(user: str):
    try:
        return dict(zip(NAMES, await asyncio.gather(*(api.get(user) for api in APIS))))
    except UpstreamError as error:
        return {name: {"error": str(error)} for name in NAMES}


async def retry_with_sleep(user: str):
    async def with_retry(api):
        try:
            return await api.get(user)
        except UpstreamError:
            time.sleep(0.01)  # a short pause before the retry
            try:
                return await api.get(user)
            except UpstreamError as error:
                return {"error": str(error)}

    return dict(zip(NAMES, await asyncio.gather(*(with_retry(api) for api in APIS))))


@pytest.mark.parametrize("endpoint", [resilient_gather, resilient_task_group, resilient_wait])
async def test_partial_failure_right_answers_pass(endpoint):
    report = await check_partial_failure.report(app_with("/dashboard/{user}", endpoint))
    assert report.passed, report.text()


@pytest.mark.parametrize("endpoint, failure, hint", [
    (gather_unhandled, "GET /dashboard/{user} answers 200 when", "return_exceptions"),
    (handled_but_sequential, "the upstream calls overlap", "concurrent"),
    (only_recommendations_handled, "GET /dashboard/{user} answers 200 when", "not only recommendations"),
    (marker_none, "each result, or an error marker", "message"),
    (marker_true, "each result, or an error marker", "message"),
    (marker_without_message, "each result, or an error marker", "message"),
    (task_group_unhandled, "GET /dashboard/{user} answers 200 when", "TaskGroup"),
    (drops_failed_key, "each result, or an error marker", "exactly the keys"),
    (resilient_as_completed, "each result, or an error marker", "order they finished"),
    (whole_gather_in_try, "each result, or an error marker", "own result"),
    (retry_with_sleep, "keeps the event loop free", "time.sleep"),
], ids=["gather without handling", "handled but sequential", "only recommendations handled", "null marker",
        "true marker", "a marker without the message", "TaskGroup without handling", "failed key dropped",
        "as_completed zipped with names", "one try around the whole gather", "retry after time.sleep"])
async def test_partial_failure_mistakes(endpoint, failure, hint):
    report = await check_partial_failure.report(app_with("/dashboard/{user}", endpoint))
    assert_fails(report, failure, hint)


# ---- exercise 3: a deadline ------------------------------------------------------------------------

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


@pytest.mark.parametrize("endpoint", [ads_timeout, ads_wait_for, ads_wait_then_cancel, ads_task_group_timeout])
async def test_deadline_right_answers_pass(endpoint):
    report = await check_deadline.report(app_with("/ads/{user}", endpoint))
    assert report.passed, report.text()


@pytest.mark.parametrize("endpoint, failure, hint", [
    (ads_wait_left_running, "the slow call is cancelled", "leave the call running"),
    (ads_no_deadline, "a slow ads service", "asyncio.timeout"),
    (ads_too_short, "an ads service that answers in", "too early"),
    (ads_too_long, "a slow ads service", "asyncio.timeout"),
    (ads_catches_cancelled, "GET /ads/{user} answers 200", "raised"),
    (ads_shielded, "the slow call is cancelled", "shield"),
    (ads_empty_list, "a slow ads service", "null"),
    (ads_in_a_thread, "the slow call is cancelled", "thread"),
    (ads_sleep_then_look, "keeps the event loop free", "time.sleep"),
], ids=["asyncio.wait leaves it running", "no deadline", "deadline too short", "deadline too long",
        "catches CancelledError", "shielded", "[] for no ads", "a thread cannot be cancelled", "time.sleep"])
async def test_deadline_mistakes(endpoint, failure, hint):
    report = await check_deadline.report(app_with("/ads/{user}", endpoint))
    assert_fails(report, failure, hint)
    await asyncio.sleep(0)  # a leaked call is the mistake under test; it ends on its own


async def test_deadline_is_judged_against_the_tasks_own_deadline():
    report = await check_deadline.report(app_with("/ads/{user}", ads_too_long))
    assert "between 250 and 600 ms" in failure_text(report)


# ---- exercise 4: an app-wide bounded fan-out ---------------------------------------------------------

async def price_or_none(sku, limit):
    async with limit:
        try:
            return await prices_api.get(sku)
        except UpstreamError:
            return None


def two_routes(one_price, lifespan=None, route_kwargs=None):
    """An app whose /prices and /price/{sku} get each price through `one_price(request, sku)`."""
    app = FastAPI(lifespan=lifespan)

    async def prices(request: Request, skus: str) -> dict:
        return {"prices": await asyncio.gather(*(one_price(request, s) for s in skus.split(",")))}

    async def price(request: Request, sku: str) -> dict:
        return {"price": await one_price(request, sku)}

    app.add_api_route("/prices", prices, methods=["GET"], **(route_kwargs or {}))
    app.add_api_route("/price/{sku}", price, methods=["GET"], **(route_kwargs or {}))
    return app


@asynccontextmanager
async def semaphore_lifespan(app):
    yield {"price_slots": asyncio.Semaphore(4)}


def fan_out_lifespan_semaphore():
    return two_routes(lambda request, sku: price_or_none(sku, request.state.price_slots), semaphore_lifespan)


_module_semaphore = asyncio.Semaphore(4)  # made at import: bound to the first loop that waits on it


def fan_out_module_semaphore():
    return two_routes(lambda request, sku: price_or_none(sku, _module_semaphore))


@asynccontextmanager
async def limiter_lifespan(app):
    yield {"price_slots": anyio.CapacityLimiter(4)}


def fan_out_capacity_limiter():
    return two_routes(lambda request, sku: price_or_none(sku, request.state.price_slots), limiter_lifespan)


def fan_out_dependency_alias():
    def price_slots(request: Request) -> asyncio.Semaphore:
        return request.state.price_slots

    PriceSlots = Annotated[asyncio.Semaphore, Depends(price_slots)]
    app = FastAPI(lifespan=semaphore_lifespan)

    @app.get("/prices")
    async def prices(skus: str, slots: PriceSlots) -> dict[str, list[dict | None]]:
        return {"prices": await asyncio.gather(*(price_or_none(s, slots) for s in skus.split(",")))}

    @app.get("/price/{sku}")
    async def price(sku: str, slots: PriceSlots) -> dict[str, dict | None]:
        return {"price": await price_or_none(sku, slots)}

    return app


def fan_out_def_routes_shared_pool():
    @asynccontextmanager
    async def lifespan(app):
        with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:  # 4 threads for the whole app
            yield {"pool": pool}

    def lookup(sku):
        try:
            return prices_api.get_blocking(sku)
        except UpstreamError:
            return None

    app = FastAPI(lifespan=lifespan)

    @app.get("/prices")
    def prices(request: Request, skus: str) -> dict:
        return {"prices": list(request.state.pool.map(lookup, skus.split(",")))}

    @app.get("/price/{sku}")
    def price(request: Request, sku: str) -> dict:
        return {"price": request.state.pool.submit(lookup, sku).result()}

    return app


def fan_out_one_request_at_a_time():
    """Slower but within the limit: one Depends(max_concurrency=1) shared by both routes (one request
    at a time), and a Semaphore(4) inside that request."""
    async def turn():
        yield

    Turn = Annotated[None, Depends(turn, max_concurrency=1)]
    app = FastAPI()

    @app.get("/prices")
    async def prices(skus: str, _: Turn) -> dict:
        limit = asyncio.Semaphore(4)
        return {"prices": await asyncio.gather(*(price_or_none(s, limit) for s in skus.split(",")))}

    @app.get("/price/{sku}")
    async def price(sku: str, _: Turn) -> dict:
        return {"price": await price_or_none(sku, asyncio.Semaphore(4))}

    return app


def fan_out_per_request():
    def new_limit(request: Request) -> None:
        request.state.limit = asyncio.Semaphore(4)  # a dependency runs once per request: a limit per request

    return two_routes(lambda request, sku: price_or_none(sku, request.state.limit),
                      route_kwargs={"dependencies": [Depends(new_limit)]})


def fan_out_per_request_plain():
    app = FastAPI()

    @app.get("/prices")
    async def prices(skus: str) -> dict:
        limit = asyncio.Semaphore(4)  # the old reference: a new limit for each request
        return {"prices": await asyncio.gather(*(price_or_none(s, limit) for s in skus.split(",")))}

    @app.get("/price/{sku}")
    async def price(sku: str) -> dict:
        return {"price": await price_or_none(sku, asyncio.Semaphore(4))}

    return app


def fan_out_per_call():
    return two_routes(lambda request, sku: price_or_none(sku, asyncio.Semaphore(4)))


def fan_out_per_route():
    app = FastAPI()
    for_prices, for_price = asyncio.Semaphore(4), asyncio.Semaphore(4)

    @app.get("/prices")
    async def prices(skus: str) -> dict:
        return {"prices": await asyncio.gather(*(price_or_none(s, for_prices) for s in skus.split(",")))}

    @app.get("/price/{sku}")
    async def price(sku: str) -> dict:
        return {"price": await price_or_none(sku, for_price)}

    return app


def fan_out_leaks_on_error():
    async def one(request, sku):
        limit = request.state.price_slots
        await limit.acquire()
        try:
            result = await prices_api.get(sku)
        except UpstreamError:
            return None  # returns without release(): this place is lost for good
        limit.release()
        return result

    return two_routes(one, semaphore_lifespan)


def fan_out_never_released():
    async def one(request, sku):
        await request.state.price_slots.acquire()
        try:
            return await prices_api.get(sku)
        except UpstreamError:
            return None

    return two_routes(one, semaphore_lifespan)


def fan_out_wait_unbounded():
    async def lookup(sku):
        try:
            return await prices_api.get(sku)
        except UpstreamError:
            return None

    app = FastAPI()

    @app.get("/prices")
    async def prices(skus: str) -> dict:
        tasks = [asyncio.create_task(lookup(s)) for s in skus.split(",")]
        await asyncio.wait(tasks)
        return {"prices": [t.result() for t in tasks]}

    @app.get("/price/{sku}")
    async def price(sku: str) -> dict:
        return {"price": await lookup(sku)}

    return app


@asynccontextmanager
async def lock_lifespan(app):
    yield {"price_slots": asyncio.Lock()}


def fan_out_lock():
    return two_routes(lambda request, sku: price_or_none(sku, request.state.price_slots), lock_lifespan)


def fan_out_depends_max_concurrency():
    async def slot():
        yield

    Slot = Annotated[None, Depends(slot, max_concurrency=4)]  # counts requests, not the calls inside them
    app = FastAPI()

    @app.get("/prices")
    async def prices(skus: str, _: Slot) -> dict:
        return {"prices": await asyncio.gather(*(price_or_none(s, contextlib.nullcontext()) for s in skus.split(",")))}

    @app.get("/price/{sku}")
    async def price(sku: str, _: Slot) -> dict:
        return {"price": await price_or_none(sku, contextlib.nullcontext())}

    return app


def fan_out_batches_per_request():
    async def lookup(sku):
        return await price_or_none(sku, contextlib.nullcontext())

    app = FastAPI()

    @app.get("/prices")
    async def prices(skus: str) -> dict:
        items, out = skus.split(","), []
        for start in range(0, len(items), 4):
            out += await asyncio.gather(*(lookup(s) for s in items[start:start + 4]))
        return {"prices": out}

    @app.get("/price/{sku}")
    async def price(sku: str) -> dict:
        return {"price": await lookup(sku)}

    return app


def fan_out_polite_sleep():
    async def one(request, sku):
        time.sleep(0.002)  # "be polite to the upstream"
        return await price_or_none(sku, request.state.price_slots)

    return two_routes(one, semaphore_lifespan)


def fan_out_as_completed():
    async def prices(request: Request, skus: str) -> dict:
        slots = request.state.price_slots
        return {"prices": [await f for f in asyncio.as_completed([price_or_none(s, slots) for s in skus.split(",")])]}

    app = two_routes(lambda request, sku: price_or_none(sku, request.state.price_slots), semaphore_lifespan)
    app.router.routes = [r for r in app.router.routes if getattr(r, "path", "") != "/prices"]
    app.add_api_route("/prices", prices, methods=["GET"])
    return app


@pytest.mark.parametrize("make_app", [fan_out_lifespan_semaphore, fan_out_module_semaphore, fan_out_capacity_limiter,
                                      fan_out_dependency_alias, fan_out_def_routes_shared_pool,
                                      fan_out_one_request_at_a_time])
async def test_fan_out_right_answers_pass(make_app):
    for _ in range(2):  # the same verdict when run again, on the same event loop
        report = await check_fan_out.report(make_app())
        assert report.passed, report.text()




@pytest.mark.parametrize("make_app, failure, hint", [
    (fan_out_per_request, "never more than 4", "inside a request"),
    (fan_out_per_request_plain, "never more than 4", "inside a request"),
    (fan_out_per_call, "never more than 4", "whole app"),
    (fan_out_per_route, "never more than 4", "one per route"),
    (fan_out_leaks_on_error, "a failed call gives its place back", "release()"),
    (fan_out_wait_unbounded, "never more than 4", "whole app"),
    (fan_out_lock, "4 calls at once when", "Lock"),
    (fan_out_depends_max_concurrency, "never more than 4", "whole app"),
    (fan_out_batches_per_request, "never more than 4", "inside a request"),
    (fan_out_polite_sleep, "keeps the event loop free", "time.sleep"),
    (fan_out_as_completed, "GET /prices: every price in the order asked", "as_completed"),
], ids=["semaphore per request (dependency)", "semaphore per request (the old reference)", "semaphore per call",
        "one semaphore per route", "place lost on error", "asyncio.wait, no limit", "a lock", "Depends(max_concurrency=4)",
        "batches of 4 per request", "time.sleep between calls", "as_completed order"])
async def test_fan_out_mistakes(make_app, failure, hint):
    report = await check_fan_out.report(make_app())
    assert_fails(report, failure, hint)


async def test_places_never_given_back_are_reported_without_waiting_for_the_time_limit():
    started = time.perf_counter()
    report = await check_fan_out.report(fan_out_never_released())
    assert_fails(report, "every request finishes", "release()")
    assert "after 4 calls" in failure_text(report)
    assert time.perf_counter() - started < check_fan_out.limit_s / 2


# ---- exercise 5: first completed --------------------------------------------------------------------------

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
    from conftest import warnings_from_checks

    assert await warnings_from_checks(
        check_dashboard.report(app_with("/dashboard/{user}", dashboard_sequential)),
        check_partial_failure.report(app_with("/dashboard/{user}", gather_unhandled)),
        check_deadline.report(app_with("/ads/{user}", ads_timeout)),
        check_fan_out.report(fan_out_per_call()),
        check_first_completed.report(app_with("/download/{name}", download_wait)),
    ) == []


# ---- exercise 6: one session per task ------------------------------------------------------------------------

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


async def visits_sessionmaker_begin(sessions, pages):
    async def record(page):
        async with sessions.begin() as session:  # commits at the end of the block, then closes
            session.add(Visit(page=page))
    await asyncio.gather(*(record(p) for p in pages))


async def visits_two_at_a_time(sessions, pages):
    limit = asyncio.Semaphore(2)

    async def record(page):
        async with limit, sessions() as session:
            session.add(Visit(page=page))
            await session.commit()
    await asyncio.gather(*(record(p) for p in pages))


async def visits_shared(sessions, pages):
    async with sessions() as session:
        async def record(page):
            session.add(Visit(page=page))
            await session.flush()
        await asyncio.gather(*(record(p) for p in pages))
        await session.commit()


async def visits_shared_errors_swallowed(sessions, pages):
    async with sessions() as session:
        async def record(page):
            session.add(Visit(page=page))
            await session.flush()
        await asyncio.gather(*(record(p) for p in pages), return_exceptions=True)
        await session.commit()


async def visits_sequential(sessions, pages):
    for page in pages:
        async with sessions() as session:
            session.add(Visit(page=page))
            await session.commit()


async def visits_all_open_one_by_one(sessions, pages):
    async with contextlib.AsyncExitStack() as stack:
        opened = [await stack.enter_async_context(sessions()) for _ in pages]  # six sessions open at once...
        for session, page in zip(opened, pages):  # ...writing one after another
            session.add(Visit(page=page))
            await session.commit()


async def visits_lock(sessions, pages):
    lock = asyncio.Lock()

    async def record(page):
        async with sessions() as session:
            async with lock:  # "SQLite allows one writer"
                session.add(Visit(page=page))
                await session.commit()
    await asyncio.gather(*(record(p) for p in pages))


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


async def visits_sleep_before_commit(sessions, pages):
    async def record(page):
        async with sessions() as session:
            session.add(Visit(page=page))
            time.sleep(0.002)  # "give SQLite a moment"
            await session.commit()
    await asyncio.gather(*(record(p) for p in pages))


async def visits_one_session(sessions, pages):
    async with sessions() as session:
        session.add_all([Visit(page=p) for p in pages])
        await session.commit()


@pytest.mark.parametrize("record_visits", [lesson["record_visits"], visits_gather, visits_task_group,
                                           visits_sessionmaker_begin, visits_two_at_a_time])
async def test_one_session_per_task_right_answers_pass(record_visits):
    report = await check_one_session_per_task.report(record_visits)
    assert report.passed, report.text()


@pytest.mark.parametrize("record_visits, failed", [
    (visits_shared, ["each task has its own session"]),
    (visits_sequential, ["one session per task, writing at the same time"]),
    (visits_all_open_one_by_one, ["one session per task, writing at the same time"]),
    (visits_lock, ["one session per task, writing at the same time"]),
    (visits_never_closed, ["every session is closed"]),
    (visits_not_committed, ["every visit is stored"]),
    (visits_sleep_before_commit, ["keeps the event loop free"]),
    (visits_one_session, ["one session per task, writing at the same time"]),
], ids=["shared session", "one after another", "all open, writing one by one", "a lock around the writes",
        "never closed", "not committed", "time.sleep", "one session for all"])
async def test_one_session_per_task_mistakes(record_visits, failed):
    report = await check_one_session_per_task.report(record_visits)
    assert names(report) == failed, report.text()
    assert_feedback_rules(report)


async def test_a_shared_session_whose_errors_are_swallowed_fails():
    report = await check_one_session_per_task.report(visits_shared_errors_swallowed)
    assert not report.passed, report.text()
    assert_feedback_rules(report)
