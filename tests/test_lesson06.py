"""Lesson 06's checks: right handlers pass; handlers that leak, lose headers or miss a case fail."""

import traceback

import pytest
from fastapi import HTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError
from starlette.exceptions import HTTPException as StarletteHTTPException

from checks.lesson06 import ItemNotFound, check_catch_all, check_conflict, check_envelope, check_not_found
from conftest import assert_feedback_rules, failure_text, names, notebook_namespace

pytestmark = pytest.mark.anyio
lesson = notebook_namespace("06_exception_handlers")
shop_app, error_body = lesson["shop_app"], lesson["error_body"]


def handler(exc_type, make_response):
    """An installer registering `make_response(request, exc)` for `exc_type`, the other way."""
    def install(app):
        async def handle(request, exc):
            return make_response(request, exc)
        app.add_exception_handler(exc_type, handle)
    return install


# ---- exercise 1 --------------------------------------------------------------------------------------

async def test_not_found_right_answers_pass():
    other = handler(ItemNotFound, lambda r, e: JSONResponse(error_body("item_not_found", "no such item"), 404))
    for install in (lesson["add_not_found"], other):
        report = await check_not_found.report(shop_app, install)
        assert report.passed, report.text()


@pytest.mark.parametrize("install", [
    handler(ItemNotFound, lambda r, e: JSONResponse({"detail": str(e)}, 404)),
    handler(ItemNotFound, lambda r, e: JSONResponse(error_body("item_not_found", str(e)), 400)),
    handler(KeyError, lambda r, e: JSONResponse(error_body("item_not_found", "x"), 404)),
], ids=["not the envelope", "400", "wrong exception"])
async def test_not_found_mistakes(install):
    report = await check_not_found.report(shop_app, install)
    assert names(report)[0].endswith("→ 404 item_not_found"), report.text()
    assert_feedback_rules(report)


# ---- exercise 2 ----------------------------------------------------------------------------------------

def envelope(http_type=StarletteHTTPException, keep_headers=True, keep_fields=True):
    def install(app):
        @app.exception_handler(RequestValidationError)
        async def invalid(request, exc):
            fields = [{"loc": list(e["loc"]), "message": e["msg"]} for e in exc.errors()] if keep_fields else []
            return JSONResponse(error_body("validation_error", "invalid", fields=fields), status_code=422)

        @app.exception_handler(http_type)
        async def http_error(request, exc):
            return JSONResponse(error_body(f"http_{exc.status_code}", str(exc.detail)), status_code=exc.status_code,
                                headers=exc.headers if keep_headers else None)
    return install


async def test_envelope_right_answers_pass():
    for install in (lesson["add_envelope"], envelope()):
        report = await check_envelope.report(shop_app, install)
        assert report.passed, report.text()


@pytest.mark.parametrize("install, failed, hint", [
    (envelope(http_type=HTTPException), "an unknown path → 404 http_404", "starlette.exceptions.HTTPException"),
    (envelope(keep_headers=False), "an HTTPException keeps its status and its headers (401 + WWW-Authenticate)", "headers=exc.headers"),
    (envelope(keep_fields=False), "an invalid body → 422 validation_error, with each field's loc", "`loc`"),
], ids=["FastAPI's HTTPException only", "headers dropped", "fields dropped"])
async def test_envelope_mistakes(install, failed, hint):
    report = await check_envelope.report(shop_app, install)
    assert names(report) == [failed], report.text()
    assert hint in failure_text(report)
    assert_feedback_rules(report)


# ---- exercise 3 ------------------------------------------------------------------------------------------

async def test_conflict_right_answers_pass():
    other = handler(IntegrityError, lambda r, e: JSONResponse(error_body("conflict", "name taken"), 409))
    for install in (lesson["add_conflict"], other):
        report = await check_conflict.report(shop_app, install)
        assert report.passed, report.text()


@pytest.mark.parametrize("install", [
    handler(IntegrityError, lambda r, e: JSONResponse(error_body("conflict", str(e)), 409)),
    handler(IntegrityError, lambda r, e: JSONResponse(error_body("conflict", "taken"), 400)),
], ids=["SQL in the message", "400"])
async def test_conflict_mistakes(install):
    report = await check_conflict.report(shop_app, install)
    assert names(report) == ["the same name again → 409 conflict, no SQL in the body"], report.text()
    assert_feedback_rules(report)


# ---- exercise 4 ------------------------------------------------------------------------------------------

def catch_all(message, log=True):
    def install(app):
        @app.exception_handler(Exception)
        async def internal(request, exc):
            if log:
                lesson["logger"].error("unhandled", exc_info=exc)
            return JSONResponse(error_body("internal_error", message(exc)), status_code=500)
    return install


async def test_catch_all_right_answers_pass():
    for install in (lesson["add_catch_all"], catch_all(lambda exc: "Something went wrong on our side.")):
        report = await check_catch_all.report(shop_app, install)
        assert report.passed, report.text()


@pytest.mark.parametrize("install, failed", [
    (catch_all(lambda exc: str(exc)), ["the 500 says nothing about the error", "8 odd requests: no internals in any answer"]),
    (catch_all(lambda exc: "".join(traceback.format_exception(exc))), ["the 500 says nothing about the error",
                                                                        "8 odd requests: no internals in any answer"]),
    (catch_all(lambda exc: "Internal Server Error", log=False), ["the log holds the real error"]),
], ids=["str(exc)", "traceback", "not logged"])
async def test_catch_all_mistakes(install, failed):
    report = await check_catch_all.report(shop_app, install)
    assert names(report) == failed, report.text()
    assert_feedback_rules(report)


async def test_the_checks_own_code_raises_no_warning():
    from conftest import warnings_from_checks

    assert await warnings_from_checks(
        check_envelope.report(shop_app, envelope(keep_headers=False)),
        check_catch_all.report(shop_app, catch_all(lambda exc: str(exc))),
    ) == []
