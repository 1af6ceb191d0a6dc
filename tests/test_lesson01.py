"""Lesson 01's checks: every non-blocking answer passes; each realistic mistake fails, with a hint
about its own cause. The answers here are also what bench/verdicts.py times."""

import asyncio
import functools
import gc
import sys
import threading
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import anyio.from_thread
import anyio.to_thread
import pytest
from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from checks.lesson01 import (
    STALL_FRACTION,
    check_forecast,
    check_report,
    check_signup,
    forecast_api,
    hash_password,
    legacy_reports,
    user_store,
)
from conftest import assert_feedback_rules, failure_text, notebook_namespace, warnings_from_checks

pytestmark = pytest.mark.anyio

lesson = notebook_namespace("01_event_loop")
Forecast, MonthlyReport, Signup, User = (lesson[name] for name in ("Forecast", "MonthlyReport", "Signup", "User"))
executor = ThreadPoolExecutor(max_workers=8)  # for answers that wait on a thread's result the wrong way


def app_with(method, path, endpoint):
    app = FastAPI()
    app.add_api_route(path, endpoint, methods=[method])
    return app


def kinds(report):
    """The failed items, by kind (their names carry random paths)."""
    found = []
    for item in report.failures:
        name = item.name
        found.append("body" if name.endswith("right body") else "status" if name.endswith("answers 200")
                     else "loop" if name == "keeps the event loop free"
                     else "concurrency" if name == "serves requests concurrently"
                     else "other loop" if name == "runs async calls on the app's event loop"
                     else "thread" if name == "awaits the async client, holding no thread" else name)
    return found


LOOP = ["loop", "concurrency"]  # a blocking call on the loop: it stalls, and the requests queue
SHORT_BLOCK = ["loop", "concurrency?"]  # a 30 ms block: the 0.1 s calls may still overlap, or not quite


def assert_kinds(report, expected):
    found = kinds(report)
    optional = [kind.rstrip("?") for kind in expected if kind.endswith("?")]
    assert [kind for kind in found if kind not in optional] == [k for k in expected if not k.endswith("?")], report.text()


# ---- GET /forecast/{city} -----------------------------------------------------------------

async def forecast_awaits(city: str):
    return await forecast_api.get(city)


def forecast_def_route(city: str):
    return forecast_api.get_blocking(city)


async def forecast_to_thread(city: str):
    return await asyncio.to_thread(forecast_api.get_blocking, city)


async def forecast_threadpool(city: str):
    return await run_in_threadpool(forecast_api.get_blocking, city)


async def forecast_anyio(city: str):
    return await anyio.to_thread.run_sync(forecast_api.get_blocking, city)


def forecast_def_route_from_thread(city: str):
    return anyio.from_thread.run(forecast_api.get, city)  # back to the app's loop: allowed


def forecast_def_route_with_backoff(city: str):
    time.sleep(0.03)  # in a worker thread: nobody else waits
    return forecast_api.get_blocking(city)


async def forecast_noisy(city: str):
    print("fetching", city, file=sys.stderr)
    warnings.warn("old client", stacklevel=1)
    return await forecast_api.get(city)


async def fetch_forecast(city: str) -> dict:
    return await forecast_api.get(city)


async def forecast_through_helper(city: str):
    return await fetch_forecast(city)


async def forecast_with_deadline(city: str) -> Forecast:
    async with asyncio.timeout(5):  # the service may hang: give up after 5 s
        answer = await forecast_api.get(city)
    return Forecast(**answer)


def polite_pause():
    time.sleep(0.03)


async def forecast_blocking(city: str):
    return forecast_api.get_blocking(city)


async def forecast_forgot_await(city: str):
    return forecast_api.get(city)


async def forecast_to_thread_of_async_client(city: str):
    return await asyncio.to_thread(forecast_api.get, city)


async def forecast_hidden_sleep(city: str):
    polite_pause()
    return await forecast_api.get(city)


_forecast_calls = 0


async def forecast_blocks_after_first(city: str):
    global _forecast_calls
    _forecast_calls += 1
    if _forecast_calls == 1:
        return await forecast_api.get(city)
    return forecast_api.get_blocking(city)  # "the connection is warm now"


_cached = {}


async def forecast_cached(city: str):
    if "answer" not in _cached:
        _cached["answer"] = await forecast_api.get(city)
    return _cached["answer"]


async def forecast_wrapped(city: str):
    return {"forecast": await forecast_api.get(city)}


async def forecast_made_up(city: str):
    return forecast_api.answer(city)


_forecast_lock = asyncio.Lock()


async def forecast_one_at_a_time(city: str):
    async with _forecast_lock:
        return await forecast_api.get(city)


async def forecast_waits_on_thread(city: str):
    return executor.submit(forecast_api.get_blocking, city).result()


def forecast_asyncio_run(city: str):
    return asyncio.run(forecast_api.get(city))


async def forecast_called_before_to_thread(city: str):
    return await asyncio.to_thread(forecast_api.get_blocking(city))


FORECAST_RIGHT = [forecast_awaits, forecast_noisy, forecast_through_helper, forecast_with_deadline]
THREAD = "each waiting request holds one for the whole wait"
FORECAST_WRONG = [
    # (answer, failed items, words of its own hint)
    # The loop stays free, but every waiting request holds a worker thread: the exercise asks to await.
    (forecast_def_route, ["thread"], ("a plain `def` route", THREAD)),
    (forecast_def_route_from_thread, ["thread"], ("a plain `def` route", THREAD)),
    (forecast_def_route_with_backoff, ["thread"], ("a plain `def` route", THREAD)),
    (forecast_to_thread, ["thread"], ("called forecast_api.get_blocking() in a worker thread", THREAD)),
    (forecast_threadpool, ["thread"], ("called forecast_api.get_blocking() in a worker thread", THREAD)),
    (forecast_anyio, ["thread"], ("called forecast_api.get_blocking() in a worker thread", THREAD)),
    (forecast_blocking, LOOP, "forecast.get_blocking() in forecast_blocking(), line"),
    (forecast_forgot_await, ["status"], "returned a coroutine object"),
    (forecast_to_thread_of_async_client, ["status"], "one handed to a thread, never runs it"),
    (forecast_hidden_sleep, SHORT_BLOCK, "time.sleep(0.03) in polite_pause(), line"),
    (forecast_blocks_after_first, LOOP, "forecast.get_blocking() in forecast_blocks_after_first()"),
    (forecast_cached, ["body"], "forecast: an answer kept from another request?"),
    (forecast_wrapped, ["body"], "Return the service's answer for the city as it is"),
    (forecast_made_up, ["concurrency"], "only 0 of the 5 requests sent at once called forecast_api"),
    (forecast_one_at_a_time, ["concurrency"], "something makes requests wait for each other"),
    (forecast_waits_on_thread, LOOP, ("in forecast_waits_on_thread(), line", "inside `Future.result()`")),
    (forecast_asyncio_run, ["thread", "other loop"], "in forecast_asyncio_run(), line"),
    (forecast_called_before_to_thread, ["status"], "ran on the event loop before the thread got it"),
]


@pytest.mark.parametrize("endpoint", FORECAST_RIGHT + [lesson["forecast"]], ids=lambda e: e.__name__)
async def test_forecast_right_answers_pass(endpoint):
    report = await check_forecast.report(app_with("GET", "/forecast/{city}", endpoint))
    assert report.passed, report.text()


@pytest.mark.filterwarnings("ignore:coroutine .* was never awaited")
@pytest.mark.parametrize("endpoint, failed, hint", FORECAST_WRONG, ids=lambda e: getattr(e, "__name__", ""))
async def test_forecast_wrong_answers_fail_with_their_own_hint(endpoint, failed, hint):
    global _forecast_calls
    _forecast_calls = 0
    _cached.clear()
    report = await check_forecast.report(app_with("GET", "/forecast/{city}", endpoint))
    gc.collect()  # un-awaited coroutines warn when collected: inside this test's warning filter
    assert_kinds(report, failed)
    assert_feedback_rules(report)
    for words in (hint,) if isinstance(hint, str) else hint:
        assert words in failure_text(report), report.text()


# ---- GET /report/{month} ------------------------------------------------------------------

def report_def_route(month: str):
    return legacy_reports.render(month)


async def report_to_thread(month: str):
    return await asyncio.to_thread(legacy_reports.render, month)


async def report_threadpool(month: str):
    return await run_in_threadpool(legacy_reports.render, month)


async def report_anyio(month: str):
    return await anyio.to_thread.run_sync(legacy_reports.render, month)


async def report_executor(month: str):
    return await asyncio.get_running_loop().run_in_executor(None, legacy_reports.render, month)


def fetch_report(month):
    return legacy_reports.render(month)


async def report_blocking(month: str):
    return legacy_reports.render(month)


async def report_called_before_to_thread(month: str):
    return await asyncio.to_thread(legacy_reports.render(month))


async def report_sync_helper(month: str):
    return fetch_report(month)


async def report_hidden_sleep(month: str):
    time.sleep(0.03)  # "the vendor allows 30 requests a second"
    return await asyncio.to_thread(legacy_reports.render, month)


_report_calls = 0


async def report_blocks_after_first(month: str):
    global _report_calls
    _report_calls += 1
    if _report_calls > 1:
        return legacy_reports.render(month)
    return await asyncio.to_thread(legacy_reports.render, month)


_sdk_lock = threading.Lock()


def report_locked(month: str):
    with _sdk_lock:  # "the SDK is probably not thread-safe"
        return legacy_reports.render(month)


_one_worker = ThreadPoolExecutor(max_workers=1)


async def report_single_worker(month: str):
    return await asyncio.get_running_loop().run_in_executor(_one_worker, legacy_reports.render, month)


async def report_waits_on_thread(month: str):
    return executor.submit(legacy_reports.render, month).result()


def report_hard_coded(month: str):
    legacy_reports.render(month)
    return {"month": month, "pages": 10}


def report_as_text(month: str):
    return str(legacy_reports.render(month))


async def report_forgot_await(month: str):
    return asyncio.to_thread(legacy_reports.render, month)


def page_checksum(page, month):
    return (page * 131 + sum(map(ord, month))) % 65_521


async def report_with_checksums(month: str):
    rendered = await asyncio.to_thread(legacy_reports.render, month)
    check = 0
    for page in range(250_000):  # many short calls of a helper: CPU on the loop all the same
        check ^= page_checksum(page, month)
    return rendered


REPORT_RIGHT = [report_def_route, report_to_thread, report_threadpool, report_anyio, report_executor]
REPORT_WRONG = [
    (report_blocking, LOOP, "legacy_reports.render() in report_blocking(), line"),
    (report_called_before_to_thread, ["status"], "take the function and its arguments, separately"),
    (report_sync_helper, LOOP, "A plain function called from `async def` runs on the event loop's thread too"),
    (report_hidden_sleep, SHORT_BLOCK, "time.sleep(0.03) in report_hidden_sleep(), line"),
    (report_blocks_after_first, LOOP, "legacy_reports.render() in report_blocks_after_first()"),
    (report_locked, ["concurrency"], "a lock held across the call"),
    (report_single_worker, ["concurrency"], "an executor with one worker"),
    (report_waits_on_thread, LOOP, ("in report_waits_on_thread(), line", "inside `Future.result()`")),
    (report_hard_coded, ["body"], "its values change every run"),
    (report_as_text, ["body"], "Return what `legacy_reports.render(month)` returns"),
    (report_forgot_await, ["status"], "returned a coroutine object"),
    (report_with_checksums, SHORT_BLOCK, ("computed for", "CPU work in `async def`")),
]


@pytest.mark.parametrize("endpoint", REPORT_RIGHT + [lesson["report"]], ids=lambda e: e.__name__)
async def test_report_right_answers_pass(endpoint):
    report = await check_report.report(app_with("GET", "/report/{month}", endpoint))
    assert report.passed, report.text()


@pytest.mark.filterwarnings("ignore:coroutine .* was never awaited")
@pytest.mark.parametrize("endpoint, failed, hint", REPORT_WRONG, ids=lambda e: getattr(e, "__name__", ""))
async def test_report_wrong_answers_fail_with_their_own_hint(endpoint, failed, hint):
    global _report_calls
    _report_calls = 0
    report = await check_report.report(app_with("GET", "/report/{month}", endpoint))
    gc.collect()
    assert_kinds(report, failed)
    assert_feedback_rules(report)
    for words in (hint,) if isinstance(hint, str) else hint:
        assert words in failure_text(report), report.text()


# ---- POST /signup -------------------------------------------------------------------------

async def signup_to_thread(signup: Signup):
    password_hash = await asyncio.to_thread(hash_password, signup.password)
    return {"id": await user_store.save(signup.email, password_hash), "email": signup.email}


async def signup_threadpool(signup: Signup) -> User:
    password_hash = await run_in_threadpool(hash_password, signup.password)
    return User(id=await user_store.save(signup.email, password_hash), email=signup.email)


async def signup_anyio(signup: Signup):
    password_hash = await anyio.to_thread.run_sync(hash_password, signup.password)
    return {"id": await user_store.save(signup.email, password_hash), "email": signup.email}


async def signup_executor(signup: Signup):
    loop = asyncio.get_running_loop()
    password_hash = await loop.run_in_executor(None, functools.partial(hash_password, signup.password))
    return {"id": await user_store.save(signup.email, password_hash), "email": signup.email}


def signup_def_route_from_thread(signup: Signup):
    password_hash = hash_password(signup.password)  # a worker thread
    return {"id": anyio.from_thread.run(user_store.save, signup.email, password_hash), "email": signup.email}


def make_hash(password):
    return hash_password(password)


def slow_down_guessing():
    time.sleep(0.03)


async def signup_blocking(signup: Signup):
    password_hash = hash_password(signup.password)
    return {"id": await user_store.save(signup.email, password_hash), "email": signup.email}


async def signup_sync_helper(signup: Signup):
    password_hash = make_hash(signup.password)
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


async def signup_leaks_the_hash(signup: Signup):
    password_hash = await asyncio.to_thread(hash_password, signup.password)
    user_id = await user_store.save(signup.email, password_hash)
    return {"id": user_id, "email": signup.email, "password_hash": password_hash}


async def signup_id_as_text(signup: Signup):
    password_hash = await asyncio.to_thread(hash_password, signup.password)
    return {"id": str(await user_store.save(signup.email, password_hash)), "email": signup.email}


async def signup_hashes_the_email(signup: Signup):
    password_hash = await asyncio.to_thread(hash_password, signup.email)
    return {"id": await user_store.save(signup.email, password_hash), "email": signup.email}


async def signup_waits_on_thread(signup: Signup):
    password_hash = executor.submit(hash_password, signup.password).result()
    return {"id": await user_store.save(signup.email, password_hash), "email": signup.email}


def hash_twice(password):
    hash_password(password + "-pepper")
    return hash_password(password)


async def signup_waits_on_two_hashes(signup: Signup):
    # More hashing in threads would have raised the old check's own allowance for stalls.
    password_hash = executor.submit(hash_twice, signup.password).result()
    return {"id": await user_store.save(signup.email, password_hash), "email": signup.email}


_hash_lock = threading.Lock()


def locked_hash(password):
    with _hash_lock:  # "hashing is probably not thread-safe"
        return hash_password(password)


async def signup_one_hash_at_a_time(signup: Signup):
    password_hash = await asyncio.to_thread(locked_hash, signup.password)
    return {"id": await user_store.save(signup.email, password_hash), "email": signup.email}


async def signup_process_pool(signup: Signup):
    """"CPU work belongs in a process pool" (a pool per call here, shut down with it: a module-level
    one kept its worker process alive for the rest of the test session)."""
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(max_workers=1) as processes:
        password_hash = await loop.run_in_executor(processes, hash_password, signup.password)
    return {"id": await user_store.save(signup.email, password_hash), "email": signup.email}


def signup_asyncio_run(signup: Signup):
    password_hash = hash_password(signup.password)
    return {"id": asyncio.run(user_store.save(signup.email, password_hash)), "email": signup.email}


_signups = 0


async def signup_blocks_after_first(signup: Signup):
    global _signups
    _signups += 1
    if _signups == 1:
        password_hash = await asyncio.to_thread(hash_password, signup.password)
    else:
        password_hash = hash_password(signup.password)
    return {"id": await user_store.save(signup.email, password_hash), "email": signup.email}


async def signup_hidden_sleep(signup: Signup):
    slow_down_guessing()
    password_hash = await asyncio.to_thread(hash_password, signup.password)
    return {"id": await user_store.save(signup.email, password_hash), "email": signup.email}


def password_strength(password, rounds=600_000):  # pure Python, about one hash's time: it holds the GIL
    score = 0
    for i in range(rounds):
        score = (score * 31 + ord(password[i % len(password)])) % 1_000_003
    return score


async def signup_scores_in_python(signup: Signup):
    password_strength(signup.password)
    password_hash = await asyncio.to_thread(hash_password, signup.password)
    return {"id": await user_store.save(signup.email, password_hash), "email": signup.email}


async def signup_scores_a_little(signup: Signup):
    password_strength(signup.password, rounds=250_000)  # under half a hash: short CPU work, still on the loop
    password_hash = await asyncio.to_thread(hash_password, signup.password)
    return {"id": await user_store.save(signup.email, password_hash), "email": signup.email}


SIGNUP_RIGHT = [signup_to_thread, signup_threadpool, signup_anyio, signup_executor, signup_def_route_from_thread]
SIGNUP_WRONG = [
    (signup_blocking, LOOP, "hash_password() in signup_blocking(), line"),
    (signup_sync_helper, LOOP, "hash_password() in make_hash(), line"),
    (signup_forgot_await, ["body"], "an un-awaited coroutine"),
    (signup_never_saves, ["body"], "answer the id it returns"),
    (signup_leaks_the_hash, ["body"], "Never send the password or its hash back"),
    (signup_id_as_text, ["body"], "(an int, from `user_store.save`)"),
    (signup_hashes_the_email, ["body"], "a hash of something else"),
    (signup_waits_on_thread, LOOP, ("in signup_waits_on_thread(), line", "inside `Future.result()`")),
    (signup_one_hash_at_a_time, ["concurrency"], "a lock held across the call"),
    (signup_asyncio_run, ["other loop"], "in signup_asyncio_run(), line"),
    (signup_process_pool, ["status"], ("cannot pickle", "PBKDF2 releases the GIL, so threads hash in parallel")),
    (signup_blocks_after_first, LOOP, "hash_password() in signup_blocks_after_first()"),
    (signup_hidden_sleep, SHORT_BLOCK, "time.sleep(0.03) in slow_down_guessing(), line"),
    (signup_scores_in_python, SHORT_BLOCK, ("computed for", "in password_strength(), line", "CPU work in `async def`")),
    # A short stay on a loaded machine: its CPU time may not tell computing from waiting (seen in a
    # fresh-clone run: 62 ms held, 20 ms of CPU), and the report then names both; the line and the
    # CPU-work hint are always there.
    (signup_scores_a_little, SHORT_BLOCK, ("in password_strength(), line", "CPU work in `async def`")),
]


@pytest.mark.parametrize("endpoint", SIGNUP_RIGHT + [lesson["signup"]], ids=lambda e: e.__name__)
async def test_signup_right_answers_pass(endpoint):
    report = await check_signup.report(app_with("POST", "/signup", endpoint))
    assert report.passed, report.text()


@pytest.mark.parametrize("endpoint, failed, hint", SIGNUP_WRONG, ids=lambda e: getattr(e, "__name__", ""))
async def test_signup_wrong_answers_fail_with_their_own_hint(endpoint, failed, hint):
    global _signups
    _signups = 0
    report = await check_signup.report(app_with("POST", "/signup", endpoint))
    assert_kinds(report, failed)
    assert_feedback_rules(report)
    for words in (hint,) if isinstance(hint, str) else hint:
        assert words in failure_text(report), report.text()


async def test_signup_yardstick_is_the_checks_own_hash_not_the_answers_calls():
    # The old check allowed a stall of half the answer's own hashing time: hashing twice raised it.
    report = await check_signup.report(app_with("POST", "/signup", signup_waits_on_two_hashes))
    assert_kinds(report, LOOP)
    assert_feedback_rules(report)
    loop_item = next(item for item in report.items if item.name == "keeps the event loop free")
    assert "for a thread's result (`.result()`)" in loop_item.hint
    limit_ms = float(loop_item.expected.split("under ", 1)[1].split()[0])
    one_hash_ms = float(loop_item.expected.split("one hash (", 1)[1].split()[0])
    assert "timed by this check in a thread" in loop_item.expected
    assert abs(limit_ms - one_hash_ms * STALL_FRACTION) <= 1


# ---- all three ----------------------------------------------------------------------------

@pytest.mark.parametrize("check", [check_forecast, check_report, check_signup], ids=lambda c: c.__name__)
async def test_an_empty_app_fails_fast_with_a_missing_route_hint(check):
    report = await check.report(FastAPI())
    assert "yet: define the route" in failure_text(report)
    assert report.metrics["elapsed_s"] < 1


@pytest.mark.parametrize("check, method, path, endpoint", [
    (check_forecast, "GET", "/forecast/{city}", forecast_awaits),
    (check_report, "GET", "/report/{month}", report_def_route),
], ids=["forecast", "report"])
async def test_answers_change_every_run_and_verdicts_do_not(check, method, path, endpoint):
    first = await check.report(app_with(method, path, endpoint))
    salts = (forecast_api.salt, legacy_reports.salt)
    second = await check.report(app_with(method, path, endpoint))
    assert first.passed and second.passed, first.text() + second.text()
    assert salts != (forecast_api.salt, legacy_reports.salt)


async def test_the_checks_own_code_raises_no_warning():
    caught = await warnings_from_checks(
        check_forecast.report(app_with("GET", "/forecast/{city}", forecast_awaits)),
        check_report.report(app_with("GET", "/report/{month}", report_blocking)),
        check_signup.report(FastAPI()),
    )
    assert caught == []
