"""Lesson 00's check: right answers pass, the usual mistakes fail with the right hint."""

import gc
from typing import Annotated

import pytest
from fastapi import FastAPI, Query
from pydantic import BaseModel

from checks import CheckFailed
from checks.lesson00 import check_hello
from conftest import assert_feedback_rules, failure_text

pytestmark = pytest.mark.anyio


def hello_app(endpoint=None, method="GET"):
    """An app whose GET /hello (or another method) is `endpoint`; no route at all without one."""
    app = FastAPI()
    if endpoint is not None:
        app.add_api_route("/hello", endpoint, methods=[method])
    return app


async def right_async(name: str = "world"):
    return {"message": f"Hello, {name}!"}


def right_sync_with_query(name: str = Query("world", max_length=50)):
    return {"message": "Hello, " + name + "!"}


class Greeting(BaseModel):
    message: str


async def right_annotated_with_a_return_type(name: Annotated[str, Query()] = "world") -> Greeting:
    return Greeting(message=f"Hello, {name}!")


@pytest.mark.parametrize("endpoint", [right_async, right_sync_with_query, right_annotated_with_a_return_type])
async def test_right_answers_pass(endpoint):
    report = await check_hello.report(hello_app(endpoint))
    assert report.passed, report.text()


async def no_default(name: str):
    return {"message": f"Hello, {name}!"}


async def hard_coded(name: str = "world"):
    return {"message": "Hello, Ada!" if name == "Ada" else "Hello, world!"}


async def no_exclamation(name: str = "world"):
    return {"message": f"Hello, {name}"}


async def raises(name: str = "world"):
    raise NotImplementedError("this exercise is not written yet")


async def returns_none(name: str = "world"):
    message = {"message": f"Hello, {name}!"}  # built, never returned  # noqa: F841


async def returns_text(name: str = "world"):
    return f"Hello, {name}!"


async def greeting(name):
    return {"message": f"Hello, {name}!"}


async def forgot_await(name: str = "world"):
    return greeting(name)


@pytest.mark.filterwarnings("ignore:coroutine .* was never awaited")
@pytest.mark.parametrize(
    "app, expected_in_failure",
    [
        (hello_app(), "Nothing answers GET /hello yet"),
        (hello_app(no_default), "FastAPI rejected the request"),
        (hello_app(hard_coded), "Use the `name` parameter"),
        (hello_app(no_exclamation), "defaults to \"world\""),
        (hello_app(raises), "NotImplementedError: this exercise is not written yet (in raises(), line"),
        (hello_app(right_async, method="POST"), "@app.get"),
        (hello_app(returns_none), "forget to `return`"),
        (hello_app(returns_text), "Return a dict with a \"message\" key"),
        (hello_app(forgot_await), "forget an `await`"),
    ],
    ids=["missing route", "no default", "hard-coded", "no !", "raises", "POST", "None", "text", "no await"],
)
async def test_wrong_answers_fail_with_the_right_hint(app, expected_in_failure):
    report = await check_hello.report(app)
    gc.collect()  # an un-awaited coroutine warns when collected: inside this test's warning filter
    assert_feedback_rules(report)
    assert expected_in_failure in failure_text(report)


async def test_calling_the_check_raises_check_failed_with_the_report():
    with pytest.raises(CheckFailed) as caught:
        await check_hello(hello_app())
    assert "GET /hello answers 200" in str(caught.value)


async def test_a_passing_check_raises_nothing(capsys):
    await check_hello(hello_app(right_async))
    assert "✓ Lesson 00" in capsys.readouterr().out


async def test_passing_something_that_is_not_an_app_is_explained():
    report = await check_hello.report("app")
    assert "runs without raising" in failure_text(report)


def noisy():
    import logging
    import sys
    import warnings

    app = FastAPI()

    @app.get("/hello")
    async def hello(name: str = "world"):
        warnings.warn("old spelling", DeprecationWarning)
        print("debug: hello called", file=sys.stderr)
        logging.getLogger("learner").error("something logged")
        return {"message": f"Hello, {name}!"}

    return app


@pytest.mark.filterwarnings("error")  # even with every warning turned into an error
async def test_warnings_prints_and_logs_from_learner_code_do_not_change_the_verdict():
    report = await check_hello.report(noisy())
    assert report.passed, report.text()


async def test_running_the_check_twice_gives_the_same_verdict():
    app = hello_app(right_async)
    first, second = await check_hello.report(app), await check_hello.report(app)
    assert first.passed and second.passed


async def test_the_checks_own_code_raises_no_warning():
    import warnings
    from pathlib import Path

    import checks

    package = str(Path(checks.__file__).parent)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for app in (hello_app(right_async), hello_app(), hello_app(raises), noisy()):
            await check_hello.report(app)
    assert [w for w in caught if w.filename.startswith(package)] == []
    assert any("old spelling" in str(w.message) for w in caught), "the learner's own warning is still shown"


async def test_an_app_whose_lifespan_fails_is_explained():
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app):
        raise RuntimeError("database URL missing")
        yield

    app = hello_app(right_async)
    app.router.lifespan_context = lifespan
    report = await check_hello.report(app)
    assert [item.name for item in report.failures] == ["the app starts"]
    assert "its lifespan raised RuntimeError: database URL missing" in report.failures[0].observed
