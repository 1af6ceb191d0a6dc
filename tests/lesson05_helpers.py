"""What lesson 05's test modules share (one module per exercise: tests/test_lesson05_*.py).

Lesson 05's checks: function, BaseHTTPMiddleware and pure ASGI answers pass; the usual middleware
mistakes — and the ones held-out learners made (CORS that lets lookalike origins in, guards that
fail open, ids mixed up under concurrency, ASGI messages that break the spec) — fail with the hint
that fits their cause."""

import logging
import time
import uuid

from fastapi.responses import JSONResponse
from starlette.middleware.base import BaseHTTPMiddleware

from conftest import assert_feedback_rules, notebook_namespace

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
