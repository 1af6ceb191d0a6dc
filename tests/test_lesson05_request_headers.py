"""Lesson 05, exercise 1: a request id and a timing header on every response."""

import asyncio
import logging
import secrets
import time
import uuid

import pytest
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.middleware.base import BaseHTTPMiddleware

from checks.asgi_spec import ScriptedApp, exchange, http_scope
from checks.lesson05 import RequestContext, check_request_headers
from conftest import failure_text, names
from lesson05_helpers import (
    AT_ONCE, ContextDispatch, FRESH, HEADERS, LOGGED, NO_LEAK, OWN_IDS, TIMING, failing, lesson, lesson_app, log,
)

pytestmark = pytest.mark.anyio


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
