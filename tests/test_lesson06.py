"""Lesson 06's checks: right handlers pass, registered any of the usual ways; handlers that leak,
lose headers, miss a case, answer for errors that are not theirs, or lose the request id fail with
the hint that fits."""

import logging
import sqlite3
import traceback

import pydantic
import pytest
from fastapi import HTTPException
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy.exc import DatabaseError, DBAPIError, IntegrityError, SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from checks.lesson06 import ItemNotFound, check_catch_all, check_client_errors, check_envelope
from conftest import assert_feedback_rules, failure_text, names, notebook_namespace

pytestmark = pytest.mark.anyio
lesson = notebook_namespace("06_exception_handlers")
shop_app, error_body = lesson["shop_app"], lesson["error_body"]
log = logging.getLogger("test.lesson06")
log.addHandler(logging.NullHandler())

NEIGHBOURS = "neighbouring errors keep their own answers"


def handler(exc_type, make_response, sync=False):
    """An installer registering `make_response(request, exc)` for `exc_type`, with add_exception_handler."""
    def install(app):
        if sync:
            def handle(request, exc):
                return make_response(request, exc)
        else:
            async def handle(request, exc):
                return make_response(request, exc)
        app.add_exception_handler(exc_type, handle)
    return install


async def failing(check, *args):
    report = await check.report(*args)
    assert_feedback_rules(report)
    return report


# ---- exercise 1: the errors the client can fix ---------------------------------------------------------

NOT_FOUND = "→ 404 item_not_found"
CONFLICT = "the same name again → 409 conflict, no SQL in the body"


def both(*installers):
    def install(app):
        for one in installers:
            one(app)
    return install


def course_not_found(app):
    handler(ItemNotFound, lambda r, e: JSONResponse(error_body("item_not_found", str(e)), 404))(app)


def course_conflict(app):
    handler(IntegrityError, lambda r, e: JSONResponse(error_body("conflict", "name taken"), 409))(app)


def one_handler_for_both(app):
    """One function, registered for each class it maps."""
    answers = {ItemNotFound: (404, "item_not_found", "no such item"), IntegrityError: (409, "conflict", "taken")}

    async def client_error(request, exc):
        status, code, message = next(v for k, v in answers.items() if isinstance(exc, k))
        return JSONResponse(error_body(code, message), status_code=status)

    for exc_type in answers:
        app.add_exception_handler(exc_type, client_error)


def conflict_handler(exc_type, message=lambda exc: "name taken", status=409, code="conflict", sync=False):
    return handler(exc_type, lambda r, e: JSONResponse(error_body(code, message(e)), status), sync=sync)


@pytest.mark.parametrize("install", [
    lesson["add_client_errors"],
    both(handler(ItemNotFound, lambda r, e: JSONResponse(error_body("item_not_found", "no such item"), 404)),
         conflict_handler(IntegrityError)),
    both(handler(ItemNotFound, lambda r, e: JSONResponse(error_body("item_not_found", f"no item {e.item_id}",
                                                                    item_id=e.item_id), 404), sync=True),
         conflict_handler(IntegrityError, message=lambda exc: "an item with this name exists already", sync=True)),
    one_handler_for_both,
], ids=["the notebook's", "add_exception_handler", "plain defs, with item_id", "one handler for both classes"])
async def test_client_errors_right_answers_pass(install):
    report = await check_client_errors.report(shop_app, install)
    assert report.passed, report.text()


def raises_http(request, exc):
    raise HTTPException(404, "no such item")


def returns_nothing(request, exc):
    JSONResponse(error_body("item_not_found", str(exc)), 404)  # built, never returned


@pytest.mark.parametrize("install, neighbours, hint", [
    (handler(ItemNotFound, lambda r, e: JSONResponse({"detail": str(e)}, 404)), False, 'not `{"detail": ...}`'),
    (handler(ItemNotFound, lambda r, e: JSONResponse(error_body("item_not_found", str(e)), 400)), False, "status 404"),
    (handler(KeyError, lambda r, e: JSONResponse(error_body("item_not_found", "x"), 404)), False,
     "not a subclass of what you registered"),
    (handler(ItemNotFound, lambda r, e: JSONResponse(error_body("not_found", str(e)), 404)), False, "item_not_found"),
    (handler(ItemNotFound, lambda r, e: JSONResponse(error_body("item_not_found", e.item_id), 404)), False,
     "item_not_found"),
    (handler(ItemNotFound, lambda r, e: error_body("item_not_found", str(e))), False, "not a dict, not a raise"),
    (handler(ItemNotFound, raises_http), False, "not by raising HTTPException"),
    (handler(ItemNotFound, returns_nothing), False, "must `return` a response"),
    (handler(ItemNotFound, lambda r, e: PlainTextResponse("item not found", 404)), False, "the envelope"),
    (handler(ItemNotFound, lambda r, e: JSONResponse(error_body("item_not_found", "x", item_id=str(e.item_id)), 404)),
     False, "the envelope"),
    (handler(ItemNotFound, lambda r, e: JSONResponse({"code": "item_not_found", "message": str(e)}, 404)), False,
     "the envelope"),
    (handler(Exception, lambda r, e: JSONResponse(error_body("item_not_found", "no such item"), 404)), True,
     "A handler for `Exception`"),
], ids=["not the envelope", "400", "wrong exception", "wrong code", "message not a string", "returns a dict",
        "raises HTTPException", "forgets to return", "plain text", "item_id as str", "flat body",
        "registered for Exception"])
async def test_not_found_mistakes(install, neighbours, hint):
    report = await failing(check_client_errors, shop_app, both(install, course_conflict))
    if neighbours:
        assert names(report) == [NEIGHBOURS], report.text()
    else:
        assert len(names(report)) == 1 and names(report)[0].endswith(NOT_FOUND), report.text()
    assert hint in failure_text(report), failure_text(report)


@pytest.mark.parametrize("install, failed, hint", [
    (conflict_handler(IntegrityError, message=str), [CONFLICT], "Write the message yourself"),
    (conflict_handler(IntegrityError, message=lambda exc: str(exc.orig)), [CONFLICT], "Write the message yourself"),
    (conflict_handler(IntegrityError, status=400), [CONFLICT], "A taken name is a conflict"),
    (conflict_handler(IntegrityError, code="integrity_error"), [CONFLICT], "A taken name is a conflict"),
    (conflict_handler(sqlite3.IntegrityError), [CONFLICT], "SQLAlchemy wraps the driver's errors"),
    (conflict_handler(SQLAlchemyError), [NEIGHBOURS], "A handler for SQLAlchemyError answers for every subclass"),
    (conflict_handler(DBAPIError), [NEIGHBOURS], "A handler for DBAPIError answers for every subclass"),
    (conflict_handler(DatabaseError), [NEIGHBOURS], "A handler for DatabaseError answers for every subclass"),
    (conflict_handler(Exception), [NEIGHBOURS], "A handler for `Exception`"),
    (conflict_handler(ValueError), [CONFLICT], "which class does it raise?"),
    (handler(IntegrityError, returns_nothing), [CONFLICT], "must `return` a response"),
    (handler(IntegrityError, lambda r, e: JSONResponse({"detail": "name taken"}, 409)), [CONFLICT],
     "A taken name is a conflict"),
], ids=["str(exc)", "exc.orig", "400", "wrong code", "the driver's IntegrityError", "SQLAlchemyError",
        "DBAPIError", "DatabaseError", "Exception", "a class it never raises", "forgets to return", "not the envelope"])
async def test_conflict_mistakes(install, failed, hint):
    report = await failing(check_client_errors, shop_app, both(course_not_found, install))
    assert names(report) == failed, report.text()
    assert hint in failure_text(report), failure_text(report)


# ---- exercise 2 ----------------------------------------------------------------------------------------

INVALID = "an invalid body → 422 validation_error, each field with its loc and message"
BROKEN = "invalid JSON → 422 validation_error"
HTTP = "HTTP errors keep status, detail and headers: 401 WWW-Authenticate, 405 Allow, 429 Retry-After"
UNKNOWN = "an unknown path → 404 http_404"


def envelope(http_type=StarletteHTTPException, validation_type=RequestValidationError, keep_headers=True,
             fields=lambda exc: [{"loc": list(e["loc"]), "message": e["msg"]} for e in exc.errors()],
             status=lambda exc: exc.status_code, code=lambda exc: f"http_{exc.status_code}",
             message=lambda exc: str(exc.detail), validation_status=422):
    def install(app):
        @app.exception_handler(validation_type)
        async def invalid(request, exc):
            return JSONResponse(error_body("validation_error", "invalid", fields=fields(exc)), status_code=validation_status)

        @app.exception_handler(http_type)
        async def http_error(request, exc):
            return JSONResponse(error_body(code(exc), message(exc)), status_code=status(exc),
                                headers=getattr(exc, "headers", None) if keep_headers else None)
    return install


@pytest.mark.parametrize("install", [
    lesson["add_envelope"],
    envelope(fields=lambda exc: jsonable_encoder(exc.errors())),
    envelope(fields=lambda exc: [{"loc": [*e["loc"]], "msg": e["msg"], "type": e["type"]} for e in exc.errors()]),
], ids=["the notebook's", "raw errors(), jsonable", "loc, msg and type"])
async def test_envelope_right_answers_pass(install):
    report = await check_envelope.report(shop_app, install)
    assert report.passed, report.text()


def catch_everything(app):
    """Validation as asked; HTTP errors "by" a handler for Exception."""
    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc):
        fields = [{"loc": list(e["loc"]), "message": e["msg"]} for e in exc.errors()]
        return JSONResponse(error_body("validation_error", "invalid", fields=fields), status_code=422)

    @app.exception_handler(Exception)
    async def anything(request, exc):
        status = getattr(exc, "status_code", 500)
        return JSONResponse(error_body(f"http_{status}", str(exc)), status_code=status)


@pytest.mark.parametrize("install, failed, hint", [
    (envelope(http_type=HTTPException), [HTTP, UNKNOWN], "starlette.exceptions.HTTPException"),
    (envelope(keep_headers=False), [HTTP], "headers=exc.headers"),
    (envelope(fields=lambda exc: []), [INVALID, BROKEN], "`loc`"),
    (envelope(fields=lambda exc: [{"loc": ".".join(map(str, e["loc"])), "message": e["msg"]} for e in exc.errors()]),
     [INVALID, BROKEN], "`loc` as a list"),
    (envelope(message=lambda exc: "something went wrong"), [HTTP], "the exception's own `exc.detail`"),
    (envelope(status=lambda exc: 400), [HTTP, UNKNOWN], "Status from `exc.status_code`"),
    (envelope(validation_type=pydantic.ValidationError), [INVALID, BROKEN], "is not what FastAPI raises"),
    (envelope(validation_status=400), [INVALID, BROKEN], "Answer 422"),
    (catch_everything, [HTTP, UNKNOWN, NEIGHBOURS], "never reach a handler for `Exception`"),
    (envelope(code=lambda exc: f"http{exc.status_code}"), [HTTP, UNKNOWN], 'code `f"http_{exc.status_code}"`'),
    (envelope(fields=lambda exc: [{"loc": list(e["loc"])} for e in exc.errors()]), [INVALID, BROKEN], "`msg`"),
], ids=["FastAPI's HTTPException only", "headers dropped", "fields dropped", "loc as a string", "detail dropped",
        "every HTTP error a 400", "pydantic.ValidationError", "validation as 400", "a handler for Exception",
        "code without underscore", "no message per field"])
async def test_envelope_mistakes(install, failed, hint):
    report = await failing(check_envelope, shop_app, install)
    assert names(report) == failed, report.text()
    assert hint in failure_text(report), failure_text(report)


# ---- exercise 3 ------------------------------------------------------------------------------------------

CRASH = "GET /crash → 500 internal_error"
SILENT = "the 500 says nothing about the error"
TAGGED = "the 500 carries X-Request-ID: the client's, or the one the middleware made"
REPORTS = "another error (a missing table) → the same 500, no SQL"
ODD = "8 odd requests: no internals in any answer"
LOGGED = "the log holds the real error, its traceback and the request id"


def catch_all(message=lambda exc: "Internal Server Error", log_it="with_id", header="state", status=500,
              code="internal_error", key=Exception, sync=False):
    def respond(request, exc):
        rid = getattr(request.state, "request_id", "?")
        if log_it == "with_id":
            log.error("request %s failed", rid, exc_info=exc)
        elif log_it == "without_id":
            log.exception("unhandled error")
        elif log_it == "no_traceback":
            log.error("request %s failed: %s", rid, type(exc).__name__)
        elif log_it == "logger.exception":
            log.exception("request %s failed", rid)
        headers = {"state": {"X-Request-ID": rid}, "none": None,
                   "client": {"X-Request-ID": request.headers.get("x-request-id", "")}}[header]
        return JSONResponse(error_body(code, message(exc)), status_code=status, headers=headers)

    def install(app):
        if sync:
            def internal(request, exc):
                return respond(request, exc)
        else:
            async def internal(request, exc):
                return respond(request, exc)
        app.add_exception_handler(key, internal)
    return install


def catch_all_too_broad(app):
    catch_all()(app)
    catch_all(key=StarletteHTTPException)(app)  # "every error is ours"


@pytest.mark.parametrize("install", [
    lesson["add_catch_all"], catch_all(key=500), catch_all(sync=True), catch_all(log_it="logger.exception"),
], ids=["the notebook's", "registered for 500", "a plain def with exc_info=exc", "logger.exception"])
async def test_catch_all_right_answers_pass(install):
    report = await check_catch_all.report(shop_app, install)
    assert report.passed, report.text()


@pytest.mark.parametrize("install, failed, hint", [
    (catch_all(message=str), [SILENT, REPORTS, ODD], "Never put `str(exc)`"),
    (catch_all(message=lambda exc: "".join(traceback.format_exception(exc))), [SILENT, REPORTS, ODD],
     "Never put `str(exc)`"),
    (catch_all(message=lambda exc: f"{type(exc).__name__}"), [SILENT, REPORTS, ODD], "its type"),
    (catch_all(log_it=None), [LOGGED], "What the client does not see, the log must"),
    (catch_all(log_it="without_id"), [LOGGED], "Put the request id in the log line"),
    (catch_all(log_it="no_traceback"), [LOGGED], "`logger.error(...)` alone does not"),
    (catch_all(header="none"), [TAGGED], "outside the request-id middleware"),
    (catch_all(header="client"), [TAGGED], "read it there"),
    (catch_all(status=200), [CRASH], "without it a JSONResponse says 200"),
    (catch_all(log_it="logger.exception", sync=True), [LOGGED], "Your handler is a plain `def`"),
    (catch_all(code="error"), [CRASH], "Return `error_body"),
    (catch_all_too_broad, [NEIGHBOURS], "register it for `Exception` only"),
    (handler(Exception, lambda r, e: returns_nothing(r, e)), [CRASH], "returned nothing"),
], ids=["str(exc)", "traceback", "the type's name", "not logged", "logged without the id", "logged without traceback",
        "no X-Request-ID", "the client's header only", "status 200", "def + logger.exception", "wrong code",
        "also for HTTPException", "forgets to return"])
async def test_catch_all_mistakes(install, failed, hint):
    report = await failing(check_catch_all, shop_app, install)
    assert names(report) == failed, report.text()
    assert hint in failure_text(report), failure_text(report)


async def test_the_checks_own_code_raises_no_warning():
    from conftest import warnings_from_checks

    assert await warnings_from_checks(
        check_envelope.report(shop_app, envelope(keep_headers=False)),
        check_catch_all.report(shop_app, catch_all(message=str)),
    ) == []


async def test_the_catch_all_500_misses_the_request_id_unless_the_handler_adds_it():
    """The fact lesson 06 shows: a handler for Exception runs outside the request-id middleware."""
    from checks import serve

    def guides(app):
        @app.exception_handler(Exception)
        async def internal(request, exc):
            return JSONResponse(error_body("internal_error", "Internal Server Error"), status_code=500)

    for install, expected in ((guides, None), (lesson["add_catch_all"], "rid-42")):
        async with serve(shop_app(install), raise_app_exceptions=False) as client:
            response = await client.get("/crash", headers={"X-Request-ID": "rid-42"})
        assert response.status_code == 500 and response.headers.get("x-request-id") == expected


async def test_a_handler_for_pydantics_validation_error_runs_for_the_apps_own_errors_only():
    # What the lesson's "A handler that does not run for bad requests" cells show.
    import warnings

    from fastapi import status

    from checks import serve

    calls = []

    def add_pydantic_handler(app):
        @app.exception_handler(pydantic.ValidationError)
        async def pydantic_error(request, exc):
            calls.append(request.url.path)
            return JSONResponse({"error": "caught"}, status_code=422)

        @app.get("/supplier-price")
        async def supplier_price() -> lesson["ItemIn"]:
            return lesson["ItemIn"].model_validate({"name": "kettle", "price": -3})

    async with serve(lesson["shop_app"](add_pydantic_handler), raise_app_exceptions=False) as client:
        bad_request = await client.post("/items", json={"price": -1})
        own_error = await client.get("/supplier-price")
    assert bad_request.status_code == 422 and list(bad_request.json()) == ["detail"]  # FastAPI's own 422
    assert own_error.status_code == 422 and own_error.json() == {"error": "caught"}
    assert calls == ["/supplier-price"]
    assert not issubclass(RequestValidationError, pydantic.ValidationError)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        status.HTTP_422_UNPROCESSABLE_ENTITY
    assert [type(w.message).__name__ for w in caught] == ["StarletteDeprecationWarning"]


async def test_server_error_middleware_re_raises_after_the_catch_all_answered():
    """What lesson 06 says and shows: the 500 is sent, then the error still reaches the server
    (uvicorn logs it a second time)."""
    from checks.asgi_spec import exchange, http_scope

    result = await exchange(shop_app(lesson["add_catch_all"]), http_scope("GET", "/crash"))
    assert result.status == 500 and result.spec.ended and isinstance(result.error, RuntimeError)
    assert b"internal_error" in result.body
