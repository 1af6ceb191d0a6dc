"""Lesson 06, exception handlers: one JSON error envelope for the whole API, a 409 from the
database, and a catch-all 500 that logs everything and tells the client nothing it should not.

Every check sends requests with `raise_app_exceptions=False` (so the client sees the 500 the
app sent) and builds the lesson's app around the learner's handler function.
"""

from __future__ import annotations

import logging
import os
import random
import tempfile

from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from .harness import serve
from .observe import json_body, show_response
from .runner import check

DATABASE_URL = f"sqlite+aiosqlite:///{os.path.join(tempfile.gettempdir(), f'fastapi-course-lesson06-{os.getpid()}.db')}"
# What /crash's error message carries: none of it may reach the client.
SECRET = "hunter2"
INTERNALS = [SECRET, "Traceback", "RuntimeError", "connection failed", "INSERT INTO", "UNIQUE constraint", "sqlite3"]
# How a report names each leak (it does not repeat the secret, nor look like a traceback itself).
LEAK_NAMES = {SECRET: "the database password", "Traceback": "a traceback", "RuntimeError": "the exception's type",
              "connection failed": "the exception's message", "INSERT INTO": "SQL", "UNIQUE constraint": "SQL",
              "sqlite3": "the driver's name"}


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


def _envelope(response) -> dict | None:
    """The `error` object of an enveloped JSON body, or None."""
    body = json_body(response)
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        if isinstance(error.get("code"), str) and isinstance(error.get("message"), str):
            return error
    return None


def _is_json(response) -> bool:
    return response.headers.get("content-type", "").startswith("application/json")


def _judge_envelope(report, name, response, client, status, code, hint, extra=None) -> bool:
    error = _envelope(response)
    ok = response.status_code == status and _is_json(response) and error is not None and error["code"] == code
    if ok and extra is not None:
        ok = extra(error, response)
    return report.add(name, ok, observed=show_response(response, client) if not ok else "",
                      expected=f'{status}, JSON {{"error": {{"code": "{code}", "message": ...}}}}', hint=hint)


@check("Lesson 06 · ItemNotFound becomes a 404 in the envelope", limit_s=10)
async def check_not_found(report, shop_app, add_handlers):
    missing = random.randint(1000, 9999)
    async with serve(shop_app(add_handlers), raise_app_exceptions=False) as client:
        response = await client.get(f"/items/{missing}")
        _judge_envelope(report, f"GET /items/{missing} → 404 item_not_found", response, client, 404, "item_not_found",
                        "Register a handler for ItemNotFound with `@app.exception_handler(...)`; return "
                        "`JSONResponse(error_body(...), status_code=404)`.")
        found = await client.get("/items/1")
        report.add("an existing item still answers 200", found.status_code == 200, observed=show_response(found, client),
                   expected="200", hint="The handler only runs when the exception is raised.")


@check("Lesson 06 · one envelope for validation errors and HTTP errors", limit_s=10)
async def check_envelope(report, shop_app, add_handlers):
    async with serve(shop_app(add_handlers), raise_app_exceptions=False) as client:
        invalid = await client.post("/items", json={"price": -1})

        def fields_kept(error, _):
            locs = [f.get("loc") for f in error.get("fields", []) if isinstance(f, dict)]
            return ["body", "price"] in locs and ["body", "name"] in locs

        _judge_envelope(report, "an invalid body → 422 validation_error, with each field's loc", invalid, client, 422,
                        "validation_error", "Handle RequestValidationError; `exc.errors()` lists each error with its "
                        "`loc` and `msg`: put them under \"fields\".", extra=fields_kept)
        broken = await client.post("/items", content=b'{"name": ', headers={"content-type": "application/json"})
        _judge_envelope(report, "invalid JSON → 422 validation_error", broken, client, 422, "validation_error",
                        "Invalid JSON is a RequestValidationError too.")
        private = await client.get("/private")
        _judge_envelope(
            report, "an HTTPException keeps its status and its headers (401 + WWW-Authenticate)", private, client,
            401, "http_401", "Handle HTTPException: status from `exc.status_code`, message from `exc.detail`, and pass "
            "`headers=exc.headers` on.",
            extra=lambda error, r: r.headers.get("www-authenticate", "").lower() == "bearer")
        nowhere = await client.get(f"/no-such-page-{random.randint(10, 99)}")
        _judge_envelope(report, "an unknown path → 404 http_404", nowhere, client, 404, "http_404",
                        "Routing's own 404 is Starlette's HTTPException, the parent of FastAPI's: register the "
                        "handler for `starlette.exceptions.HTTPException` to catch both.")


@check("Lesson 06 · a duplicate name is a 409, with no SQL in it", limit_s=10)
async def check_conflict(report, shop_app, add_handlers):
    name = f"lamp-{random.randint(1000, 9999)}"
    async with serve(shop_app(add_handlers), raise_app_exceptions=False) as client:
        first = await client.post("/items", json={"name": name, "price": 12.5})
        if first.status_code != 201:
            report.fail("the first POST /items answers 201", observed=show_response(first, client), expected="201",
                        hint="Only the duplicate should fail.")
            return
        second = await client.post("/items", json={"name": name, "price": 13})
        _judge_envelope(
            report, "the same name again → 409 conflict, no SQL in the body", second, client, 409, "conflict",
            "Handle sqlalchemy.exc.IntegrityError: 409 and a message of your own — the exception's text is SQL.",
            extra=lambda error, r: not [s for s in INTERNALS if s in r.text])


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@check("Lesson 06 · the catch-all 500 logs everything and leaks nothing", limit_s=15)
async def check_catch_all(report, shop_app, add_handlers):
    records = _Records()
    root = logging.getLogger()
    root.addHandler(records)
    try:
        async with serve(shop_app(add_handlers), raise_app_exceptions=False) as client:
            crash = await client.get("/crash")
            _judge_envelope(report, "GET /crash → 500 internal_error", crash, client, 500, "internal_error",
                            "Register a handler for `Exception`: a fixed message, status 500.")
            leaked = [s for s in INTERNALS if s in crash.text or s in str(dict(crash.headers))]
            report.add("the 500 says nothing about the error", crash.status_code == 500 and not leaked,
                       observed=("the response contains " + ", ".join(sorted({LEAK_NAMES[s] for s in leaked})))
                       if leaked else show_response(crash),
                       expected="no exception text, no traceback, no secret",
                       hint="Never put `str(exc)` or a traceback in a response: the client may be an attacker.")
            # A fuzz of odd requests: whatever comes back, no internals.
            odd = [("GET", "/items/abc", {}), ("GET", "/items/-1", {}), ("POST", "/items", {"content": b"\xff\xfe"}),
                   ("POST", "/items", {"json": {"name": "x" * 10_000, "price": "NaN"}}), ("DELETE", "/items/1", {}),
                   ("GET", "/crash?debug=1", {}), ("POST", "/items", {"json": [None]}), ("GET", "/%00", {})]
            bad = []
            for method, path, kwargs in odd:
                response = await client.request(method, path, **kwargs)
                leaks = sorted({LEAK_NAMES[s] for s in INTERNALS if s in response.text})
                if leaks or (response.status_code >= 500 and _envelope(response) is None):
                    bad.append(f"{method} {path} → {response.status_code}" + (f" with {', '.join(leaks)}" if leaks else ""))
            report.add(f"{len(odd)} odd requests: no internals in any answer", not bad,
                       observed="; ".join(bad[:2]), expected="no internals, and the envelope on any 500",
                       hint="Each error path goes through one of your handlers; the catch-all covers the rest.")
    finally:
        root.removeHandler(records)
    logged = [r for r in records.records if r.exc_info and r.exc_info[0] is RuntimeError]
    report.add("the log holds the real error", bool(logged),
               observed=f"{len(records.records)} log records, {len(logged)} with the RuntimeError attached",
               expected="a record with the exception (logger.exception(...))",
               hint="What the client does not see, the log must: `logger.exception(...)` in the handler keeps the traceback.")
