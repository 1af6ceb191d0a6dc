"""Lesson 04, exercise 3: at most 4 calls to prices_api at a time, from the whole app."""

import asyncio
import concurrent.futures
import contextlib
import time
from contextlib import asynccontextmanager
from typing import Annotated

import anyio
import pytest
from fastapi import Depends, FastAPI, Request

from checks.lesson04 import UpstreamError, check_fan_out, prices_api
from conftest import failure_text, warnings_from_checks
from lesson04_helpers import assert_fails, lesson

pytestmark = pytest.mark.anyio


async def test_the_lessons_own_answer_passes():
    report = await check_fan_out.report(lesson["prices_app"])
    assert report.passed, report.text()

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


class LimitedPrices:
    """prices_api behind the app's semaphore: every call takes a place."""

    def __init__(self, slots: asyncio.Semaphore):
        self.slots = slots

    async def get(self, sku):
        async with self.slots:
            return await prices_api.get(sku)


def fan_out_dependency_gives_limited_client():
    def get_prices(request: Request) -> LimitedPrices:  # the dependency that owns the client gives it, limited
        return LimitedPrices(request.state.price_slots)

    Prices = Annotated[LimitedPrices, Depends(get_prices)]
    app = FastAPI(lifespan=semaphore_lifespan)

    async def lookup(prices: LimitedPrices, sku: str) -> dict | None:
        try:
            return await prices.get(sku)
        except UpstreamError:
            return None

    @app.get("/prices")
    async def many(skus: str, prices: Prices) -> dict[str, list[dict | None]]:
        return {"prices": await asyncio.gather(*(lookup(prices, s) for s in skus.split(",")))}

    @app.get("/price/{sku}")
    async def one(sku: str, prices: Prices) -> dict[str, dict | None]:
        return {"price": await lookup(prices, sku)}

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
                                      fan_out_dependency_alias, fan_out_dependency_gives_limited_client,
                                      fan_out_def_routes_shared_pool,
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


async def test_the_checks_own_code_raises_no_warning():
    assert await warnings_from_checks(check_fan_out.report(fan_out_per_call())) == []


async def test_places_never_given_back_are_reported_without_waiting_for_the_time_limit():
    started = time.perf_counter()
    report = await check_fan_out.report(fan_out_never_released())
    assert_fails(report, "every request finishes", "release()")
    assert "after 4 calls" in failure_text(report)
    assert time.perf_counter() - started < check_fan_out.limit_s / 2
