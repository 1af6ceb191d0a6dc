"""Lesson 06, exception handlers: the errors a client can fix (a 404 from the domain, a 409 from
the database, each handler registered for the narrowest class), one JSON error envelope for the
whole API, and a catch-all 500 that logs everything, tells the client nothing it should not, and
still carries the request id.

Every check builds the lesson's app INSIDE the check from the learner's installer(s), with the
course's own versions of the other exercises installed too (one unfinished exercise does not
fail the next), sends requests with `raise_app_exceptions=False` (the client sees the 500 the
app sent), and sends the neighbouring errors as well: a handler registered too broadly turns
them into the wrong answer. Envelopes are judged by types and values, not by key presence.
"""

from __future__ import annotations

import inspect
import os
import random
import tempfile

import fastapi.exception_handlers
import httpx
from fastapi import HTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import String
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from starlette.exceptions import HTTPException as StarletteHTTPException

from .harness import serve
from .lesson05.judge_common import _mentions, _Records, observed, short_error  # noqa: F401 (short_error: re-exported)
from .lesson05.world import LogBook, RequestContext  # noqa: F401 (re-exported for the notebook)
from .observe import json_body
from .runner import check

DATABASE_URL = f"sqlite+aiosqlite:///{os.path.join(tempfile.gettempdir(), f'fastapi-course-lesson06-{os.getpid()}.db')}"
# What /crash's error message carries: none of it may reach the client.
SECRET = "hunter2"
INTERNALS = [SECRET, "Traceback", "RuntimeError", "connection failed", "INSERT INTO", "SELECT", "UNIQUE constraint",
             "sqlite3", "OperationalError", "no such table"]
# How a report names each leak (it does not repeat the secret, nor look like a traceback itself).
LEAK_NAMES = {SECRET: "the database password", "Traceback": "a traceback", "RuntimeError": "the exception's type",
              "connection failed": "the exception's message", "INSERT INTO": "SQL", "SELECT": "SQL",
              "UNIQUE constraint": "SQL", "sqlite3": "the driver's name", "OperationalError": "the exception's type",
              "no such table": "the database's message"}
BEARER_DETAIL = "a bearer token is needed"


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "shop_items"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    price: Mapped[float]


class ItemNotFound(Exception):
    """The domain's own error: no item with this id."""

    def __init__(self, item_id: int):
        super().__init__(f"item {item_id} does not exist")
        self.item_id = item_id


# ---- the course's own versions of the exercises (each check installs the ones it does not judge) --------

def _error_body(code: str, message: str, **extra) -> dict:
    return {"error": {"code": code, "message": message, **extra}}


def course_not_found(app) -> None:
    async def not_found(request, exc: ItemNotFound):
        return JSONResponse(_error_body("item_not_found", str(exc), item_id=exc.item_id), status_code=404)
    app.add_exception_handler(ItemNotFound, not_found)


def course_envelope(app) -> None:
    async def invalid(request, exc: RequestValidationError):
        fields = [{"loc": list(e["loc"]), "message": e["msg"]} for e in exc.errors()]
        return JSONResponse(_error_body("validation_error", "the request is not valid", fields=fields), status_code=422)

    async def http_error(request, exc: StarletteHTTPException):
        return JSONResponse(_error_body(f"http_{exc.status_code}", str(exc.detail)), status_code=exc.status_code,
                            headers=exc.headers)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(StarletteHTTPException, http_error)


def course_conflict(app) -> None:
    async def conflict(request, exc: IntegrityError):
        return JSONResponse(_error_body("conflict", "this item already exists"), status_code=409)
    app.add_exception_handler(IntegrityError, conflict)


# ---- judging an envelope ------------------------------------------------------------------------

NO_RESPONSE = "course.no_response"


async def _request(client, method: str, path: str, **kwargs) -> httpx.Response:
    """`client.request`; an app that returned without sending any response (a handler that returned
    None) comes back as an empty 500, marked, instead of httpx's AssertionError."""
    try:
        return await client.request(method, path, **kwargs)
    except AssertionError:
        return httpx.Response(500, request=client.build_request(method, path), extensions={NO_RESPONSE: True})


def _sent_nothing(response) -> bool:
    return bool(response.extensions.get(NO_RESPONSE))


def _is_json(response) -> bool:
    return response.headers.get("content-type", "").startswith("application/json")


def envelope_problem(response, status: int, code: str) -> str | None:
    """What is wrong with `response` as `{"error": {"code": code, "message": "..."}}` at `status`; None if right."""
    if _sent_nothing(response):
        return "the app sent no response at all"
    if response.status_code != status:
        return f"status {response.status_code}"
    if not _is_json(response):
        return f"content-type {response.headers.get('content-type')!r}, not JSON"
    body = json_body(response)
    if not isinstance(body, dict) or not isinstance(body.get("error"), dict):
        return "no `error` object in the body"
    error = body["error"]
    if error.get("code") != code:
        return f"error.code {error.get('code')!r}"
    message = error.get("message")
    if not isinstance(message, str) or not message.strip():
        return f"error.message {message!r}: a non-empty string"
    return None


def _leaks(response) -> list[str]:
    text = response.text + str(dict(response.headers))
    return sorted({LEAK_NAMES[s] for s in INTERNALS if s in text})


def _judge(report, name, response, client, status, code, hint, extra=None) -> bool:
    """One item: the envelope, then `extra(error, response)` → a problem string or None."""
    problem = envelope_problem(response, status, code)
    if problem is None and extra is not None:
        problem = extra(json_body(response)["error"], response)
    shown = observed(response, client)
    if problem and not problem.startswith("status "):
        shown = f"{problem}: {shown}"
    return report.add(name, problem is None, observed=shown if problem else "",
                      expected=f'{status}, JSON {{"error": {{"code": "{code}", "message": "..."}}}}', hint=hint)


async def _neighbours(report, client, expected, hint) -> None:
    """Requests whose errors belong to other handlers (or none): each must keep its own answer."""
    wrong = []
    for method, path, kwargs, status, code in expected:
        response = await _request(client, method, path, **kwargs)
        problem = envelope_problem(response, status, code) if code else (
            None if response.status_code == status and not _leaks(response) else f"status {response.status_code}")
        if problem:
            got = json_body(response)
            got_code = got.get("error", {}).get("code") if isinstance(got, dict) and isinstance(got.get("error"), dict) else None
            wrong.append(f"{method} {path} → {response.status_code}" + (f" {got_code}" if got_code else ""))
    report.add("neighbouring errors keep their own answers", not wrong, observed="; ".join(wrong[:3]),
               expected="; ".join(f"{m} {p} → {s}" + (f" {c}" if c else "") for m, p, _, s, c in expected), hint=hint)


def _registered(app) -> dict:
    """The exception classes (or status codes) the learner registered handlers for (FastAPI's own
    defaults left out): for hints only, verdicts come from responses."""
    defaults = {id(value) for value in vars(fastapi.exception_handlers).values() if callable(value)}
    return {key: value for key, value in (getattr(app, "exception_handlers", {}) or {}).items()
            if id(value) not in defaults}


def _missing_id() -> int:
    return random.randint(1000, 9999)


def _client_id() -> str:
    return f"client-{random.randint(10**6, 10**7)}"


# ---- exercise 1: the errors the client can fix --------------------------------------------------

BROAD_DB = ("SQLAlchemyError", "StatementError", "DBAPIError", "DatabaseError")


def _none_returned(raised, response=None) -> bool:
    """A handler returned None: nothing was sent (or, for the catch-all, None was called)."""
    if response is not None and _sent_nothing(response):
        return True
    return bool(raised) and isinstance(raised[-1].exception, TypeError) \
        and "'NoneType' object is not callable" in str(raised[-1].exception)


def _not_found_hint(raised, registered, response) -> str:
    body = json_body(response)
    if _none_returned(raised, response):
        return "Your handler returned nothing: an exception handler must `return` a response (`JSONResponse(...)`)."
    if raised and not isinstance(raised[-1].exception, ItemNotFound):
        return ("The handler itself raised: an exception handler returns a response, `JSONResponse(...)` — "
                "not a dict, not a raise.")
    if ItemNotFound not in registered:
        return ("A handler runs for the class it is registered for and its subclasses: the route raises "
                "ItemNotFound, which is not a subclass of what you registered.")
    if isinstance(body, dict) and "detail" in body:
        return ("Answer with the envelope, `error_body(\"item_not_found\", ...)` — not `{\"detail\": ...}`, and "
                "not by raising HTTPException (FastAPI answers that its own way).")
    return "Answer with the envelope, `error_body(\"item_not_found\", <a message>)`: its code, a message, status 404."


def _conflict_hint(raised, registered, response) -> str:
    if _none_returned(raised, response):
        return "Your handler returned nothing: an exception handler must `return` a response (`JSONResponse(...)`)."
    if any(getattr(key, "__module__", "").startswith("sqlite3") for key in registered):
        return "SQLAlchemy wraps the driver's errors: the app sees SQLAlchemy's IntegrityError, not sqlite3's."
    if response.status_code == 409 and _leaks(response):
        return "Write the message yourself: `str(exc)`, `exc.orig` and `exc.params` hold SQL and the driver's words."
    if response.status_code == 500:
        return ("No handler took the taken name's error: which class does it raise? (The demo printed it, and the "
                "classes above it.)")
    return "A taken name is a conflict with what exists: 409, and the envelope `error_body(\"conflict\", ...)`."


@check("Lesson 06 · a missing item is a 404, a taken name a 409 — and nothing else is", limit_s=12)
async def check_client_errors(report, shop_app, add_client_errors):
    missing = _missing_id()
    name = f"lamp-{random.randint(1000, 9999)}"
    app = shop_app(add_client_errors)
    registered = _registered(app)
    async with serve(app, raise_app_exceptions=False) as client:
        # 1. The domain's own error.
        response = await _request(client, "GET", f"/items/{missing}")

        def item_id_right(error, _):
            if "item_id" in error and error["item_id"] != missing:
                return f"error.item_id {error['item_id']!r}, not {missing}"
            return None

        _judge(report, f"GET /items/{missing} → 404 item_not_found", response, client, 404, "item_not_found",
               _not_found_hint(client.errors_for(f"/items/{missing}"), registered, response), extra=item_id_right)
        found = await _request(client, "GET", "/items/1")
        report.add("an existing item still answers 200", found.status_code == 200, observed=observed(found, client),
                   expected="200", hint="The handler only runs when the exception is raised.")

        # 2. The database's refusal: a name that is taken.
        first = await _request(client, "POST", "/items", json={"name": name, "price": 12.5})
        if first.status_code != 201:
            report.fail("a new name → 201", observed=observed(first, client), expected="201",
                        hint="Only the duplicate should fail.")
            return
        before = len(client.errors_for("/items"))
        second = await _request(client, "POST", "/items", json={"name": name, "price": 13})

        def no_sql(error, response):
            leaks = _leaks(response)
            return f"the body shows {', '.join(leaks)}" if leaks else None

        _judge(report, "the same name again → 409 conflict, no SQL in the body", second, client, 409, "conflict",
               _conflict_hint(client.errors_for("/items")[before:], registered, second), extra=no_sql)
        after = await _request(client, "POST", "/items", json={"name": name + "-2", "price": 9})
        report.add("a new name after the conflict still answers 201", after.status_code == 201,
                   observed=observed(after, client), expected="201",
                   hint="Each request has its own session: the conflict must not break the next request.")

        # 3. Everything else keeps its answer: a missing table is ours (500), and so on.
        too_broad = next((key.__name__ for key in registered if getattr(key, "__name__", "") in BROAD_DB), None)
        await _neighbours(report, client, [
            ("GET", "/reports", {}, 500, None), ("GET", "/crash", {}, 500, None),
            ("GET", f"/no-such-page-{random.randint(10, 99)}", {}, 404, None), ("GET", "/items/abc", {}, 422, None),
            ("GET", "/private", {}, 401, None), ("POST", "/items", {"json": {"name": ""}}, 422, None)],
            (f"A handler for {too_broad} answers for every subclass: /reports' missing table (OperationalError) is "
             "one too, and the client would retry in vain. Choose the class only a taken name raises."
             if too_broad else
             "A handler for `Exception` (or another broad class) answers for errors that are not the client's. "
             "Register each handler for the narrowest class that covers its case."))


# ---- exercise 2 ---------------------------------------------------------------------------------

def _fields_problem(error, wanted: set[tuple]) -> str | None:
    fields = error.get("fields")
    if not isinstance(fields, list) or not fields:
        return f"error.fields {fields!r:.60}: a list with one entry per invalid field"
    locs = set()
    for field in fields:
        if not isinstance(field, dict):
            return f"a field error {field!r:.40} is not an object"
        loc = field.get("loc")
        message = field.get("message", field.get("msg"))
        if not isinstance(loc, list) or not all(isinstance(part, (str, int)) for part in loc):
            return f"a field's loc {loc!r}: a list such as [\"body\", \"price\"]"
        if not isinstance(message, str) or not message:
            return f"the field {loc} has message {message!r}"
        locs.add(tuple(loc))
    if wanted and not wanted <= locs:
        return f"locs {sorted(locs)}, not {sorted(wanted)}"
    return None


@check("Lesson 06 · one envelope for validation errors and HTTP errors", limit_s=12)
async def check_envelope(report, shop_app, add_envelope):
    app = shop_app(course_not_found, add_envelope)
    registered = _registered(app)
    validation_hint = (
        "`pydantic.ValidationError` is not what FastAPI raises for a bad request: register the handler for "
        "`fastapi.exceptions.RequestValidationError`." if RequestValidationError not in registered else
        "Answer 422 with `exc.errors()` under \"fields\": each entry's `loc` as a list and its `msg`.")
    async with serve(app, raise_app_exceptions=False) as client:
        invalid = await _request(client, "POST", "/items", json={"price": -random.randint(1, 99)})
        _judge(report, "an invalid body → 422 validation_error, each field with its loc and message", invalid, client,
               422, "validation_error", validation_hint,
               extra=lambda error, _: _fields_problem(error, {("body", "name"), ("body", "price")}))
        broken = await _request(client, "POST", "/items", content=b'{"name": ', headers={"content-type": "application/json"})
        _judge(report, "invalid JSON → 422 validation_error", broken, client, 422, "validation_error",
               "Invalid JSON is a RequestValidationError too. " + validation_hint,
               extra=lambda error, _: _fields_problem(error, set()))

        headers_lost = []
        for path, method, status, header, value in (("/private", "GET", 401, "www-authenticate", "Bearer"),
                                                    ("/items", "GET", 405, "allow", "POST"),
                                                    ("/limited", "GET", 429, "retry-after", None)):
            response = await _request(client, method, path)
            problem = envelope_problem(response, status, f"http_{status}")
            if problem is None and value is not None and response.headers.get(header, "").lower() != value.lower():
                problem = f"{header} {response.headers.get(header)!r}"
            if problem is None and value is None and not response.headers.get(header, "").isdigit():
                problem = f"{header} {response.headers.get(header)!r}"
            if problem is None and path == "/private" and json_body(response)["error"]["message"] != BEARER_DETAIL:
                problem = f"error.message {json_body(response)['error']['message']!r}, not the exception's detail"
            if problem:
                headers_lost.append(f"{method} {path}: {problem}")
        parent_hint = (
            "Routing's own 404 and 405 are Starlette's HTTPException, the parent of FastAPI's: register the handler "
            "for `starlette.exceptions.HTTPException` to catch both." if StarletteHTTPException not in registered
            and HTTPException in registered else
            "HTTP errors never reach a handler for `Exception`: FastAPI answers them first. Register a handler for "
            "`starlette.exceptions.HTTPException`." if StarletteHTTPException not in registered else None)
        kinds = " ".join(headers_lost)
        report.add(
            "HTTP errors keep status, detail and headers: 401 WWW-Authenticate, 405 Allow, 429 Retry-After",
            not headers_lost, observed="; ".join(headers_lost[:2]),
            expected="http_401, http_405, http_429 envelopes, message = detail, headers kept",
            hint=parent_hint or (
                "Pass `headers=exc.headers` on: the client needs them (where to authenticate, what is allowed, when "
                "to retry)." if any(h in kinds for h in ("www-authenticate", "allow", "retry-after")) else
                "The message is the exception's own `exc.detail`." if "not the exception's detail" in kinds else
                "Status from `exc.status_code`, code `f\"http_{exc.status_code}\"`, message from `exc.detail`."))
        nowhere = await _request(client, "GET", f"/no-such-page-{random.randint(10, 99)}")
        _judge(report, "an unknown path → 404 http_404", nowhere, client, 404, "http_404",
               parent_hint or "Status from `exc.status_code`, code `f\"http_{exc.status_code}\"`.")
        await _neighbours(report, client, [
            ("GET", f"/items/{_missing_id()}", {}, 404, "item_not_found"), ("GET", "/crash", {}, 500, None)],
            "Your handlers must catch only their own errors: one registered for `Exception` turns a crash into a "
            "4xx — or shows its message.")


# ---- exercise 3 ---------------------------------------------------------------------------------

@check("Lesson 06 · the catch-all 500 logs everything, leaks nothing, and keeps the request id", limit_s=15)
async def check_catch_all(report, shop_app, add_catch_all):
    installers = (course_not_found, course_envelope, course_conflict, add_catch_all)
    app = shop_app(*installers)
    registered = _registered(app)
    handler = registered.get(Exception) or registered.get(500)
    sync_handler = handler is not None and not inspect.iscoroutinefunction(handler)
    with _Records() as records:
        async with serve(app, raise_app_exceptions=False) as client:
            rid = _client_id()
            crash = await _request(client, "GET", "/crash", headers={"X-Request-ID": rid})
            if not _judge(report, "GET /crash → 500 internal_error", crash, client, 500, "internal_error",
                          "Your handler returned nothing: an exception handler must `return` a response."
                          if _none_returned(client.errors_for("/crash"), crash) else
                          "Register a handler for `Exception` that returns the envelope with status 500 — "
                          "`JSONResponse(..., status_code=500)`; without it a JSONResponse says 200."
                          if crash.status_code != 500 else
                          "Return `error_body(\"internal_error\", \"Internal Server Error\")` as JSON."):
                return
            leaked = _leaks(crash)
            report.add("the 500 says nothing about the error", not leaked,
                       observed=("the response contains " + ", ".join(leaked)) if leaked else "",
                       expected="no exception text, no traceback, no secret",
                       hint="Never put `str(exc)`, its type or a traceback in a response: the client may be an attacker.")
            anonymous = await _request(client, "GET", "/crash")
            their_id = crash.headers.get("x-request-id")
            made_id = anonymous.headers.get("x-request-id")
            ok = their_id == rid and isinstance(made_id, str) and len(made_id) >= 8
            report.add(
                "the 500 carries X-Request-ID: the client's, or the one the middleware made", ok,
                observed="" if ok else f"with X-Request-ID {rid}: header {their_id!r}; without: header {made_id!r}",
                expected=f"{rid}; and a new id when the client sent none",
                hint=("The client's header is only there when it sent one; the middleware put the id it uses on "
                      "`request.state.request_id` for every request: read it there."
                      if their_id == rid else
                      "This handler runs in ServerErrorMiddleware, outside the request-id middleware, so nothing "
                      "tags its 500: set `headers={\"X-Request-ID\": request.state.request_id}` yourself."),
            )
            reports = await _request(client, "GET", "/reports")
            _judge(report, "another error (a missing table) → the same 500, no SQL", reports, client, 500,
                   "internal_error", "One handler for `Exception` covers every unexpected error, database ones too.",
                   extra=lambda error, response: (f"the body shows {', '.join(_leaks(response))}"
                                                  if _leaks(response) else None))
            await _neighbours(report, client, [
                ("GET", f"/items/{_missing_id()}", {}, 404, "item_not_found"),
                ("POST", "/items", {"json": {"price": 0}}, 422, "validation_error"),
                ("GET", "/private", {}, 401, "http_401")],
                "The catch-all is for what no other handler takes: register it for `Exception` only.")
            odd = [("GET", "/items/abc", {}), ("GET", "/items/-1", {}), ("POST", "/items", {"content": b"\xff\xfe"}),
                   ("POST", "/items", {"json": {"name": "x" * 10_000, "price": "NaN"}}), ("DELETE", "/items/1", {}),
                   ("GET", "/crash?debug=1", {}), ("POST", "/items", {"json": [None]}), ("GET", "/%00", {})]
            bad = []
            for method, path, kwargs in odd:
                response = await _request(client, method, path, **kwargs)
                leaks = _leaks(response)
                if leaks or (response.status_code >= 500 and envelope_problem(response, 500, "internal_error")):
                    bad.append(f"{method} {path} → {response.status_code}" + (f" with {', '.join(leaks)}" if leaks else ""))
            report.add(f"{len(odd)} odd requests: no internals in any answer", not bad,
                       observed="; ".join(bad[:2]), expected="no internals, and the envelope on any 500",
                       hint="Each error path goes through one of the handlers; the catch-all covers the rest.")
    errors = [r for r in records.records if r.exc_info and r.exc_info[0] is RuntimeError]
    with_rid = [r for r in errors if _mentions(r, rid)]
    made_ok = isinstance(made_id, str) and len(made_id) >= 8  # else the X-Request-ID item already failed
    anonymous_logged = not made_ok or any(_mentions(r, made_id) for r in errors)
    ok = bool(with_rid) and anonymous_logged
    if ok:
        hint = ""
    elif not records.records:
        hint = "What the client does not see, the log must: `logger.exception(...)` in the handler keeps the traceback."
    elif not errors and sync_handler:
        hint = ("Your handler is a plain `def`: it runs in a worker thread where no exception is being handled, so "
                "`logger.exception` finds no traceback. Make it `async def`, or pass `exc_info=exc`.")
    elif not errors:
        hint = ("The record has no traceback: `logger.exception(...)` (or `exc_info=exc`) attaches it; "
                "`logger.error(...)` alone does not.")
    elif not with_rid:
        hint = "Put the request id in the log line: `logger.exception(\"... %s\", request.state.request_id)`."
    else:
        hint = "Log `request.state.request_id` (the id the client gets back), not only the client's header."
    report.add(
        "the log holds the real error, its traceback and the request id", ok,
        observed="" if ok else (f"{len(records.records)} log records, {len(errors)} with the RuntimeError attached, "
                                f"{len(with_rid)} naming {rid}" + ("" if anonymous_logged else f"; none names {made_id!r}")),
        expected=f"a record with the exception and the request id ({rid}, and the middleware's own ids)", hint=hint,
    )
