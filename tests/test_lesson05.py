"""Lesson 05's checks: function, BaseHTTPMiddleware and pure ASGI answers pass; the usual middleware
mistakes — and the ones held-out learners made (CORS that lets lookalike origins in, guards that
fail open, ids mixed up under concurrency, ASGI messages that break the spec) — fail with the hint
that fits their cause."""

import asyncio
import hmac
import logging
import re
import secrets
import time
import uuid

import pytest
from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.datastructures import MutableHeaders
from starlette.middleware.base import BaseHTTPMiddleware

from checks.asgi_spec import ScriptedApp, exchange, http_scope
from checks.lesson05 import (
    ALLOWED_ORIGIN, API_KEY, ApiKeyGuard, RequestContext, check_asgi_middleware, check_cors, check_guard,
    check_request_headers,
)
from conftest import assert_feedback_rules, failure_text, names, notebook_namespace

pytestmark = pytest.mark.anyio
lesson = notebook_namespace("05_middleware")
lesson_app = lesson["lesson_app"]
log = logging.getLogger("test.lesson05")
log.addHandler(logging.NullHandler())

HEADERS = "X-Request-ID and X-Process-Time on 200, 404, 405, 422, 500 and a stream"
NO_LEAK = "the 500 says nothing about the error"
LOGGED = "the error is logged, with its traceback and the request id"
OWN_IDS = "5 requests at once: each keeps its own X-Request-ID, and its route sees it"
AT_ONCE = "those 5 requests ran at once"
FRESH = "without a client id, a new one per request"
TIMING = "X-Process-Time is the request's time, in milliseconds"


async def failing(check, *args):
    report = await check.report(*args)
    assert_feedback_rules(report)
    return report


# ---- exercise 1: a request id and a timing header on every response ---------------------------------

class ContextDispatch(BaseHTTPMiddleware):
    """A BaseHTTPMiddleware subclass: str(uuid4()), two decimals, the id in `extra`."""

    async def dispatch(self, request, call_next):
        start = time.perf_counter()
        request.state.request_id = request.headers.get("x-request-id") or str(uuid.uuid4())
        try:
            response = await call_next(request)
        except Exception:
            log.error("unhandled error", exc_info=True, extra={"request_id": request.state.request_id})
            response = JSONResponse({"detail": "Something went wrong"}, status_code=500)
        response.headers["x-request-id"] = request.state.request_id
        response.headers["x-process-time"] = str(round((time.perf_counter() - start) * 1000, 2))
        return response


async def monotonic_middleware(request, call_next):
    start = time.monotonic()
    rid = request.headers.get("X-Request-ID", "") or secrets.token_hex(16)
    request.state.request_id = rid
    try:
        response = await call_next(request)
    except Exception as exc:
        log.error("request %s: unhandled %s", rid, type(exc).__name__, exc_info=exc)
        response = PlainTextResponse("Internal Server Error", status_code=500)
    response.headers.update({"X-Request-ID": rid, "X-Process-Time": f"{(time.monotonic() - start) * 1e3:.3f}"})
    return response


@pytest.mark.parametrize("middleware", [
    lesson["add_request_context"], ContextDispatch, lesson["RequestContextMiddleware"], RequestContext,
    monotonic_middleware,
], ids=["function", "BaseHTTPMiddleware", "pure ASGI", "the course's RequestContext", "monotonic, extra"])
async def test_request_headers_right_answers_pass(middleware):
    report = await check_request_headers.report(lesson_app, middleware)
    assert report.passed, report.text()


ONE_ID = uuid.uuid4().hex
serialising_lock = asyncio.Lock()
shared = {}


def variant(**mistake):
    """The notebook's function middleware with one mistake."""
    async def middleware(request, call_next):
        start = time.process_time() if mistake.get("cpu_time") else time.perf_counter()
        if mistake.get("key_error"):
            request_id = request.headers["x-request-id"]
        elif mistake.get("uuid_object"):
            request_id = request.headers.get("x-request-id") or uuid.uuid4()
        else:
            fresh = ONE_ID if mistake.get("one_id") else uuid.uuid4().hex
            request_id = fresh if mistake.get("ignore_client") else request.headers.get("x-request-id") or fresh
        request.state.request_id = request_id
        shared["id"] = request_id
        try:
            if mistake.get("lock"):
                async with serialising_lock:
                    response = await call_next(request)
            else:
                response = await call_next(request)
        except Exception as exc:
            if mistake.get("no_catch"):
                raise
            if not mistake.get("no_log"):
                log.exception("request failed" if mistake.get("log_without_id") else f"request {request_id} failed")
            response = JSONResponse({"detail": str(exc) if mistake.get("leak") else "Internal Server Error"},
                                    status_code=500)
            if mistake.get("untagged_500"):
                return response
        now = time.process_time() if mistake.get("cpu_time") else time.perf_counter()
        response.headers["X-Request-ID"] = shared["id"] if mistake.get("global_id") else str(request_id)
        response.headers["X-Process-Time"] = f"{now - start:.4f}" if mistake.get("seconds") else f"{(now - start) * 1000:.1f}"
        return response
    return middleware


class InstanceAttribute(BaseHTTPMiddleware):
    """Keeps the id on the middleware object: one object serves every request."""

    async def dispatch(self, request, call_next):
        start = time.perf_counter()
        self.request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        request.state.request_id = self.request_id
        try:
            response = await call_next(request)
        except Exception:
            log.exception("request %s failed", self.request_id)
            response = JSONResponse({"detail": "Internal Server Error"}, status_code=500)
        response.headers["X-Request-ID"] = self.request_id
        response.headers["X-Process-Time"] = f"{(time.perf_counter() - start) * 1000:.1f}"
        return response


@pytest.mark.parametrize("mistake, failed, hint", [
    ({"no_catch": True}, [HEADERS, LOGGED], "`call_next` raises too"),
    ({"untagged_500": True}, [HEADERS], "`call_next` raises too"),
    ({"ignore_client": True}, [HEADERS, LOGGED, OWN_IDS], "Use the client's id when it sent one"),
    ({"one_id": True}, [FRESH], "not once at import"),
    ({"global_id": True}, [OWN_IDS, FRESH], "One variable for all requests"),
    ({"seconds": True}, [TIMING], "seconds"),
    ({"cpu_time": True}, [TIMING], "`time.process_time()` counts CPU only"),
    ({"lock": True}, [AT_ONCE], "must not hold a lock"),
    ({"leak": True}, [NO_LEAK], "fixed message"),
    ({"no_log": True}, [LOGGED], "Log the error where you catch it"),
    ({"log_without_id": True}, [LOGGED], "Put the id in the message"),
    ({"uuid_object": True}, [FRESH], "store the id as a string"),
    ({"key_error": True}, [FRESH], "use `headers.get(...)`"),
], ids=["no catch", "500 returned untagged", "client id ignored", "one id for all", "a global id", "seconds",
        "CPU time", "a lock", "str(exc) in the 500", "not logged", "logged without the id", "UUID object",
        "KeyError without a client id"])
async def test_request_headers_mistakes(mistake, failed, hint):
    report = await failing(check_request_headers, lesson_app, variant(**mistake))
    assert names(report) == failed, report.text()
    assert hint in failure_text(report), failure_text(report)


async def test_a_middleware_that_forgets_to_return_the_response_is_told_so():
    async def no_return(request, call_next):
        request.state.request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        response = await call_next(request)
        response.headers["X-Request-ID"] = request.state.request_id  # ...and no `return response`

    report = await failing(check_request_headers, lesson_app, no_return)
    assert names(report) == ["GET /items/7 answers 200"], report.text()
    assert "must end with `return`" in failure_text(report), failure_text(report)


async def test_an_id_kept_on_the_middleware_object_is_mixed_up_under_concurrency():
    report = await failing(check_request_headers, lesson_app, InstanceAttribute)
    assert names(report) == [OWN_IDS, FRESH], report.text()


async def test_a_validation_error_is_reported_in_one_short_line():
    report = await failing(check_request_headers, lesson_app, variant(uuid_object=True))
    observed = report.failures[0].observed
    assert "ValidationError: request_id: Input should be a valid string (got a UUID)" in observed, observed
    assert "\n" not in observed and "File " not in observed


async def test_a_passing_check_writes_no_traceback_to_stderr(capsys):
    """A learner's `logger.exception` on a logger with no handler goes to Python's last-resort handler
    (stderr, traceback and all) unless someone handles it: the check does, while it runs."""
    quiet = logging.getLogger("no.handler.anywhere")

    async def middleware(request, call_next):
        rid = request.headers.get("x-request-id") or uuid.uuid4().hex
        request.state.request_id = rid
        start = time.perf_counter()
        try:
            response = await call_next(request)
        except Exception:
            quiet.exception("request %s failed", rid)
            response = JSONResponse({"detail": "Internal Server Error"}, status_code=500)
        response.headers["X-Request-ID"] = rid
        response.headers["X-Process-Time"] = f"{(time.perf_counter() - start) * 1000:.1f}"
        return response

    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers.clear()  # as in a notebook: no handler on the root logger (pytest adds its own)
    try:
        report = await check_request_headers.report(lesson_app, middleware)
    finally:
        root.handlers[:] = saved
    assert report.passed, report.text()
    assert "Traceback" not in capsys.readouterr().err


async def test_base_http_middleware_passes_stream_chunks_on_as_they_come():
    """The fact the lesson now teaches (it used to say @app.middleware("http") buffers streams)."""
    inner = ScriptedApp(chunks=[b"a", b"b", b"c"])
    result = await exchange(ContextDispatch(inner), http_scope(), inner=inner)
    assert inner.buffered == 0 and result.spec.body_chunks == [b"a", b"b", b"c"]
    inner = ScriptedApp(chunks=[b"row 1", b"row 2"], fail_after_chunks=1)
    result = await exchange(ContextDispatch(inner), http_scope(), inner=inner)
    assert result.spec.ended and isinstance(result.error, Exception)  # ...but ends a failed stream as complete


def test_the_lesson_no_longer_says_base_http_middleware_buffers():
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "solutions" / "05_middleware.ipynb"
    prose = " ".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "markdown")
    assert "no buffering" not in prose and "it does not" in prose


# ---- exercise 2: pure ASGI against the spec ---------------------------------------------------------

SPEC = "a streamed response keeps the ASGI spec"
OWN_HEADERS = "the app's own headers stay, and yours are added"
CHUNKS = "the chunks pass one by one, not held back"
STATE = "the lifespan's state and the request body reach the app"
BEFORE = "an error before the response: one whole 500, tagged"
MIDWAY = "an error in the middle of the body goes on to the server"
LIFESPAN = "the lifespan scope passes through untouched"


def pure(**mistake):
    """The notebook's pure ASGI middleware with one mistake."""
    class Middleware:
        def __init__(self, app):
            self.app = app

        async def __call__(self, scope, receive, send):
            if scope["type"] != "http" and not mistake.get("no_scope_check"):
                await self.app(scope, receive, send)
                return
            start = time.perf_counter()
            request_id = dict(scope["headers"]).get(b"x-request-id", b"").decode() or uuid.uuid4().hex
            if mistake.get("new_state"):
                scope["state"] = {"request_id": request_id}
            else:
                scope.setdefault("state", {})["request_id"] = request_id
            if mistake.get("instance_id"):
                self.request_id = request_id
            started = False
            held = []
            if mistake.get("read_body"):
                while (await receive()).get("more_body"):
                    pass

            async def send_with_headers(message):
                nonlocal started
                if message["type"] == "http.response.start":
                    started = not mistake.get("no_nonlocal")  # without `nonlocal`, the outer flag stays False
                    rid = self.request_id if mistake.get("instance_id") else request_id
                    name = b"X-Request-ID" if mistake.get("upper") else b"x-request-id"
                    value = rid if mistake.get("str_value") else rid.encode()
                    ours = [(name, value), (b"x-process-time", f"{(time.perf_counter() - start) * 1000:.1f}".encode())]
                    message["headers"] = ours if mistake.get("replace") else [*message.get("headers", []), *ours]
                if mistake.get("buffer"):
                    held.append(message)
                    if message["type"] == "http.response.body" and not message.get("more_body", False):
                        for kept in held:
                            await send(kept)
                    return
                await send(message)

            try:
                await self.app(scope, receive, send_with_headers)
            except Exception:
                if mistake.get("no_catch"):
                    raise
                if not started:
                    log.exception("request %s failed", request_id)
                if started and not mistake.get("second_start"):
                    if mistake.get("swallow"):
                        await send({"type": "http.response.body", "body": b"", "more_body": False})
                        return
                    raise
                reply = send if mistake.get("raw_500") else send_with_headers
                await reply({"type": "http.response.start", "status": 500,
                             "headers": [(b"content-type", b"application/json")]})
                if not mistake.get("no_body"):
                    await reply({"type": "http.response.body", "body": b'{"detail":"Internal Server Error"}'})
    return Middleware


class ReRaises:
    """Sends the tagged 500, then re-raises so the server logs it too; MutableHeaders for the headers."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, sent = time.perf_counter(), {"start": False}
        rid = next((v.decode() for k, v in scope["headers"] if k == b"x-request-id"), "") or uuid.uuid4().hex
        scope["state"]["request_id"] = rid

        async def tagged(message):
            if message["type"] == "http.response.start":
                sent["start"] = True
                headers = MutableHeaders(scope=message)
                headers.append("x-request-id", rid)
                headers.append("x-process-time", str((time.perf_counter() - start) * 1000))
            await send(message)

        try:
            await self.app(scope, receive, tagged)
        except Exception:
            if not sent["start"]:
                log.exception("request %s failed", rid)
                await JSONResponse({"detail": "Internal Server Error"}, status_code=500)(scope, receive, tagged)
            raise


class SendWrapper:
    """The send wrapper as a small class of its own."""

    class Tagging:
        def __init__(self, send, rid, start):
            self.send, self.rid, self.start, self.started = send, rid, start, False

        async def __call__(self, message):
            if message["type"] == "http.response.start":
                self.started = True
                extra = [(b"x-request-id", self.rid.encode()),
                         (b"x-process-time", b"%.2f" % ((time.perf_counter() - self.start) * 1000))]
                message = {**message, "headers": list(message.get("headers", [])) + extra}
            await self.send(message)

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        rid = headers[b"x-request-id"].decode() if b"x-request-id" in headers else uuid.uuid4().hex
        scope = {**scope, "state": {**scope.get("state", {}), "request_id": rid}}
        tagging = self.Tagging(send, rid, time.perf_counter())
        try:
            await self.app(scope, receive, tagging)
        except Exception:
            if tagging.started:
                raise
            log.exception("%s failed", rid)
            await tagging({"type": "http.response.start", "status": 500, "headers": [(b"content-length", b"0")]})
            await tagging({"type": "http.response.body", "body": b""})


@pytest.mark.parametrize("middleware", [lesson["RequestContextMiddleware"], RequestContext, ReRaises, SendWrapper],
                         ids=["the notebook's", "the course's", "re-raises after its 500", "a send-wrapper class"])
async def test_asgi_right_answers_pass(middleware):
    report = await check_asgi_middleware.report(lesson_app, middleware)
    assert report.passed, report.text()


@pytest.mark.parametrize("mistake, failed, hint", [
    ({"no_scope_check": True}, [LIFESPAN], 'scope["type"] != "http"'),
    ({"new_state": True}, [STATE], "a new dict throws that away"),
    ({"upper": True}, [SPEC], "lowercase bytes"),
    ({"str_value": True}, [SPEC], "`request_id.encode()`"),
    ({"replace": True}, [OWN_HEADERS], "replacing it drops the app's own headers"),
    ({"second_start": True}, [MIDWAY], "re-raise instead of sending a 500"),
    ({"swallow": True}, [MIDWAY], "so the server drops the connection"),
    ({"buffer": True}, [CHUNKS], "one late response"),
    ({"no_catch": True}, [HEADERS, LOGGED], "nothing passed your tagging `send`"),
    ({"instance_id": True}, [OWN_IDS, FRESH], "One variable for all requests"),
    ({"read_body": True}, [SPEC], "does your middleware read `receive` itself"),
    ({"no_body": True}, ["GET /boom answers 500"], "`more_body` False — once"),
    ({"raw_500": True}, [HEADERS], "through that same `send`"),
    ({"no_nonlocal": True}, [MIDWAY], "needs `nonlocal`"),
], ids=["lifespan not passed through", "state replaced", "upper-case header names", "str header values",
        "the app's headers replaced", "a second start", "error swallowed, body ended", "buffers the body",
        "no catch", "id on the instance", "reads the request body", "500 without a body",
        "the 500 sent untagged", "the flag never set (no nonlocal)"])
async def test_asgi_mistakes(mistake, failed, hint):
    report = await failing(check_asgi_middleware, lesson_app, pure(**mistake))
    assert names(report) == failed, report.text()
    assert hint in failure_text(report), failure_text(report)


async def test_base_http_middleware_is_not_pure_asgi_a_failed_stream_looks_complete():
    report = await failing(check_asgi_middleware, lesson_app, ContextDispatch)
    assert names(report) == [MIDWAY], report.text()
    assert "as if complete" in failure_text(report)


async def test_a_function_is_not_a_middleware_class():
    report = await failing(check_asgi_middleware, lesson_app, lesson["add_request_context"])
    assert names(report) == ["a middleware class"]


# ---- exercise 3: the guard, and where it goes -----------------------------------------------------------

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


# ---- exercise 4: CORS ---------------------------------------------------------------------------

def cors(**options):
    def add(app):
        app.add_middleware(CORSMiddleware, **options)
        return app
    return add


def exact(**more):
    return dict(allow_origins=[ALLOWED_ORIGIN], allow_credentials=True, allow_methods=["GET", "POST"],
                allow_headers=["X-API-Key"], **more)


@pytest.mark.parametrize("add", [
    lesson["add_cors"],
    cors(allow_origin_regex=re.escape(ALLOWED_ORIGIN), allow_credentials=True, allow_methods=["GET", "POST"],
         allow_headers=["x-api-key"]),
    cors(allow_origins=(ALLOWED_ORIGIN,), allow_credentials=True, allow_methods=("POST", "GET"),
         allow_headers=("x-api-key", "content-type"), max_age=3600, expose_headers=["X-Request-ID"]),
], ids=["the notebook's", "an exact, escaped regex", "tuples, lower case, max_age"])
async def test_cors_right_answers_pass(add):
    report = await check_cors.report(lesson_app, add)
    assert report.passed, report.text()


PREFLIGHT = "app.example.com: preflights for GET and POST with X-API-Key pass, with credentials"
LOOKALIKES = "lookalike origins get no Access-Control-Allow-Origin"
WIDER = "other methods and headers are refused"


@pytest.mark.parametrize("add, failed, hint", [
    (cors(allow_origins=["*"], allow_credentials=True, allow_methods=["GET", "POST"], allow_headers=["X-API-Key"]),
     [LOOKALIKES], "echo ANY origin"),
    (cors(allow_origins=[ALLOWED_ORIGIN], allow_methods=["GET", "POST"], allow_headers=["X-API-Key"]),
     [PREFLIGHT], "allow_credentials=True"),
    (cors(**{**exact(), "allow_origins": [], "allow_origin_regex": r"https://.*"}), [LOOKALIKES], "allow_origin_regex"),
    (cors(**{**exact(), "allow_origins": [], "allow_origin_regex": r"https://app.example.com"}), [LOOKALIKES],
     "https://appxexample.com"),
    (cors(**{**exact(), "allow_origins": [], "allow_origin_regex": r"https://([a-z]+\.)*app\.example\.com"}),
     [LOOKALIKES], "a subdomain is another origin"),
    (cors(**{**exact(), "allow_origins": [], "allow_origin_regex": r"https?://app\.example\.com(:\d+)?"}),
     [LOOKALIKES], "another scheme is another origin"),
    (cors(**{**exact(), "allow_origins": [ALLOWED_ORIGIN + "/"]}), [PREFLIGHT], "without the trailing slash"),
    (cors(**{**exact(), "allow_origins": [ALLOWED_ORIGIN, "null"]}), [LOOKALIKES], "file:// pages"),
    (cors(**{**exact(), "allow_origins": [ALLOWED_ORIGIN, "http://app.example.com"]}), [LOOKALIKES],
     "another scheme is another origin"),
    (cors(**{**exact(), "allow_methods": ["*"]}), [WIDER], 'opens every method or header'),
    (cors(**{**exact(), "allow_headers": ["*"]}), [WIDER], 'opens every method or header'),
    (cors(**{**exact(), "allow_methods": ["GET"]}), [PREFLIGHT], 'allow_methods=["GET", "POST"]'),
    (cors(**{**exact(), "allow_headers": []}), [PREFLIGHT], "CORSMiddleware(allow_origins"),
    (cors(**{**exact(), "allow_origins": ALLOWED_ORIGIN}), [LOOKALIKES], "a search in the text"),
    (cors(**{**exact(), "allow_origins": f"{ALLOWED_ORIGIN},http://localhost:5173"}), [LOOKALIKES],
     "a search in the text"),
], ids=["* with credentials", "no credentials", "any https origin", "unescaped dots", "any subdomain",
        "any scheme and port", "trailing slash", "null allowed", "both schemes", "every method", "every header",
        "GET only", "X-API-Key not allowed", "one string, not a list", "a comma-separated string (from settings)"])
async def test_cors_mistakes(add, failed, hint):
    report = await failing(check_cors, lesson_app, add)
    assert names(report) == failed, report.text()
    assert hint in failure_text(report), failure_text(report)


async def test_cors_inside_the_guard_blocks_preflights_to_admin():
    def add(app):
        # CORS first, then the guard again around it: preflights now meet the guard.
        app.add_middleware(CORSMiddleware, **exact())
        app.add_middleware(ApiKeyGuard)
        return app
    report = await failing(check_cors, lesson_app, add)
    assert names(report) == ["a preflight to /admin needs no key, and the 401 is readable by app.example.com"]


async def test_the_checks_own_code_raises_no_warning():
    from conftest import warnings_from_checks

    assert await warnings_from_checks(
        check_request_headers.report(lesson_app, variant(no_catch=True)),
        check_asgi_middleware.report(lesson_app, pure(buffer=True)),
        check_guard.report(guard_app(raising_guard)),
        check_cors.report(lesson_app, cors(allow_origins=["*"], allow_credentials=True)),
    ) == []
