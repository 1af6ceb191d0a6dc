"""Lesson 05, exercise 3: the API-key guard, and where it goes."""

import hmac
import secrets

import pytest
from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.middleware.base import BaseHTTPMiddleware

from checks.lesson05 import API_KEY, ApiKeyGuard, RequestContext, check_guard
from conftest import failure_text, names
from lesson05_helpers import failing, lesson, lesson_app

pytestmark = pytest.mark.anyio


def guard_app(guard, *, guard_outside=False, asgi=False):
    def admin_api():
        app = lesson_app()
        add = (lambda: app.add_middleware(guard)) if asgi else (lambda: app.middleware("http")(guard))
        if guard_outside:
            app.add_middleware(RequestContext)
            add()
        else:
            add()
            app.add_middleware(RequestContext)
        return app
    return admin_api


def guard(in_section=lambda p: p == "/admin" or p.startswith("/admin/"), allowed=lambda sent: sent == API_KEY,
          deny=lambda: JSONResponse({"detail": "missing or invalid API key"}, status_code=401)):
    async def middleware(request, call_next):
        if in_section(request.url.path) and not allowed(request.headers.get("x-api-key")):
            return deny()
        return await call_next(request)
    return middleware


class GuardDispatch(BaseHTTPMiddleware):
    async def dispatch(self, request, call_next):
        path = request.url.path
        if (path == "/admin" or path.startswith("/admin/")) and \
                not hmac.compare_digest(request.headers.get("x-api-key", "").encode(), API_KEY.encode()):
            return JSONResponse({"detail": "Not authenticated"}, status_code=401)
        return await call_next(request)


def raising_guard(request, call_next):
    async def run():
        if request.url.path.startswith("/admin") and request.headers.get("x-api-key") != API_KEY:
            raise HTTPException(401, "missing or invalid API key")
        return await call_next(request)
    return run()


def dependency_guard():
    """The router-dependency way: right for routes, but it never runs for paths no route has."""
    def admin_api():
        async def need_key(x_api_key: str | None = Header(None)):
            if x_api_key != API_KEY:
                raise HTTPException(401, "missing or invalid API key")
        app = FastAPI()  # the lesson's routers, with its admin routes behind the dependency
        app.include_router(lesson["core"])
        app.include_router(lesson["streams"])
        router = APIRouter(prefix="/admin", dependencies=[Depends(need_key)])

        @router.get("")
        async def home() -> dict[str, str]:
            return {"admin": "home"}

        @router.get("/stats")
        async def stats() -> dict[str, int]:
            return {"users": 3}

        app.include_router(router)

        @app.get("/admin-guide")
        async def guide() -> dict[str, str]:
            return {"how": "ask"}

        app.add_middleware(RequestContext)
        return app
    return admin_api


class RawPathGuard:
    """Pure ASGI, but guards `raw_path`: the router matches the decoded `path`."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            raw = scope.get("raw_path", b"").decode()
            key = dict(scope["headers"]).get(b"x-api-key", b"")
            if (raw == "/admin" or raw.startswith("/admin/")) and key != API_KEY.encode():
                await JSONResponse({"detail": "no"}, status_code=401)(scope, receive, send)
                return
        await self.app(scope, receive, send)


@pytest.mark.parametrize("admin_api", [
    lesson["admin_api"], guard_app(GuardDispatch, asgi=True), guard_app(ApiKeyGuard, asgi=True),
    guard_app(guard(allowed=lambda sent: sent is not None and secrets.compare_digest(sent.encode(), API_KEY.encode()))),
], ids=["the notebook's", "BaseHTTPMiddleware + hmac", "pure ASGI", "function, compare_digest on bytes"])
async def test_guard_right_answers_pass(admin_api):
    report = await check_guard.report(admin_api)
    assert report.passed, report.text()


WRONG_KEYS = "every wrong key gets 401"
SECTION = "the whole /admin section needs the key"
OTHERS = "the right key opens the section; other paths pass untouched"
TAGGED = "the 401 carries X-Request-ID and X-Process-Time"


@pytest.mark.parametrize("admin_api, failed, hint", [
    (guard_app(raising_guard), ["GET /admin/stats with no key → 401"], "Return a `JSONResponse(status_code=401"),
    (guard_app(lesson["require_api_key"], guard_outside=True), [TAGGED], "The middleware added last runs first"),
    (guard_app(guard(in_section=lambda p: p.startswith("/admin/"))), [SECTION], "`/admin` itself is in the section"),
    (guard_app(guard(in_section=lambda p: p.startswith("/admin"))), [OTHERS], "also matches /admin-guide"),
    (guard_app(guard(allowed=lambda sent: sent is not None)), [WRONG_KEYS], "An empty header is still a wrong key"),
    (guard_app(guard(allowed=lambda sent: (sent or "").lower() == API_KEY.lower())), [WRONG_KEYS], "case-sensitive"),
    (guard_app(guard(allowed=lambda sent: secrets.compare_digest(sent or "", API_KEY))),
     ["GET /admin/stats with bytes that are not ASCII → 401"], "refuses str with non-ASCII"),
    (guard_app(guard(allowed=lambda sent: secrets.compare_digest(sent, API_KEY))),
     ["GET /admin/stats with no key → 401"], "a missing key is a 401"),
    (guard_app(guard(allowed=lambda sent: not sent or sent == API_KEY)), [WRONG_KEYS, SECTION],
     "A request without the header must get 401 too."),
    (guard_app(guard(deny=lambda: JSONResponse({"detail": "forbidden"}, status_code=403))), [WRONG_KEYS],
     '403 means "known, but not allowed"'),
    (guard_app(guard(deny=lambda: PlainTextResponse("Unauthorized", status_code=401))),
     ["the 401 is JSON with a `detail` message, and does not show the key"], "Answer like FastAPI does"),
    (guard_app(guard(allowed=lambda sent: API_KEY in (sent or ""))), [WRONG_KEYS], "lets longer values through"),
    (dependency_guard(), [SECTION], "a scan learns which admin pages exist"),
    (guard_app(RawPathGuard, asgi=True), [SECTION], "another form of it"),
], ids=["raises HTTPException", "guard outside RequestContext", "misses /admin", "blocks /admin-guide",
        "presence only", "case-insensitive", "compare_digest on str", "compare_digest on None", "no key passes",
        "403", "plain-text 401", "`in` instead of ==", "a router dependency", "guards raw_path"])
async def test_guard_mistakes(admin_api, failed, hint):
    report = await failing(check_guard, admin_api)
    assert names(report) == failed, report.text()
    assert hint in failure_text(report), failure_text(report)


async def test_a_guard_that_forgets_to_return_call_next_is_told_so():
    async def middleware(request, call_next):
        path = request.url.path
        if (path == "/admin" or path.startswith("/admin/")) and request.headers.get("x-api-key") != API_KEY:
            return JSONResponse({"detail": "no"}, status_code=401)
        await call_next(request)  # the answer is dropped: None goes back

    report = await failing(check_guard, guard_app(middleware))
    assert names(report) == [OTHERS], report.text()
    assert "must end with `return`" in failure_text(report), failure_text(report)


async def test_the_key_from_the_query_string_is_not_a_key():
    def from_query(request):
        return request.headers.get("x-api-key") or request.query_params.get("api_key")

    async def middleware(request, call_next):
        path = request.url.path
        if (path == "/admin" or path.startswith("/admin/")) and from_query(request) != API_KEY:
            return JSONResponse({"detail": "no"}, status_code=401)
        return await call_next(request)

    report = await failing(check_guard, guard_app(middleware))
    assert names(report) == [WRONG_KEYS] and "the key in the query string → 200" in failure_text(report)


async def test_an_unwritten_admin_api_fails_cleanly():
    def admin_api():
        raise NotImplementedError("this exercise is not written yet")
    report = await failing(check_guard, admin_api)
    assert "not written yet" in failure_text(report)
