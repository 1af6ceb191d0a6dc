"""Lesson 05's checks: function, BaseHTTPMiddleware and pure ASGI answers pass; the usual
middleware mistakes fail with their hint."""

import asyncio
import time
import uuid

import pytest
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.middleware.base import BaseHTTPMiddleware

from checks.lesson05 import ALLOWED_ORIGIN, API_KEY, check_cors, check_guard, check_request_headers
from conftest import assert_feedback_rules, failure_text, names, notebook_namespace

pytestmark = pytest.mark.anyio
lesson = notebook_namespace("05_middleware")
lesson_app = lesson["lesson_app"]


# ---- exercises 1 and 2: headers on every response ---------------------------------------------------

class ContextDispatch(BaseHTTPMiddleware):
    async def dispatch(self, request, call_next):
        start = time.perf_counter()
        request.state.request_id = request.headers.get("x-request-id") or str(uuid.uuid4())
        try:
            response = await call_next(request)
        except Exception:
            response = JSONResponse({"detail": "Internal Server Error"}, status_code=500)
        response.headers["x-request-id"] = request.state.request_id
        response.headers["x-process-time"] = str(round((time.perf_counter() - start) * 1000, 2))
        return response


@pytest.mark.parametrize("app", [
    lambda: lesson_app(http_middleware=lesson["add_request_context"]),
    lambda: lesson_app(asgi_middleware=lesson["RequestContextMiddleware"]),
    lambda: lesson_app(asgi_middleware=ContextDispatch),
], ids=["function", "pure ASGI", "BaseHTTPMiddleware"])
async def test_request_headers_right_answers_pass(app):
    report = await check_request_headers.report(app())
    assert report.passed, report.text()


ONE_ID = uuid.uuid4().hex
serialising_lock = asyncio.Lock()


def variant(**changes):
    """The notebook's function middleware with one mistake."""
    async def middleware(request, call_next):
        start = time.perf_counter()
        fresh = ONE_ID if changes.get("one_id") else uuid.uuid4().hex
        request_id = fresh if changes.get("ignore_client") else request.headers.get("x-request-id") or fresh
        request.state.request_id = request_id
        try:
            if changes.get("lock"):
                async with serialising_lock:
                    response = await call_next(request)
            else:
                response = await call_next(request)
        except Exception:
            if changes.get("no_catch"):
                raise
            response = JSONResponse({"detail": "Internal Server Error"}, status_code=500)
        elapsed = time.perf_counter() - start
        response.headers["X-Request-ID"] = request_id
        response.headers["X-Process-Time"] = f"{elapsed:.4f}" if changes.get("seconds") else f"{elapsed * 1000:.1f}"
        return response
    return middleware


@pytest.mark.parametrize("middleware, failed", [
    (variant(no_catch=True), "both headers on 200, 404, 422 and 500"),
    (variant(ignore_client=True), "the client's X-Request-ID is kept, and the route sees it"),
    (variant(one_id=True), "a new id for each request without one"),
    (variant(seconds=True), "X-Process-Time measures the request, in milliseconds"),
    (variant(lock=True), "concurrent requests are not serialised"),
], ids=["no catch: 500 without headers", "client id ignored", "one id for all", "seconds", "a lock"])
async def test_request_headers_mistakes(middleware, failed):
    report = await check_request_headers.report(lesson_app(http_middleware=middleware))
    assert names(report) == [failed], report.text()
    assert_feedback_rules(report)


# ---- exercise 3: the guard --------------------------------------------------------------------

class GuardDispatch(BaseHTTPMiddleware):
    async def dispatch(self, request, call_next):
        if request.url.path.startswith("/admin/") and request.headers.get("x-api-key") != API_KEY:
            return JSONResponse({"detail": "Not authenticated"}, status_code=401)
        return await call_next(request)


async def guard_everything(request, call_next):
    if request.headers.get("x-api-key") != API_KEY:
        return JSONResponse({"detail": "missing key"}, status_code=401)
    return await call_next(request)


async def guard_403(request, call_next):
    if request.url.path.startswith("/admin") and request.headers.get("x-api-key") != API_KEY:
        return JSONResponse({"detail": "forbidden"}, status_code=403)
    return await call_next(request)


async def test_guard_right_answers_pass():
    for app in (lesson_app(http_middleware=lesson["require_api_key"]), lesson_app(asgi_middleware=GuardDispatch)):
        report = await check_guard.report(app)
        assert report.passed, report.text()


@pytest.mark.parametrize("middleware, hint", [
    (lesson["raising_guard"], "Return a `JSONResponse(status_code=401"),
    (guard_everything, "Only paths under /admin"),
    (guard_403, "Only paths under /admin"),
], ids=["raises HTTPException", "guards every path", "403"])
async def test_guard_mistakes(middleware, hint):
    report = await check_guard.report(lesson_app(http_middleware=middleware))
    assert hint in failure_text(report), report.text()
    assert_feedback_rules(report)


# ---- exercise 4: CORS ---------------------------------------------------------------------------

def cors(**options):
    def add(app):
        app.add_middleware(CORSMiddleware, **options)
        return app
    return add


async def test_cors_right_answers_pass():
    for add in (lesson["add_cors"], cors(allow_origins=[ALLOWED_ORIGIN], allow_credentials=True,
                                          allow_methods=["*"], allow_headers=["*"])):
        report = await check_cors.report(lesson_app, add)
        assert report.passed, report.text()


@pytest.mark.parametrize("add, failed", [
    (cors(allow_origins=["*"], allow_credentials=True, allow_methods=["*"], allow_headers=["*"]),
     ["another origin gets no Access-Control-Allow-Origin"]),
    (cors(allow_origins=[ALLOWED_ORIGIN], allow_methods=["GET"], allow_headers=["X-API-Key"]),
     ["a preflight from app.example.com is allowed, with credentials"]),
    (cors(allow_origin_regex=r"https://.*", allow_credentials=True, allow_methods=["GET"], allow_headers=["X-API-Key"]),
     ["another origin gets no Access-Control-Allow-Origin"]),
], ids=["* with credentials", "no credentials", "any https origin"])
async def test_cors_mistakes(add, failed):
    report = await check_cors.report(lesson_app, add)
    assert names(report) == failed, report.text()
    assert_feedback_rules(report)


async def test_the_checks_own_code_raises_no_warning():
    from conftest import warnings_from_checks

    assert await warnings_from_checks(
        check_request_headers.report(lesson_app(http_middleware=variant(no_catch=True))),
        check_guard.report(lesson_app(http_middleware=lesson["raising_guard"])),
        check_cors.report(lesson_app, cors(allow_origins=["*"], allow_credentials=True)),
    ) == []
