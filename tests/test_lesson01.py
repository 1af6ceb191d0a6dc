"""Lesson 01's checks: every non-blocking answer passes, each blocking mistake fails with its hint."""

import asyncio
import functools
import gc

import pytest
from fastapi import FastAPI
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from checks.lesson01 import (
    check_forecast,
    check_report,
    check_signup,
    forecast_api,
    hash_password,
    legacy_reports,
    user_store,
)
from conftest import assert_feedback_rules, failure_text, names

pytestmark = pytest.mark.anyio


class Signup(BaseModel):
    email: str
    password: str


def app_with(method, path, endpoint):
    app = FastAPI()
    app.add_api_route(path, endpoint, methods=[method])
    return app


# ---- GET /forecast/{city} ---------------------------------------------------------------

async def forecast_awaits(city: str):
    return await forecast_api.get(city)


def forecast_def_route(city: str):
    return forecast_api.get_blocking(city)


async def forecast_to_thread(city: str):
    return await asyncio.to_thread(forecast_api.get_blocking, city)


async def forecast_blocking(city: str):
    return forecast_api.get_blocking(city)


async def forecast_forgot_await(city: str):
    return forecast_api.get(city)


@pytest.mark.parametrize("endpoint", [forecast_awaits, forecast_def_route, forecast_to_thread])
async def test_forecast_right_answers_pass(endpoint):
    report = await check_forecast.report(app_with("GET", "/forecast/{city}", endpoint))
    assert report.passed, report.text()


async def test_forecast_blocking_call_fails_on_stall_and_overlap():
    report = await check_forecast.report(app_with("GET", "/forecast/{city}", forecast_blocking))
    assert names(report) == ["keeps the event loop free", "serves requests concurrently"]
    assert_feedback_rules(report)
    text = failure_text(report)
    assert "at most 1 of 5 calls" in text and "`get_blocking` holds the thread" in text


@pytest.mark.filterwarnings("ignore:coroutine .* was never awaited")
async def test_forecast_forgotten_await_is_reported_as_such():
    report = await check_forecast.report(app_with("GET", "/forecast/{city}", forecast_forgot_await))
    gc.collect()  # the un-awaited coroutines warn when collected: inside this test's warning filter
    assert not report.passed
    assert "forget an `await`" in failure_text(report)


# ---- GET /report/{month} ----------------------------------------------------------------

def report_def_route(month: str):
    return legacy_reports.render(month)


async def report_to_thread(month: str):
    return await asyncio.to_thread(legacy_reports.render, month)


async def report_threadpool(month: str):
    return await run_in_threadpool(legacy_reports.render, month)


async def report_blocking(month: str):
    return legacy_reports.render(month)


async def report_called_before_to_thread(month: str):
    return await asyncio.to_thread(legacy_reports.render(month))


@pytest.mark.parametrize("endpoint", [report_def_route, report_to_thread, report_threadpool])
async def test_report_right_answers_pass(endpoint):
    report = await check_report.report(app_with("GET", "/report/{month}", endpoint))
    assert report.passed, report.text()


async def test_report_in_async_def_fails_with_the_threadpool_hint():
    report = await check_report.report(app_with("GET", "/report/{month}", report_blocking))
    assert names(report) == ["keeps the event loop free", "serves requests concurrently"]
    assert_feedback_rules(report)
    assert "thread pool" in failure_text(report)


async def test_report_called_instead_of_passed_to_to_thread_is_explained():
    report = await check_report.report(app_with("GET", "/report/{month}", report_called_before_to_thread))
    text = failure_text(report)
    assert "TypeError: 'dict' object is not callable (in report_called_before_to_thread(), line" in text


# ---- POST /signup -----------------------------------------------------------------------

async def signup_to_thread(signup: Signup):
    password_hash = await asyncio.to_thread(hash_password, signup.password)
    return {"id": await user_store.save(signup.email, password_hash), "email": signup.email}


async def signup_threadpool(signup: Signup):
    password_hash = await run_in_threadpool(hash_password, signup.password)
    return {"id": await user_store.save(signup.email, password_hash), "email": signup.email}


async def signup_executor(signup: Signup):
    loop = asyncio.get_running_loop()
    password_hash = await loop.run_in_executor(None, functools.partial(hash_password, signup.password))
    return {"id": await user_store.save(signup.email, password_hash), "email": signup.email}


async def signup_blocking(signup: Signup):
    password_hash = hash_password(signup.password)
    return {"id": await user_store.save(signup.email, password_hash), "email": signup.email}


async def signup_forgot_await(signup: Signup):
    password_hash = asyncio.to_thread(hash_password, signup.password)
    try:
        return {"id": await user_store.save(signup.email, password_hash), "email": signup.email}
    finally:
        password_hash.close()  # the mistake under test; closed here only to keep the test quiet


async def signup_never_saves(signup: Signup):
    await asyncio.to_thread(hash_password, signup.password)
    return {"id": 1, "email": signup.email}


@pytest.mark.parametrize("endpoint", [signup_to_thread, signup_threadpool, signup_executor])
async def test_signup_right_answers_pass(endpoint):
    report = await check_signup.report(app_with("POST", "/signup", endpoint))
    assert report.passed, report.text()


async def test_signup_hashing_on_the_loop_fails_with_the_to_thread_hint():
    report = await check_signup.report(app_with("POST", "/signup", signup_blocking))
    assert names(report) == ["keeps the event loop free", "serves requests concurrently"]
    assert_feedback_rules(report)
    assert "hand just the hashing to a thread" in failure_text(report)


@pytest.mark.parametrize("endpoint", [signup_forgot_await, signup_never_saves])
async def test_signup_that_does_not_store_the_real_hash_fails_on_the_body(endpoint):
    report = await check_signup.report(app_with("POST", "/signup", endpoint))
    assert names(report) == ["POST /signup answers with the right body"]
    assert "user_store.save" in failure_text(report)


# ---- all three --------------------------------------------------------------------------

@pytest.mark.parametrize("check", [check_forecast, check_report, check_signup])
async def test_an_empty_app_fails_fast_with_a_missing_route_hint(check):
    report = await check.report(FastAPI())
    assert "yet: define the route" in failure_text(report)
    assert report.metrics["elapsed_s"] < 1


async def test_the_checks_own_code_raises_no_warning():
    import warnings
    from pathlib import Path

    import checks

    package = str(Path(checks.__file__).parent)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        await check_forecast.report(app_with("GET", "/forecast/{city}", forecast_awaits))
        await check_report.report(app_with("GET", "/report/{month}", report_blocking))
        await check_signup.report(FastAPI())
    assert [w for w in caught if w.filename.startswith(package)] == []
